"""Request limits before any work, a well-framed JSON answer to every failure, and slow clients.

The guard and the protocol are first tested behind a real uvicorn with a small app (short timeouts,
a route that fails on purpose); then against the session's real servers, with real clients.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import numpy as np
import pytest
import uvicorn
from kserve import InferenceGRPCClient
from kserve.protocol.infer_type import InferInput, InferRequest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from events.event import REQUEST_TYPE
from serving.http_protocol import guarded_http_protocol
from serving.launch import PredictorProcess, free_port
from serving.limits import RequestGuard, RequestLimits

LIMIT = 1024
HEADER_TIMEOUT_S = 1.0
CLOSED_WITHIN_S = 30.0  # a bound on behaviour, not a performance target


async def echo(request: Request) -> Response:
    return JSONResponse({"bytes": len(await request.body())})


async def swallowing(request: Request) -> Response:
    """Parses its body as FastAPI does: any error reading it becomes a 400."""
    try:
        await request.body()
    except Exception:
        return JSONResponse({"detail": "There was an error parsing the body"}, status_code=400)
    return JSONResponse({})


async def boom(_: Request) -> Response:
    raise RuntimeError("a bug")


def toy_app() -> Starlette:
    routes = [Route(path, echo, methods=["GET", "POST"]) for path in ("/echo", "/v2/models/m/infer")]
    routes += [Route("/swallowing", swallowing, methods=["POST"]),
               Route("/boom", boom, methods=["POST"]), Route("/openai/v1/boom", boom, methods=["POST"])]
    # As the servers add it: a user middleware, inside Starlette's last-resort error handler.
    return Starlette(routes=routes, middleware=[Middleware(RequestGuard, max_request_bytes=LIMIT)])


@pytest.fixture(scope="module")
def toy() -> Iterator[str]:
    """The guard and the guarded protocol behind a real uvicorn on a loopback port."""
    port = free_port()
    limits = RequestLimits(max_request_bytes=LIMIT, header_timeout_s=HEADER_TIMEOUT_S, max_header_bytes=2048)
    config = uvicorn.Config(toy_app(), host="127.0.0.1", port=port, http=guarded_http_protocol(limits),
                            timeout_keep_alive=1, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "toy server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def local_port(response: httpx.Response) -> int:
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


def raw_exchange(url: str, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection and read until the server closes it."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=CLOSED_WITHIN_S) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_an_unexpected_exception_is_a_json_500_and_the_connection_stays_usable(toy: str) -> None:
    with httpx.Client(base_url=toy) as client:
        failed = client.post("/boom", json={})
        assert failed.status_code == 500 and failed.json() == {"error": "internal server error"}
        assert "a bug" not in failed.text and failed.headers.get("connection") != "close"
        ok = client.post("/echo", json={})
        assert ok.status_code == 200 and local_port(ok) == local_port(failed)
        openai = client.post("/openai/v1/boom", json={})
        assert openai.json()["error"]["type"] == "server_error"


def test_a_declared_body_over_the_limit_is_413_before_a_byte_of_it_is_sent(toy: str) -> None:
    head = (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (LIMIT + 1))
    reply = raw_exchange(toy, head)  # no body follows: the answer cannot have waited for it
    assert reply.startswith(b"HTTP/1.1 413 ") and b"connection: close" in reply
    assert reply.endswith(b'{"error":"body: 1025 bytes exceed the limit of 1024 bytes"}')


@pytest.mark.parametrize("path", ["/echo", "/swallowing"])
def test_a_chunked_body_over_the_limit_is_413_whatever_the_route_makes_of_it(toy: str, path: str) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b"x" * 512

    with httpx.Client(base_url=toy) as client:
        response = client.post(path, content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413, response.text
        assert response.json() == {"error": "body: exceeds the limit of 1024 bytes"}
        assert client.post("/echo", content=b"x" * 512).json() == {"bytes": 512}


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/echo", {"content-type": "text/plain"}, 415),
        ("/echo", {"content-type": "application/x-www-form-urlencoded"}, 415),
        ("/echo", {"content-type": "application/octet-stream"}, 415),
        ("/echo", {}, 200),  # KServe's v2 client and tritonclient send no content type
        ("/echo", {"content-type": "application/json; charset=utf-8"}, 200),
        ("/echo", {"content-type": "application/cloudevents-batch+json"}, 200),
        ("/echo", {"content-type": "text/plain", "ce-specversion": "1.0"}, 200),  # binary CloudEvent: the data's
        ("/v2/models/m/infer", {"content-type": "application/octet-stream"}, 200),  # v2 binary tensor extension
    ],
)
def test_only_json_bodies_pass_except_binary_events_and_v2_tensors(
    toy: str, path: str, headers: dict[str, str], status: int
) -> None:
    response = httpx.post(toy + path, content=b"{}", headers=headers)
    assert response.status_code == status, response.text
    if status == 415:
        assert response.json()["error"].startswith("content-type: ")
    assert httpx.get(toy + "/echo", headers={"content-type": "text/plain"}).status_code == 200  # no body, no check


def test_a_request_head_that_stops_arriving_is_closed(toy: str) -> None:
    started = time.monotonic()
    assert raw_exchange(toy, b"POST /echo HTT") == b""
    assert time.monotonic() - started < CLOSED_WITHIN_S


def test_a_connection_that_never_sends_a_byte_is_closed(toy: str) -> None:
    assert raw_exchange(toy, b"") == b""


def test_a_head_that_arrives_in_pieces_within_the_deadline_is_served(toy: str) -> None:
    host, port = toy.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=CLOSED_WITHIN_S) as sock:
        for piece in (b"GET /ec", b"ho HTTP/1.1\r\nHo", b"st: t\r\n\r\n"):
            sock.sendall(piece)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_an_oversized_head_is_431(toy: str) -> None:
    reply = raw_exchange(toy, b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 4096 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ")


# --- the session's real servers -------------------------------------------------------------------------


def chunked(size: int, prefix: bytes, suffix: bytes) -> Iterator[bytes]:
    yield prefix
    for _ in range(size >> 20):
        yield b"x" * (1 << 20)
    yield suffix


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "prefix", "suffix"),
    [
        ("/v1/models/minilm:predict", b'{"instances": ["', b'"]}'),
        ("/v2/models/minilm/infer", b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["',
         b'"]}]}'),
        ("/openai/v1/embeddings", b'{"model": "minilm", "input": "', b'"}'),
    ],
)
def test_a_body_over_16_mib_is_413_on_every_route(embed_server: PredictorProcess, path: str, prefix: bytes,
                                                  suffix: bytes) -> None:
    with httpx.Client(base_url=embed_server.url, timeout=120) as client:
        response = client.post(path, content=chunked(17 << 20, prefix, suffix),
                               headers={"content-type": "application/json"})
        assert response.status_code == 413, response.text
        assert "limit of 16777216 bytes" in response.text
        assert client.get("/v2/health/live").status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize(("path", "expected"), [
    ("/openai/v1/embeddings", b'"type":"invalid_request_error","param":"body"'),
    ("/v1/models/minilm:predict", b'{"error":"body: 209715200 bytes exceed the limit of 16777216 bytes"}'),
])
def test_a_declared_200_mb_body_is_refused_unread(embed_server: PredictorProcess, path: str, expected: bytes) -> None:
    head = (b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (path.encode(), 200 << 20))
    reply = raw_exchange(embed_server.url, head)
    assert reply.startswith(b"HTTP/1.1 413 ") and expected in reply


@pytest.mark.slow
async def test_a_grpc_message_over_the_limit_is_resource_exhausted(embed_server: PredictorProcess) -> None:
    tensor = InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(["x" * (17 << 20)], dtype=object), binary_data=False)
    client = InferenceGRPCClient(embed_server.grpc_target)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.infer(InferRequest(model_name="minilm", infer_inputs=[tensor]))
    finally:
        await client.close()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.slow
@pytest.mark.parametrize(("path", "content_type"), [
    ("/v1/models/minilm:predict", "text/plain"),
    ("/openai/v1/embeddings", "application/x-www-form-urlencoded"),
    ("/v2/models/minilm/infer", "application/xml"),
])
def test_a_body_that_is_not_json_is_415(embed_server: PredictorProcess, path: str, content_type: str) -> None:
    response = httpx.post(embed_server.url + path, content=b'{"instances": ["a"]}',
                          headers={"content-type": content_type})
    assert response.status_code == 415, response.text


@pytest.mark.slow
def test_json_with_a_charset_is_json(embed_server: PredictorProcess) -> None:
    response = httpx.post(embed_server.url + "/v1/models/minilm:predict", content=b'{"instances": ["a"]}',
                          headers={"content-type": "application/json; charset=utf-8"}, timeout=60)
    assert response.status_code == 200 and len(response.json()["predictions"][0]) == 384


@pytest.mark.slow
def test_openai_embeddings_enforce_max_instances(embed_server: PredictorProcess) -> None:
    response = httpx.post(embed_server.url + "/openai/v1/embeddings", json={"model": "minilm", "input": ["a"] * 1000})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "input: 1000 texts exceed the limit of 256"
    assert response.json()["error"]["param"] == "input"


@pytest.mark.slow
def test_openai_completions_enforce_max_instances(generate_server: PredictorProcess) -> None:
    response = httpx.post(generate_server.url + "/openai/v1/completions",
                          json={"model": "smol", "prompt": ["a"] * 257, "max_tokens": 1})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "prompt: 257 prompts exceed the limit of 256"


@pytest.mark.slow
def test_a_cloudevents_batch_over_the_cap_is_400(embed_server: PredictorProcess) -> None:
    events = [{"specversion": "1.0", "id": str(i), "source": "s", "type": REQUEST_TYPE, "data": {"instances": ["a"]}}
              for i in range(257)]
    response = httpx.post(embed_server.url + "/v1/models/minilm:predict", json=events,
                          headers={"content-type": "application/cloudevents-batch+json"})
    assert response.status_code == 400
    assert response.json() == {"error": "body: 257 events in a batch exceed the limit of 256"}


@pytest.mark.slow
def test_the_real_server_closes_a_stalled_request_head_and_refuses_an_oversized_one(
    embed_server: PredictorProcess,
) -> None:
    assert raw_exchange(embed_server.url, b"GET /v2/health/li") == b""  # closed after --header_timeout_s
    head = b"GET /v2/health/live HTTP/1.1\r\nX-Pad: " + b"a" * (100 << 10) + b"\r\n\r\n"
    reply = raw_exchange(embed_server.url, head)
    assert reply.startswith(b"HTTP/1.1 431 ")


@pytest.mark.slow
async def test_probes_are_answered_while_a_huge_prompt_is_tokenized(generate_server: PredictorProcess) -> None:
    """A prompt that takes seconds to tokenize does not hold the event loop: probes sent once its body
    is out are answered before it is. Tokenized on the loop, none would be (the order is checked,
    not the time)."""
    body = b'{"instances": ["' + b"tokens " * (400 << 10) + b'"]}'  # 2.8 MB: seconds of tokenizing, over the limit
    sent = asyncio.Event()

    async def upload() -> AsyncIterator[bytes]:
        yield body
        sent.set()

    async with httpx.AsyncClient(base_url=generate_server.url, timeout=120) as client:
        big = asyncio.ensure_future(client.post("/v1/models/smol:predict", content=upload(),
                                                headers={"content-type": "application/json"}))
        await sent.wait()
        answered_first = 0
        while not big.done():
            probe = await client.get("/v2/health/live")
            assert probe.status_code == 200
            answered_first += not big.done()
        response = await big
    assert response.status_code == 400 and "tokens; the limit is" in response.json()["error"]
    assert answered_first >= 20  # on the loop: 3 (answered while the body was still being read)
