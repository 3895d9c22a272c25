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
from collections.abc import MutableMapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Send

_WATCHED = frozenset({"POST", "PUT", "PATCH"})


class CancelOnDisconnect:
    # The handler runs in the request's own task, and the watcher (started once the body is read) cancels
    # that task: a second task per request for the handler, and ``asyncio.wait`` on it, were among the
    # event loop's costs under 64 embedding clients (py-spy, bench/embed_batching.py).
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WATCHED:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        request = asyncio.current_task()
        assert request is not None
        disconnect: asyncio.Future[Message] = loop.create_future()
        watcher: asyncio.Task[None] | None = None
        complete = left = False

        async def watch() -> None:
            nonlocal left
            message = await receive()  # blocks until the client leaves or the response is complete
            if not disconnect.done():
                disconnect.set_result(message)
            if message["type"] == "http.disconnect" and not complete:
                left = True
                request.cancel()

        async def app_receive() -> Message:
            nonlocal watcher
            if watcher is not None:  # the watcher owns the connection now: it hands the disconnect on
                return await asyncio.shield(disconnect)
            message = await receive()
            if message["type"] == "http.disconnect":
                if not disconnect.done():
                    disconnect.set_result(message)
            elif not message.get("more_body", False):
                watcher = loop.create_task(watch())
                watcher.add_done_callback(_retrieve)
            return message

        async def app_send(message: Message) -> None:
            nonlocal complete
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        try:
            await self.app(scope, app_receive, app_send)
        except asyncio.CancelledError:
            # The client left: there is nobody to answer. Cancelled from elsewhere as well (server
            # shutdown), or only from elsewhere: that cancellation goes on to the layers outside.
            if not left or request.uncancel() > 0:
                raise
        else:
            if left:  # the handler swallowed the watcher's cancellation
                request.uncancel()
        finally:
            if watcher is not None:
                watcher.cancel()


def _retrieve(watcher: asyncio.Task[None]) -> None:
    """A watcher's own failure (its receive failing) ends the watch only: it is retrieved, not logged."""
    if not watcher.cancelled():
        watcher.exception()
