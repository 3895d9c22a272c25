"""Each container command, exactly as the manifests give it, starts and becomes ready.

What the cluster would provide is replaced by its local equivalent and nothing else: the image's
``python`` by this interpreter, volume mounts by temporary directories, the ports by free ones,
Kafka and the predictor URL by the session's broker and embedding server, and the collector
endpoint is dropped (there is none here).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from manifests.config import DeployConfig
from manifests.render import overlay_documents
from serving.launch import PredictorProcess, free_port, http_status
from tests.manifests.helpers import EXAMPLES, configmap_data, example, expand, find, flag, replace_flag, resolve_env

Doc = dict[str, Any]


def local_process(container: Doc, docs: list[Doc], tmp_path: Path, args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The container's command and environment, with its volume mounts mapped to temporary directories."""
    env = resolve_env(container, configmap_data(docs), {})
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    for mount in container.get("volumeMounts", []):
        local = tmp_path / "volumes" / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        env = {k: str(local) + v[len(mount["mountPath"]):] if v.startswith(mount["mountPath"]) else v
               for k, v in env.items()}
    python, *module = container["command"]
    assert python == "python"
    return [sys.executable, *module, *(expand(a, env) for a in args)], {**os.environ, **env, "HOME": str(tmp_path)}


def _wait_for(check: Any, process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode} before becoming ready:\n{log.read_text()[-4000:]}")
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"not ready within {timeout}s:\n{log.read_text()[-4000:]}")


def _stop(process: subprocess.Popen[bytes], timeout: float) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@pytest.mark.slow
@pytest.mark.parametrize("overlay", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("name", [p.stem for p in EXAMPLES])
def test_predictor_container_becomes_ready_on_its_probe_paths(name: str, overlay: str, tmp_path: Path) -> None:
    config = example(name)
    docs = overlay_documents(config, overlay)
    container = find(docs, "InferenceService")["spec"]["predictor"]["containers"][0]
    port = free_port()
    args = replace_flag(replace_flag(container["args"], "--http_port", str(port)), "--grpc_port", str(free_port()))
    command, env = local_process(container, docs, tmp_path, args)
    log = tmp_path / "predictor.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        probes = {k: container[k]["httpGet"]["path"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
        base = f"http://127.0.0.1:{port}"
        _wait_for(lambda: http_status(base + probes["startupProbe"]) == 200, process, 120, log)
        _wait_for(lambda: http_status(base + probes["readinessProbe"]) == 200, process, 600, log)
        for path in {*probes.values(), f"/v2/models/{config.predictor.model_name}/ready"}:
            assert http_status(base + path) == 200, path
    finally:
        code = _stop(process, 60)
    assert code == 0, log.read_text()[-4000:]


def _private_topics(config: DeployConfig) -> DeployConfig:
    """The same config on topics and a group of its own, so the session's other tests do not interfere."""
    raw = config.model_dump()
    suffix = uuid.uuid4().hex[:8]
    for role in ("requests", "results", "dlq"):
        raw["kafka"][role]["name"] = f"test-{suffix}.{role}"
    raw["worker"]["group"] = f"kzero-worker-{suffix}"
    return DeployConfig.model_validate(raw)


@pytest.mark.slow
def test_worker_container_joins_its_group_and_exits_cleanly_on_sigterm(
    kafka_bootstrap: str, embed_server: PredictorProcess, tmp_path: Path
) -> None:
    config = _private_topics(example("embed"))
    docs = overlay_documents(config, "kafka-worker")
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert flag(container["args"], "--model") == embed_server.model_name
    args = replace_flag(container["args"], "--predictor-url", embed_server.url)
    command, env = local_process(container, docs, tmp_path, args)
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        topic = config.kafka.requests.name
        _wait_for(lambda: f"assigned ['{topic}-" in log.read_text(), process, 180, log)
    finally:
        code = _stop(process, 60)
    assert code == 0, log.read_text()[-4000:]
    assert "worker stopped" in log.read_text()
