"""A client that disconnects before its response is complete cancels the request's handler.

Starlette notices a disconnect only while it streams a response; a plain JSON response is built to
the end even when nobody will read it, so a generation request whose client went away kept its row
decoding until ``max_tokens``. This pure ASGI middleware watches the connection once the request
body has been read and cancels the handler's task when ``http.disconnect`` arrives first: the
cancellation reaches the engine (the continuous engine takes the row out of the running batch at the
next step and frees its KV blocks; the batcher drops a request still waiting), and the RAG
transformer's relay closes its call to the predictor, which is cancelled in turn.

Only requests with a body (POST, PUT, PATCH) are watched: the watch needs the body read first, and
probes and scrapes have none.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import MutableMapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Send

_WATCHED = frozenset({"POST", "PUT", "PATCH"})


class CancelOnDisconnect:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WATCHED:
            await self.app(scope, receive, send)
            return
        body_read = asyncio.Event()
        disconnect: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        complete = False

        async def app_receive() -> Message:
            if body_read.is_set():  # the watcher owns the connection now: it hands the disconnect on
                return await asyncio.shield(disconnect)
            message = await receive()
            if message["type"] == "http.disconnect":
                if not disconnect.done():
                    disconnect.set_result(message)
            elif not message.get("more_body", False):
                body_read.set()
            return message

        async def app_send(message: Message) -> None:
            nonlocal complete
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        handler = asyncio.ensure_future(self.app(scope, app_receive, app_send))

        async def watch() -> None:
            await body_read.wait()
            message = await receive()  # blocks until the client leaves or the response is complete
            if not disconnect.done():
                disconnect.set_result(message)
            if message["type"] == "http.disconnect" and not complete:
                handler.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({handler})
        except asyncio.CancelledError:  # this request's own task (server shutdown): take the handler along
            handler.cancel()
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # its receive failing ends the watch only
                await watcher
        if handler.cancelled():
            return  # the client left: there is nobody to answer
        handler.result()  # the handler's own exception, for the layers outside
