"""One image build per session on the private Docker engine; skipped (with the reason) when the
engine cannot start here, failed instead when ``KZERO_IMAGE_TESTS=required`` (``make image-test``)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def _engine_session() -> Iterator[None]:
    """Test sessions share the engine; the last one out stops it if a test session started it.

    Each session holds a shared lock for its lifetime; one that then gets the lock exclusively is the
    last. An engine started by hand (``scripts/docker.sh start``) or given by DOCKER_HOST is left running.
    """
    home = Path(os.environ.get("KZERO_DOCKER_HOME", Path.home() / ".cache" / "kzero" / "docker"))
    home.mkdir(parents=True, exist_ok=True)
    marker = home / "started-by-tests"
    with (home / "test-sessions.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        if "DOCKER_HOST" not in os.environ and script(DOCKER_SCRIPT, "status", timeout=30).returncode != 0:
            marker.touch()
        try:
            yield
        finally:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another session still uses the engine
            if marker.exists():
                script(DOCKER_SCRIPT, "stop", timeout=120)
                marker.unlink()


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    with _engine_session():
        started = script(DOCKER_SCRIPT, "start", timeout=900)
        if started.returncode != 0:
            lines = started.stderr.strip().splitlines()
            _engine_unavailable(f"no Docker engine: {lines[-1] if lines else 'scripts/docker.sh start failed'}")
        host = started.stdout.strip().splitlines()[-1]
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """A failed test shows the last log lines of every container this session started, by entrypoint."""
    report: pytest.TestReport = yield
    engine = item.config.stash.get(ENGINE_KEY, None)
    if report.failed and engine is not None:
        for container in engine.containers:
            report.sections.append((f"{container.entrypoint} log", container.logs()))
    return report
