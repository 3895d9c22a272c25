"""Who may call what: the route inventory of the real app, and a keyed server process called over
every protocol with the clients users have."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import numpy as np
import openai
import pytest
from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.infer_type import InferInput, InferRequest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from events.event import REQUEST_TYPE, RESULT_TYPE
from predictors.batcher import BatcherConfig
from serving.access import OPEN_ROUTES, OPEN_RPCS
from serving.auth import ApiKeys
from serving.client import PredictorClient, Unauthorized, make_client
from serving.launch import PredictorProcess
from serving.retry import RetryPolicy, call_with_retries
from tests.keyed import KEY, KEYS, WRONG, bearer

TEXTS = ["The broker stores events.", "A predictor answers requests."]
GRPC_KEY = (("authorization", f"Bearer {KEY}"),)
GRPC_WRONG = (("authorization", f"Bearer {WRONG}"),)


# --- the route inventory of the real app -------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_app() -> Any:
    """KServe's app as ``KzeroServer.start`` sets it up (our routes, KServe's, middleware), not served."""
    from opentelemetry import trace

    from serving.kserve_import import import_kserve

    import_kserve()
    from kserve.model_server import app

    from predictors.metrics import PredictorMetrics
    from predictors.model import BatchedModel
    from predictors.routes import predictor_routers
    from serving.server import KzeroServer

    def never() -> Any:
        raise AssertionError("the route inventory must not load a model")

    metrics = PredictorMetrics(registry=CollectorRegistry())
    model = BatchedModel("tiny", never, BatcherConfig(), load_wait_s=0.0, retry_after_s=1,
                         tracer=trace.get_tracer(__name__), metrics=metrics)
    server = KzeroServer(model, metrics, predictor_routers(model), http_port=0, grpc_port=0, enable_grpc=False,
                         api_keys=ApiKeys(["inventory-key"]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(server, "setup_event_loop", lambda: None)
        patch.setattr(server, "register_signal_handler", lambda: None)
        patch.setattr(asyncio, "run", lambda main: main.close())
        server.start()
    for pending in server.servers:  # the model load and the servers: never started here
        pending.close()
    server._rest_server.create_application()  # what RESTServer.start does before serving
    return app


def test_every_route_of_the_real_app_is_open_by_name_or_needs_a_key(keyed_app: Any) -> None:
    from fastapi.routing import iter_route_contexts
    from starlette.testclient import TestClient

    routes = list(iter_route_contexts(keyed_app.routes))  # included routers flattened, prefixes applied
    unknown = [r.original_route for r in routes if not r.methods or not r.path]
    assert not unknown, f"a kind of route this test cannot call (a mount, a websocket?); extend it: {unknown}"
    calls = {(m, r.path) for r in routes for m in r.methods or ()}
    assert OPEN_ROUTES <= calls, f"open routes that no longer exist: {OPEN_ROUTES - calls}"
    assert {("POST", "/v1/models/{model_name}:predict"), ("POST", "/v2/models/{model_name}/infer"),
            ("POST", "/openai/v1/embeddings"), ("POST", "/v2/repository/models/{model_name}/unload"),
            ("GET", "/v2/models/{model_name}"), ("GET", "/openapi.json")} <= calls
    client = TestClient(keyed_app, raise_server_exceptions=False)
    for method, template in sorted(calls):
        path = re.sub(r"\{[^}]+\}", "tiny", template)
        response = client.request(method, path)
        if (method, template) in OPEN_ROUTES:
            assert response.status_code != 401, (method, template)
        else:
            assert response.status_code == 401, (method, template, response.status_code)
            assert response.headers["www-authenticate"].startswith("Bearer")
    # A path no route serves gets 401 too: nothing tells a caller without a key what exists.
    assert client.get("/no/such/route").status_code == 401
    assert client.get("/no/such/route", headers={"Authorization": "Bearer inventory-key"}).status_code == 404


# --- a keyed server process --------------------------------------------------------------------------


def v2_texts(texts: list[str]) -> InferRequest:
    tensor = InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=False)
    return InferRequest(model_name="minilm", infer_inputs=[tensor])


@pytest.mark.slow
async def test_v1_and_v2_need_a_key(keyed_embed_server: PredictorProcess) -> None:
    v1 = InferenceRESTClient(RESTConfig(protocol="v1"))
    try:
        for headers in (None, bearer(WRONG)):
            with pytest.raises(Exception, match="401"):
                await v1.infer(keyed_embed_server.url, {"instances": TEXTS}, model_name="minilm", headers=headers)
        answer = await v1.infer(keyed_embed_server.url, {"instances": TEXTS}, model_name="minilm", headers=bearer())
    finally:
        await v1.close()
    assert np.array(answer["predictions"]).shape == (2, 384)
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}
    async with httpx.AsyncClient(base_url=keyed_embed_server.url, timeout=60) as client:
        missing = await client.post("/v2/models/minilm/infer", json=body)
        wrong = await client.post("/v2/models/minilm/infer", json=body, headers=bearer(WRONG))
        first = await client.post("/v2/models/minilm/infer", json=body, headers=bearer(KEYS[0]))
        right = await client.post("/v2/models/minilm/infer", json=body, headers={"authorization": f"bearer {KEY}"})
    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert wrong.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert missing.json() == {"error": "missing API key: send 'authorization: Bearer <key>'"}
    assert wrong.json() == {"error": "invalid API key"}
    assert first.status_code == right.status_code == 200
    assert right.json()["outputs"][0]["shape"] == [1, 384]


@pytest.mark.slow
async def test_grpc_needs_the_key_in_metadata_and_its_probes_stay_open(keyed_embed_server: PredictorProcess) -> None:
    client = InferenceGRPCClient(keyed_embed_server.grpc_target)
    try:
        for metadata in (None, GRPC_WRONG):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.infer(v2_texts(TEXTS), headers=metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = await client.infer(v2_texts(TEXTS), headers=GRPC_KEY)
    finally:
        await client.close()
    assert answer.outputs[0].as_numpy().shape == (2, 384)
    async with grpc.aio.insecure_channel(keyed_embed_server.grpc_target) as channel:
        stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert OPEN_RPCS == {"ServerLive", "ServerReady"}
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live
        assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
        for call in (stub.ModelReady(pb.ModelReadyRequest(name="minilm")),
                     stub.ModelMetadata(pb.ModelMetadataRequest(name="minilm")),
                     stub.ServerMetadata(pb.ServerMetadataRequest())):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert (await stub.ModelReady(pb.ModelReadyRequest(name="minilm"), metadata=GRPC_KEY)).ready


@pytest.mark.slow
async def test_the_openai_client_authenticates_with_its_api_key(keyed_embed_server: PredictorProcess) -> None:
    base_url = keyed_embed_server.url + "/openai/v1"
    async with openai.AsyncOpenAI(base_url=base_url, api_key=WRONG, max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as refused:
            await wrong.embeddings.create(model="minilm", input=TEXTS)
    assert refused.value.code == "invalid_api_key"
    async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0) as right:
        assert len((await right.embeddings.create(model="minilm", input=TEXTS)).data[1].embedding) == 384
        assert (await right.models.list()).data[0].id == "minilm"
    async with httpx.AsyncClient(base_url=base_url) as client:
        missing = await client.post("/embeddings", json={"model": "minilm", "input": "hi"})
    assert missing.status_code == 401
    assert missing.json() == {"error": {"message": "missing API key: send 'authorization: Bearer <key>'",
                                        "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}


@pytest.mark.slow
async def test_cloudevents_need_a_key(keyed_embed_server: PredictorProcess) -> None:
    headers = {"ce-specversion": "1.0", "ce-id": "auth-1", "ce-source": "/tests/auth", "ce-type": REQUEST_TYPE,
               "content-type": "application/json"}
    body = {"instances": ["an event"]}
    async with httpx.AsyncClient(base_url=keyed_embed_server.url, timeout=60) as client:
        missing = await client.post("/v1/models/minilm:predict", json=body, headers=headers)
        wrong = await client.post("/v1/models/minilm:predict", json=body, headers={**headers, **bearer(WRONG)})
        right = await client.post("/v1/models/minilm:predict", json=body, headers={**headers, **bearer()})
    assert missing.status_code == wrong.status_code == 401
    assert right.status_code == 200 and right.headers["ce-type"] == RESULT_TYPE
    assert len(right.json()["predictions"][0]) == 384


@pytest.mark.slow
async def test_probes_and_metrics_stay_open(keyed_embed_server: PredictorProcess) -> None:
    async with httpx.AsyncClient(base_url=keyed_embed_server.url) as client:
        for path in ("/v2/health/live", "/v2/health/ready", "/metrics", "/"):
            assert (await client.get(path)).status_code == 200, path
        assert "kzero_requests_total" in (await client.get("/metrics")).text
        # Model readiness and metadata are not probes: keyed.
        for path in ("/v2/models/minilm/ready", "/v2/models/minilm", "/v2", "/v1/models/minilm", "/openapi.json"):
            assert (await client.get(path)).status_code == 401, path
            assert (await client.get(path, headers=bearer())).status_code == 200, path


@pytest.mark.slow
async def test_the_repository_routes_are_off_without_the_flag(keyed_embed_server: PredictorProcess) -> None:
    async with httpx.AsyncClient(base_url=keyed_embed_server.url) as client:
        for action in ("unload", "load"):
            path = f"/v2/repository/models/minilm/{action}"
            assert (await client.post(path)).status_code == 401
            off = await client.post(path, headers=bearer())
            assert off.status_code == 404 and "--enable_model_repository" in off.json()["error"]
        assert (await client.get("/v2/health/ready")).status_code == 200  # still serving
    async with grpc.aio.insecure_channel(keyed_embed_server.grpc_target) as channel:
        stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
        for metadata, code in ((None, grpc.StatusCode.UNAUTHENTICATED), (GRPC_KEY, grpc.StatusCode.UNIMPLEMENTED)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="minilm"),
                                                 metadata=metadata)
            assert refused.value.code() == code
        assert "--enable_model_repository" in refused.value.details()


@pytest.fixture
async def clients(keyed_embed_server: PredictorProcess) -> AsyncIterator[Any]:
    made: list[PredictorClient] = []

    def make(protocol: str, key: str | None) -> PredictorClient:
        target = keyed_embed_server.grpc_target if protocol == "grpc-v2" else keyed_embed_server.url
        made.append(make_client(protocol, target, 60.0, api_key=SecretStr(key) if key else None))  # type: ignore[arg-type]
        return made[-1]

    yield make
    await asyncio.gather(*(client.close() for client in made))


@pytest.mark.parametrize("protocol", ["v1", "v2", "grpc-v2"])
@pytest.mark.slow
async def test_our_client_sends_the_key_and_a_refusal_is_not_retried(clients: Any, protocol: str) -> None:
    answer = await clients(protocol, KEY).predict("minilm", {"instances": TEXTS})
    assert np.array(answer["predictions"]).shape == (2, 384)
    status = "UNAUTHENTICATED" if protocol == "grpc-v2" else "401"
    for key, what in ((WRONG, "the API key"), (None, "a request without an API key")):
        client = clients(protocol, key)
        with pytest.raises(Unauthorized) as refused:
            await call_with_retries(lambda c=client: c.predict("minilm", {"instances": TEXTS}),
                                    RetryPolicy(max_attempts=5, base_delay_s=0.0))
        assert refused.value.attempts == 1
        assert f"refused {what} ({status})" in str(refused.value) and "predictor at " in str(refused.value)
        assert WRONG not in str(refused.value)


@pytest.mark.slow
async def test_the_log_shows_requests_but_never_a_key(keyed_embed_server: PredictorProcess) -> None:
    async with httpx.AsyncClient(base_url=keyed_embed_server.url, timeout=60) as client:
        for headers in (bearer(WRONG), bearer()):
            await client.post("/v1/models/minilm:predict?probe=log", json={"instances": ["x"]}, headers=headers)
    assert keyed_embed_server.log_path is not None
    text = keyed_embed_server.log_path.read_text()
    assert '"POST /v1/models/minilm:predict?probe=log HTTP/1.1" 401' in text  # the access log is on
    assert '"POST /v1/models/minilm:predict?probe=log HTTP/1.1" 200' in text
    assert "401 POST /v1/models/minilm:predict: invalid API key" in text  # the refusal names the route
    for secret in (*KEYS, WRONG):
        assert secret not in text
