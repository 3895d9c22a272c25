"""uvicorn's HTTP protocol with the guards it lacks against slow and oversized request heads.

uvicorn 0.55 arms ``timeout_keep_alive`` only after a response, and any byte received cancels it:
a connection that sends half a request line and stops, or never sends a byte, stays open for good.
Its httptools parser also takes headers of any size (``h11_max_incomplete_event_size`` bounds only
the h11 protocol). Here a new connection starts on the keep-alive timer, a request's head must be
complete within ``header_timeout_s`` of its first byte (else the connection is closed), and a head
over ``max_header_bytes`` is answered 431.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.limits import RequestLimits

_HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                   b"content-length: 0\r\nconnection: close\r\n\r\n")


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing; uvicorn answers a parser error with 400, made 431 here."""


def guarded_http_protocol(limits: RequestLimits) -> type[HttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, which takes a class, not an instance."""
    header_timeout_s, max_header_bytes = limits.header_timeout_s, limits.max_header_bytes

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_deadline: asyncio.TimerHandle | None = None
            self._head_bytes = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            # A connection that never sends a byte is an idle keep-alive connection from the start.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler)

        def connection_lost(self, exc: Exception | None) -> None:
            self._end_head_deadline()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = 0
            self._end_head_deadline()
            self._head_deadline = self.loop.call_later(header_timeout_s, self._head_too_slow)

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value))
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._end_head_deadline()
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            if self._head_bytes <= max_header_bytes:
                super().send_400_response(msg)
                return
            self.transport.write(_HEAD_TOO_LARGE)
            self.transport.close()

        def _count(self, size: int) -> None:
            self._head_bytes += size
            if self._head_bytes > max_header_bytes:
                raise _HeadTooLarge(f"request head over {max_header_bytes} bytes")

        def _end_head_deadline(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _head_too_slow(self) -> None:
            self._head_deadline = None
            if not self.transport.is_closing():
                self.logger.info("closing a connection whose request head took over %ss", header_timeout_s)
                self.transport.close()

    return GuardedHttpToolsProtocol
