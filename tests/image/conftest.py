"""One image build per session on the private Docker engine; skipped (with the reason) when the
engine cannot start here, failed instead when ``KZERO_IMAGE_TESTS=required`` (``make image-test``)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.image.containers import DOCKER_SCRIPT, IMAGE_SCRIPT, Engine, script

# A first build on a new machine makes the Debian base and downloads torch and the CUDA libraries;
# later builds reuse cached layers.
BUILD_TIMEOUT_S = 3600
ENGINE_KEY = pytest.StashKey[Engine]()


def _engine_unavailable(reason: str) -> None:
    if os.environ.get("KZERO_IMAGE_TESTS") == "required":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    already_running = script(DOCKER_SCRIPT, "status", timeout=30).returncode == 0
    started = script(DOCKER_SCRIPT, "start", timeout=900)
    if started.returncode != 0:
        lines = started.stderr.strip().splitlines()
        _engine_unavailable(f"no Docker engine: {lines[-1] if lines else 'scripts/docker.sh start failed'}")
    host = started.stdout.strip().splitlines()[-1]
    try:
        built = script(IMAGE_SCRIPT, "build", timeout=BUILD_TIMEOUT_S, env={"DOCKER_HOST": host})
        if built.returncode != 0:
            tail = "\n".join(built.stderr.splitlines()[-60:])
            pytest.fail(f"scripts/image.sh build failed (rc={built.returncode}):\n{tail}", pytrace=False)
        cli = script(DOCKER_SCRIPT, "cli", timeout=30).stdout.strip()
        engine = Engine(cli=cli, host=host, image=built.stdout.strip().splitlines()[-1])
        request.config.stash[ENGINE_KEY] = engine
        try:
            yield engine
        finally:
            engine.cleanup()
    finally:
        if not already_running and "DOCKER_HOST" not in os.environ:
            script(DOCKER_SCRIPT, "stop", timeout=120)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """A failed test shows the last log lines of every container this session started, by entrypoint."""
    report: pytest.TestReport = yield
    engine = item.config.stash.get(ENGINE_KEY, None)
    if report.failed and engine is not None:
        for container in engine.containers:
            report.sections.append((f"{container.entrypoint} log", container.logs()))
    return report
