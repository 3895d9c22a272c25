"""CancelOnDisconnect at the ASGI level: a handler is cancelled when its client leaves first, and only then."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serving.disconnect import CancelOnDisconnect

SCOPE = {"type": "http", "method": "POST", "path": "/v1/models/m:predict", "headers": []}


class Connection:
    """The server's side of one request: the body, then ``http.disconnect`` when told."""

    def __init__(self) -> None:
        self.left = asyncio.Event()
        self.sent: list[dict[str, Any]] = []
        self._body_given = False

    async def receive(self) -> dict[str, Any]:
        if not self._body_given:
            self._body_given = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self.left.set()  # as a server does: a complete response ends the cycle's receive too


async def test_a_handler_is_cancelled_when_its_client_leaves() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    conn = Connection()
    request = asyncio.ensure_future(CancelOnDisconnect(slow)(SCOPE, conn.receive, conn.send))
    await started.wait()
    conn.left.set()
    await asyncio.wait_for(request, 10)  # returns quietly: nobody is left to answer
    assert cancelled.is_set() and conn.sent == []


async def test_a_complete_response_is_not_cancelled_and_errors_pass_through() -> None:
    async def answer(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})
        await asyncio.sleep(0.05)  # work after the response (background) is not the client's to cancel
        assert await receive() == {"type": "http.disconnect"}

    conn = Connection()
    await asyncio.wait_for(CancelOnDisconnect(answer)(SCOPE, conn.receive, conn.send), 10)
    assert [m["type"] for m in conn.sent] == ["http.response.start", "http.response.body"]

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        raise ValueError("the handler's own error")

    with pytest.raises(ValueError, match="own error"):
        await CancelOnDisconnect(broken)(SCOPE, Connection().receive, Connection().send)


async def test_a_get_is_passed_through_unwatched() -> None:
    seen: list[Any] = []

    async def probe(scope: Any, receive: Any, send: Any) -> None:
        seen.append(receive)

    conn = Connection()
    await CancelOnDisconnect(probe)({**SCOPE, "method": "GET"}, conn.receive, conn.send)
    assert seen == [conn.receive]


async def test_a_cancellation_from_outside_still_reaches_the_caller() -> None:
    """Server shutdown cancels the request's task: that is not the client leaving, so it propagates."""
    started = asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        started.set()
        await asyncio.sleep(60)

    conn = Connection()
    request = asyncio.ensure_future(CancelOnDisconnect(slow)(SCOPE, conn.receive, conn.send))
    await started.wait()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert request.cancelled()


async def test_a_client_leaving_leaves_no_cancellation_pending_on_the_request() -> None:
    """The watcher's cancellation is taken back once handled: the request's task goes on uncancelled."""
    started = asyncio.Event()
    after: list[int] = []

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        started.set()
        await asyncio.sleep(60)

    async def request(conn: Connection) -> None:
        await CancelOnDisconnect(slow)(SCOPE, conn.receive, conn.send)
        task = asyncio.current_task()
        assert task is not None
        after.append(task.cancelling())
        await asyncio.sleep(0)  # a pending cancellation would be raised here

    conn = Connection()
    task = asyncio.ensure_future(request(conn))
    await started.wait()
    conn.left.set()
    await asyncio.wait_for(task, 10)
    assert after == [0]
