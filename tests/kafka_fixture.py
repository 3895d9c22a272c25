"""Session-scoped real Kafka broker for tests.

``kafka_bootstrap`` yields a bootstrap address. If ``KAFKA_BOOTSTRAP_SERVERS`` is set it is used
as is (external broker, nothing started). Otherwise ``scripts/kafka.sh start`` starts a private
single-node KRaft broker (Kafka 4.x from Maven Central jars, cached under ~/.cache/kzero/kafka) on
free ports with its own temporary data dir, and ``scripts/kafka.sh stop`` stops it at session end.

Nothing is skipped: without Java 17+ or Maven the fixture fails with the script's error.
Wire it up in tests/conftest.py with::

    from tests.kafka_fixture import kafka_bootstrap  # noqa: F401
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from serving.launch import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = REPO_ROOT / "scripts" / "kafka.sh"

# First start downloads ~45 MB of jars through Maven; later starts take seconds.
START_TIMEOUT_S = 900
STOP_TIMEOUT_S = 120

# Environment of the broker this session started (None when using an external broker or before
# start): lets tests drive scripts/kafka.sh against the same broker.
_managed_env: dict[str, str] | None = None


def managed_kafka_env() -> dict[str, str] | None:
    """Env (KZERO_KAFKA_PORT/…_CONTROLLER_PORT/…_DATA) of the broker the fixture started, if any."""
    return None if _managed_env is None else dict(_managed_env)


def run_kafka_script(
    command: str, env: dict[str, str], timeout: float = START_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/kafka.sh <command>`` for a script-managed broker (``env`` over os.environ)."""
    full_env = {**os.environ, **env}
    full_env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return subprocess.run(
        ["bash", str(KAFKA_SCRIPT), command],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _free_ports(count: int) -> list[int]:
    return [free_port() for _ in range(count)]


@contextmanager
def script_broker(env: dict[str, str]) -> Iterator[str]:
    """A broker started by ``scripts/kafka.sh start`` under ``env`` (ports, data dir, …): yields the
    address it prints and stops it on exit. A failed start fails the test with the script's output."""
    try:
        started = run_kafka_script("start", env)
    except subprocess.TimeoutExpired as exc:
        run_kafka_script("stop", env, timeout=STOP_TIMEOUT_S)
        pytest.fail(f"scripts/kafka.sh start timed out after {exc.timeout}s:\n{exc.stderr!r}", pytrace=False)
    lines = started.stdout.strip().splitlines()
    if started.returncode != 0 or not lines:
        run_kafka_script("stop", env, timeout=STOP_TIMEOUT_S)
        pytest.fail(
            f"scripts/kafka.sh start failed (rc={started.returncode}):\n{started.stderr}{started.stdout}",
            pytrace=False,
        )
    try:
        yield lines[-1]
    finally:
        stopped = run_kafka_script("stop", env, timeout=STOP_TIMEOUT_S)
        if stopped.returncode != 0:
            raise RuntimeError(f"scripts/kafka.sh stop failed (rc={stopped.returncode}):\n{stopped.stderr}")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    global _managed_env
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        yield external
        return

    port, controller_port = _free_ports(2)
    env = {
        "KZERO_KAFKA_PORT": str(port),
        "KZERO_KAFKA_CONTROLLER_PORT": str(controller_port),
        "KZERO_KAFKA_DATA": str(tmp_path_factory.mktemp("kafka")),
    }
    with script_broker(env) as address:
        _managed_env = env
        try:
            yield address
        finally:
            _managed_env = None
