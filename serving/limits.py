"""Request limits checked before any work is done, and a well-framed JSON answer to every failure.

``RequestGuard`` is a pure ASGI middleware (``BaseHTTPMiddleware`` would buffer the body it is
meant to bound). It answers, before the route runs:

- 415 to a body whose Content-Type is not JSON. A missing one counts as JSON: KServe's v2 client
  and tritonclient send none. Binary-mode CloudEvents carry their data's type, and v2's binary
  tensor extension ``application/octet-stream``; both are left to their routes.
- 413 to a declared Content-Length over the limit, without reading the body; a chunked body gets
  413 as soon as the bytes read pass it, and the route's ``receive`` raises so it reads no more.
  Either way the connection closes, since the rest of the body is not read.

and after it: a JSON 500 for an exception no handler answered. Starlette's last resort answers
and then re-raises, so uvicorn drops the keep-alive connection without ``Connection: close`` and
the client's next request on it fails with a reset; here the exception is logged and the
connection stays usable.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RequestLimits(BaseModel):
    """Limits of one HTTP/gRPC server, predictor or transformer, on what a client may send."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_request_bytes: int = Field(default=16 << 20, ge=1, description="request body (and gRPC message) bytes")
    max_batch_events: int = Field(default=256, ge=1, description="events in one CloudEvents batch")
    header_timeout_s: float = Field(default=10.0, gt=0, description="from a request's first byte to its last header")
    max_header_bytes: int = Field(default=64 << 10, ge=1024, description="request line and headers")


class BodyTooLarge(Exception):
    """Raised into the route by ``receive`` once the body passes the limit; the guard answers 413."""


def is_json(media_type: str) -> bool:
    return media_type in ("application/json", "text/json") or media_type.endswith("+json")


def unsupported_content_type(path: str, headers: dict[bytes, bytes]) -> str | None:
    """Why this request's Content-Type is refused, or None."""
    raw = headers.get(b"content-type")
    if raw is None or b"ce-specversion" in headers:  # binary CloudEvent: the type is the data's
        return None
    media_type = raw.decode("latin-1").split(";", 1)[0].strip().lower()
    if is_json(media_type) or (media_type == "application/octet-stream" and path.startswith("/v2/")):
        return None
    return f"{media_type!r} is not JSON; send application/json"


def error_body(path: str, status: int, field: str, problem: str) -> bytes:
    """kzero's error shape, or OpenAI's on the OpenAI routes (its client reads ``error.message``)."""
    message = f"{field}: {problem}" if field else problem
    if path.startswith("/openai/"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        return orjson.dumps({"error": {"message": message, "type": kind, "param": field or None, "code": None}})
    return orjson.dumps({"error": message})


@dataclass
class _Exchange:
    received: int = 0
    too_large: bool = False
    started: bool = False


class RequestGuard:
    def __init__(self, app: ASGIApp, max_request_bytes: int) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = dict(scope["headers"])
        if scope["method"] in _BODY_METHODS and (problem := unsupported_content_type(path, headers)):
            await _answer(send, path, 415, "content-type", problem)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_request_bytes:
            await self._too_large(send, path, int(declared))
            return
        exchange = _Exchange()

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                exchange.received += len(message.get("body", b""))
                if exchange.received > self.max_request_bytes:
                    exchange.too_large = True
                    raise BodyTooLarge(f"more than {self.max_request_bytes} bytes")
            return message

        async def watched_send(message: Message) -> None:
            if exchange.too_large:
                # Whatever the route made of BodyTooLarge (FastAPI's body parsing turns any error
                # into a 400), the answer is 413.
                if message["type"] == "http.response.start" and not exchange.started:
                    exchange.started = True
                    await self._too_large(send, path)
                return
            exchange.started = exchange.started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except Exception as err:
            if exchange.started:  # mid-response: only closing the connection keeps the framing honest
                raise
            if exchange.too_large:
                await self._too_large(send, path)
                return
            log.error("unhandled error on %s %s", scope["method"], path, exc_info=err)
            await _answer(send, path, 500, "", "internal server error")

    async def _too_large(self, send: Send, path: str, declared: int | None = None) -> None:
        size = f"{declared} bytes exceed" if declared is not None else "exceeds"  # chunked: read up to the limit
        problem = f"{size} the limit of {self.max_request_bytes} bytes"
        await _answer(send, path, 413, "body", problem, close=True)


async def _answer(send: Send, path: str, status: int, field: str, problem: str, *, close: bool = False) -> None:
    body = error_body(path, status, field, problem)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``RequestLimits``, for every kzero server (predictor and transformer)."""
    defaults = RequestLimits()
    p.add_argument("--max_request_bytes", type=int, default=defaults.max_request_bytes,
                   help="request body (and gRPC message) size; larger gets 413 (gRPC RESOURCE_EXHAUSTED)")
    p.add_argument("--max_batch_events", type=int, default=defaults.max_batch_events,
                   help="events in one CloudEvents batch request; more gets 400")
    p.add_argument("--header_timeout_s", type=float, default=defaults.header_timeout_s,
                   help="a request's headers must be complete this long after its first byte, or the connection closes")


def limits_from_args(args: argparse.Namespace) -> RequestLimits:
    return RequestLimits(max_request_bytes=args.max_request_bytes, max_batch_events=args.max_batch_events,
                         header_timeout_s=args.header_timeout_s)
