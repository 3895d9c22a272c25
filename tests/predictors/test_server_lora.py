"""LoRA adapters behind a real server process (a tiny random model, adapters made with peft), called with
the OpenAI client, httpx and KServe's v2 client: selection by the ``model`` field and the ``adapter``
parameter, a mixed batch, the listing, metadata, load and unload at run time behind the keys, and the
errors (unknown adapter 404, malformed directory 400 at load, exit 2 at start)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from kserve import InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest

from serving.launch import PredictorProcess
from tests.conftest import start_predictor
from tests.keyed import KEY, KEYS, bearer
from tests.otlp_receiver import OtlpReceiver
from tests.predictors.metrics import scrape, value
from tests.tiny_models import lora_adapters, tiny_causal_lm

pytestmark = pytest.mark.slow

PROMPT = "hello there"
PARAMETERS = {"max_new_tokens": 10, "ignore_eos": True}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_causal_lm(tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def adapter_dirs(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return lora_adapters(model_dir, tmp_path_factory.mktemp("adapters"), ("ada", "bob"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path, adapter_dirs: dict[str, Path],
           otlp_receiver: OtlpReceiver) -> Iterator[PredictorProcess]:
    args = ["--task", "generate", "--model_dir", str(model_dir), "--lora", f"ada={adapter_dirs['ada']}",
            "--max_batch_size", "8", "--max_batch_latency_ms", "200", "--enable_model_repository"]
    env = {"KZERO_API_KEYS": ",".join(KEYS), **otlp_receiver.env()}
    server = start_predictor(tmp_path_factory, "lora-tiny", args, env=env)
    yield server
    assert server.stop() == 0


def v1_body(**parameters: object) -> dict:
    return {"instances": [{"prompt": PROMPT}], "parameters": {**PARAMETERS, **parameters}}


async def v1(client: httpx.AsyncClient, **parameters: object) -> str:
    response = await client.post("/v1/models/lora-tiny:predict", json=v1_body(**parameters))
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["text"]


def openai_client(server: PredictorProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/openai/v1", api_key=KEY, max_retries=0)


async def test_the_model_field_and_the_adapter_parameter_select_the_adapter(
    server: PredictorProcess, otlp_receiver: OtlpReceiver
) -> None:
    client = openai_client(server)
    models = (await client.models.list()).data
    assert [(m.id, getattr(m, "parent", None)) for m in models] == [("lora-tiny", None), ("ada", "lora-tiny")]

    async def completion(model: str) -> str:
        reply = await client.completions.create(model=model, prompt=PROMPT, max_tokens=10, temperature=0,
                                                extra_body={"ignore_eos": True})
        assert reply.model == model
        return reply.choices[0].text

    async with httpx.AsyncClient(base_url=server.url, headers=bearer(), timeout=60) as http:
        base, tuned = await v1(http), await v1(http, adapter="ada")
        assert tuned != base
        assert await completion("lora-tiny") == base and await completion("ada") == tuned

        # One batch (the batcher waits up to 200 ms for more): base rows keep their text beside adapter rows.
        mixed = await asyncio.gather(*(v1(http, **({"adapter": "ada"} if i % 2 else {})) for i in range(6)))
        assert mixed == [base, tuned] * 3

        rest = InferenceRESTClient(RESTConfig(protocol="v2", verify=False))
        tensor = InferInput("text", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([PROMPT], dtype=object), binary_data=False)
        request = InferRequest(model_name="lora-tiny", infer_inputs=[tensor],
                               parameters={**PARAMETERS, "adapter": "ada"})
        try:
            reply = await rest.infer(server.url, request, model_name="lora-tiny", headers=bearer())
        finally:
            await rest.close()
        assert list(reply.outputs[0].data) == [tuned]

        metadata = await http.get("/v2/models/ada")
        assert metadata.status_code == 200 and metadata.json()["parent"] == "lora-tiny"
        assert (await http.get("/v2/models/ada/ready")).json() == {"name": "ada", "ready": True}
        assert (await http.get("/v2/models/lora-tiny")).json()["name"] == "lora-tiny"  # the base: KServe's answer
    samples = scrape(server.url)
    assert (value(samples, "kzero_adapter_requests_total", model="lora-tiny", adapter="ada") or 0) >= 6

    def traced(spans: list) -> bool:
        ours = [s for s in spans if s.service == "kzero-predictor-lora-tiny"]
        return (any(s.name == "infer lora-tiny" and s.attributes.get("kzero.adapter") == "ada" for s in ours)
                and any(s.name == "batch lora-tiny" and "ada" in (s.attributes.get("kzero.adapters") or ())
                        for s in ours))

    spans = otlp_receiver.wait_for(traced, 60)
    assert not any(s.name == "infer lora-tiny" and s.attributes.get("kzero.adapter") not in (None, "ada", "bob")
                   for s in spans)


async def test_an_unknown_adapter_is_404_naming_it(server: PredictorProcess) -> None:
    with pytest.raises(openai.NotFoundError, match="'nobody' is not served here; available: lora-tiny, ada"):
        await openai_client(server).chat.completions.create(model="nobody", messages=[{"role": "user", "content": "x"}])
    async with httpx.AsyncClient(base_url=server.url, headers=bearer(), timeout=60) as http:
        response = await http.post("/v1/models/lora-tiny:predict", json=v1_body(adapter="nobody"))
        assert response.status_code == 404
        assert response.json() == {"error": "adapter 'nobody' is not loaded; loaded adapters: ada"}
        assert (await http.get("/v2/models/nobody")).status_code == 404


async def test_load_and_unload_at_run_time(server: PredictorProcess, adapter_dirs: dict[str, Path],
                                           tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=bearer(), timeout=60) as http:
        base, ada = await v1(http), await v1(http, adapter="ada")
        load = "/v2/repository/models/bob/load"
        assert (await http.post(load, json={"path": str(adapter_dirs["bob"])}, headers={"Authorization": ""})
                ).status_code == 401
        loaded = await http.post(load, json={"path": str(adapter_dirs["bob"])})
        assert loaded.status_code == 200 and loaded.json() == {"name": "bob", "load": True}
        bob = await v1(http, adapter="bob")
        assert bob not in (base, ada)
        assert await v1(http) == base and await v1(http, adapter="ada") == ada

        again = await http.post(load, json={"path": str(adapter_dirs["bob"])})
        assert again.status_code == 400 and "adapter 'bob' is already loaded" in again.json()["error"]
        missing = await http.post("/v2/repository/models/carl/load", json={})
        assert missing.status_code == 400 and missing.json()["error"].startswith("path:")
        (tmp_path / "empty").mkdir()
        malformed = await http.post("/v2/repository/models/carl/load", json={"path": str(tmp_path / "empty")})
        assert malformed.status_code == 400
        assert malformed.json()["error"] == f"path: {tmp_path / 'empty'} has no adapter_config.json (a directory " \
                                            "as peft's save_pretrained writes it)"

        assert (await http.post("/v2/repository/models/bob/unload")).json() == {"name": "bob", "unload": True}
        gone = await http.post("/v1/models/lora-tiny:predict", json=v1_body(adapter="bob"))
        assert gone.status_code == 404 and "adapter 'bob' is not loaded" in gone.json()["error"]
        assert (await http.post("/v2/repository/models/bob/unload")).status_code == 404
        models = (await http.get("/openai/v1/models")).json()["data"]
        assert [m["id"] for m in models] == ["lora-tiny", "ada"]
        assert await v1(http) == base and await v1(http, adapter="ada") == ada


def predictor_exit(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "predictors", *args], capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_a_malformed_adapter_stops_the_start_with_exit_2(model_dir: Path, adapter_dirs: dict[str, Path],
                                                          tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "target_modules": ["q_proj"]}')
    args = ["--task", "generate", "--model_dir", str(model_dir), "--http_port", "0"]
    started = predictor_exit([*args, "--lora", f"broken={tmp_path}"])
    assert started.returncode == 2
    assert f"--lora broken: {tmp_path} has no adapter_model.safetensors" in started.stderr
    continuous = predictor_exit([*args, "--engine", "continuous", "--lora", f"ada={adapter_dirs['ada']}"])
    assert continuous.returncode == 2 and "adapters need the static engine" in continuous.stderr
    assert predictor_exit([*args, "--lora", "no-path"]).returncode == 2
