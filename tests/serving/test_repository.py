"""The model repository routes: their rules against a fake model, then (with a rotated key file) against a
real predictor process (a tiny random embedder) started with ``--enable_model_repository`` and
``--api_keys_file``.

The process tests share one server and run in file order; the last one leaves it not-live on purpose.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

from serving.errors import ModelNotFound, ModelUnloaded, NotReady
from serving.launch import PredictorProcess
from serving.repository import ReloadFailed, RepositoryDisabled, SingleModelRepository
from tests.tiny_models import tiny_sentence_transformer

KEY = "kz-repository-key-0001"
V2_BODY = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["kafka"]}]}


class FakeModel:
    """Loads when ``loaded`` is set (or fails with ``error``); counts loads and unloads."""

    name = "tiny"

    def __init__(self) -> None:
        self.ready = True
        self.loads = self.unloads = 0
        self.loaded = asyncio.Event()
        self.error: Exception | None = None

    async def load_in_background(self) -> None:
        self.loads += 1
        await self.loaded.wait()
        if self.error is not None:
            raise self.error
        self.ready = True

    async def wait_ready(self) -> None:
        if not self.ready:
            raise NotReady("not ready", 1)

    async def unload(self) -> None:
        self.unloads += 1
        self.ready = False


def repository(model: FakeModel, enabled: bool = True) -> tuple[SingleModelRepository, list[str]]:
    reasons: list[str] = []
    return SingleModelRepository(model, enabled=enabled, not_live=reasons.append), reasons  # type: ignore[arg-type]


async def test_the_routes_refuse_when_disabled_or_for_another_model() -> None:
    model = FakeModel()
    off, _ = repository(model, enabled=False)
    for call in (off.load("tiny"), off.unload("tiny")):
        with pytest.raises(RepositoryDisabled, match="--enable_model_repository"):
            await call
    on, _ = repository(model)
    with pytest.raises(ModelNotFound):
        await on.unload("other")
    model.ready = False  # still loading at start: nothing to unload yet
    with pytest.raises(NotReady, match="still loading"):
        await on.unload("tiny")
    assert model.unloads == 0


async def test_concurrent_loads_share_one_reload_and_a_second_unload_is_404() -> None:
    model = FakeModel()
    repo, reasons = repository(model)
    assert await repo.unload("tiny") == {"name": "tiny", "unload": True}
    with pytest.raises(ModelUnloaded):
        await repo.unload("tiny")
    loads = [asyncio.create_task(repo.load("tiny")) for _ in range(3)]
    await asyncio.sleep(0)
    model.loaded.set()
    assert await asyncio.gather(*loads) == [{"name": "tiny", "load": True}] * 3
    assert model.loads == 1 and model.unloads == 1 and not reasons


async def test_a_failed_reload_reports_not_live_even_if_its_caller_hung_up() -> None:
    model = FakeModel()
    reasons: list[str] = []
    dead = asyncio.Event()
    repo = SingleModelRepository(model, enabled=True,  # type: ignore[arg-type]
                                 not_live=lambda reason: (reasons.append(reason), dead.set()))
    await repo.unload("tiny")
    caller = asyncio.create_task(repo.load("tiny"))
    await asyncio.sleep(0)
    caller.cancel()  # the client went away: the reload goes on
    with pytest.raises(asyncio.CancelledError):
        await caller
    model.error = OSError("disk gone")
    model.loaded.set()
    await asyncio.wait_for(dead.wait(), 10)
    assert reasons == ["model tiny failed to load again: disk gone"]
    for call in (repo.load("tiny"), repo.unload("tiny")):
        with pytest.raises(ReloadFailed, match="disk gone"):
            await call
    assert model.loads == 1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sentence_transformer(tmp_path_factory.mktemp("tiny-st"))


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "api-keys"
    path.write_text(f"# kzero API keys\n{KEY}\n")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path, keys_file: Path) -> Iterator[PredictorProcess]:
    args = ["--task", "embed", "--model_dir", str(model_dir), "--api_keys_file", str(keys_file),
            "--enable_model_repository", "--load_wait_s", "60"]
    log = tmp_path_factory.mktemp("logs") / "repository.log"
    process = PredictorProcess(args, model_name="tiny", log_path=log).start()
    try:
        process.wait_ready(300)
        yield process
    finally:
        assert process.stop() == 0


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def grpc_auth(key: str = KEY) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def embed(client: httpx.Client, key: str = KEY) -> httpx.Response:
    return client.post("/v1/models/tiny:predict", json={"instances": ["kafka"]}, headers=auth(key))


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_rotated_key_file_takes_effect_without_a_restart(server: PredictorProcess, keys_file: Path) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert embed(client).status_code == 200
        # Kubernetes swaps a Secret volume's files by renaming a new one into place.
        staged = keys_file.with_name("staged")
        staged.write_text("kz-rotated-key-0002\n\n# the old key is revoked\n")
        staged.replace(keys_file)
        wait_for(lambda: embed(client).status_code == 401, "the old key refused")
        assert embed(client, "kz-rotated-key-0002").status_code == 200
        keys_file.write_text(f"{KEY}\nkz-rotated-key-0002\n")  # rewritten in place: both keys
        wait_for(lambda: embed(client).status_code == 200, "the first key accepted again")
        keys_file.unlink()  # unreadable: the last good keys stay, and it is logged once
        time.sleep(1.2)
        for _ in range(3):
            assert embed(client).status_code == 200
            time.sleep(0.5)
        keys_file.write_text(f"{KEY}\n")
        wait_for(lambda: embed(client, "kz-rotated-key-0002").status_code == 401, "the rotated key revoked")
    assert server.log_path is not None
    log = server.log_path.read_text()
    assert log.count("is unusable (FileNotFoundError); keeping the 2 keys read before") == 1
    assert KEY not in log and "kz-rotated-key-0002" not in log


@pytest.mark.slow
def test_unload_then_load_brings_the_model_back(server: PredictorProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client, \
            grpc.insecure_channel(server.grpc_target) as channel:
        stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
        before = embed(client).json()["predictions"]
        assert client.post("/v2/repository/models/tiny/unload").status_code == 401
        assert client.post("/v2/repository/models/other/unload", headers=auth()).status_code == 404
        unloaded = client.post("/v2/repository/models/tiny/unload", headers=auth())
        assert unloaded.status_code == 200 and unloaded.json() == {"name": "tiny", "unload": True}

        # Unloaded: every protocol answers 404 naming the way back; not ready, but live.
        again = client.post("/v2/repository/models/tiny/unload", headers=auth())
        assert again.status_code == 404 and "is unloaded" in again.json()["error"]
        for response in (embed(client), client.post("/v2/models/tiny/infer", json=V2_BODY, headers=auth()),
                         client.post("/openai/v1/embeddings", json={"model": "tiny", "input": "x"}, headers=auth())):
            assert response.status_code == 404, response.text
            assert "/v2/repository/models/tiny/load" in response.text
        request = pb.ModelInferRequest(model_name="tiny", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="text", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[b"kafka"]))])
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, metadata=grpc_auth())
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/v2/health/live").status_code == 200

        # Loaded again over gRPC, answered once ready; then the same round trip the other way.
        loaded = stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="tiny"), metadata=grpc_auth())
        assert loaded.isLoaded and loaded.model_name == "tiny"
        assert client.get("/v2/health/ready").status_code == 200
        assert embed(client).json()["predictions"] == before
        assert stub.ModelInfer(request, metadata=grpc_auth()).outputs[0].shape == [1, 32]
        assert stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="tiny"),
                                          metadata=grpc_auth()).isUnloaded
        assert client.post("/v2/repository/models/tiny/load", headers=auth()).json() == {"name": "tiny", "load": True}
        assert client.post("/v2/repository/models/tiny/load", headers=auth()).status_code == 200  # already loaded
        assert embed(client).json()["predictions"] == before


@pytest.mark.slow
def test_a_reload_that_fails_makes_the_server_not_live(server: PredictorProcess, model_dir: Path) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.post("/v2/repository/models/tiny/unload", headers=auth()).status_code == 200
        moved = model_dir.rename(model_dir.with_name("moved-away"))
        try:
            failed = client.post("/v2/repository/models/tiny/load", headers=auth())
        finally:
            moved.rename(model_dir)
        assert failed.status_code == 503 and "failed to load again" in failed.json()["error"]
        live = client.get("/v2/health/live")
        assert live.status_code == 503 and "failed to load again" in live.json()["error"]
        # The model files are back, but only a restart (which the failed liveness probe brings) helps.
        assert client.post("/v2/repository/models/tiny/load", headers=auth()).status_code == 503
        assert client.get("/v2/health/ready").status_code == 503
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as dead:
            stub.ServerLive(pb.ServerLiveRequest())
        assert dead.value.code() == grpc.StatusCode.UNAVAILABLE
