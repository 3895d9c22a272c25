"""The kzero image on the private Docker engine (scripts/docker.sh, scripts/image.sh), run the way
the cluster runs it: the image's non-root user, a read-only root filesystem, ``/tmp`` and ``/cache``
as volumes, no capabilities, no privilege escalation, and the host network, which on this machine is
loopback only (the engine has no bridge, and with ``--network none`` nothing could reach the broker).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from serving.launch import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_SCRIPT = REPO_ROOT / "scripts" / "docker.sh"
IMAGE_SCRIPT = REPO_ROOT / "scripts" / "image.sh"
LOG_LINES = 40


def script(
    path: Path, command: str, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(path), command], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


@dataclass
class Engine:
    """The engine's client and socket, the image built on it, and what this session made there."""

    cli: str
    host: str
    image: str
    containers: list[Container] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def docker(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.cli, *args], capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, "DOCKER_HOST": self.host}, check=False)

    def volume(self) -> str:
        """A new named volume: it starts as a copy of the image's folder, so /cache stays the user's."""
        name = f"kzero-test-{uuid.uuid4().hex[:8]}"
        self.volumes.append(name)
        return name

    def one_shot(self, module: str, *args: str, mounts: Sequence[str] = (), timeout: float = 600) -> str:
        """Run ``python -m module args`` to completion in a locked-down container; its output."""
        done = self.docker("run", "--rm", *locked_down(mounts), self.image, module, *args, timeout=timeout)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-LOG_LINES:])
            pytest.fail(f"`python -m {module}` in {self.image} exited {done.returncode}; last lines:\n{tail}",
                        pytrace=False)
        return done.stdout

    def cleanup(self) -> None:
        for container in self.containers:
            container.remove()
        if self.volumes:
            self.docker("volume", "rm", "-f", *self.volumes)


def locked_down(mounts: Sequence[str]) -> list[str]:
    """``docker run`` flags for the pods' securityContext (manifests/security.py) and volumes."""
    flags = ["--network", "host", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
             "--security-opt", "no-new-privileges"]
    for mount in mounts:
        flags += ["--volume", mount]
    return flags


@dataclass
class Container:
    """One entrypoint of the image, detached; its failures name it and show its last log lines."""

    engine: Engine
    module: str
    args: Sequence[str]
    mounts: Sequence[str] = ()
    http_port: int = field(default_factory=free_port)
    name: str = field(default_factory=lambda: f"kzero-test-{uuid.uuid4().hex[:8]}")

    @property
    def entrypoint(self) -> str:
        return f"`python -m {self.module}` ({self.name})"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> Container:
        self.engine.containers.append(self)
        done = self.engine.docker("run", "--detach", "--name", self.name, *locked_down(self.mounts),
                                  self.engine.image, self.module, *self.args)
        if done.returncode != 0:
            pytest.fail(f"{self.entrypoint} did not start: {done.stderr.strip()}", pytrace=False)
        return self

    def running(self) -> bool:
        done = self.engine.docker("inspect", "--format", "{{.State.Running}}", self.name)
        return done.stdout.strip() == "true"

    def logs(self, lines: int = LOG_LINES) -> str:
        done = self.engine.docker("logs", "--tail", str(lines), self.name)
        return done.stdout + done.stderr

    def failure(self, what: str) -> str:
        return f"{self.entrypoint} {what}; last log lines:\n{self.logs()}"

    def wait_ready(self, path: str = "/v2/health/ready", timeout: float = 600) -> Container:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + path, timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if not self.running():
                pytest.fail(self.failure("exited before it was ready"), pytrace=False)
            time.sleep(1)
        pytest.fail(self.failure(f"was not ready within {timeout:.0f}s"), pytrace=False)

    def stop(self) -> int:
        """SIGTERM (as the kubelet sends it), then the exit code; the container is kept for its logs."""
        self.engine.docker("stop", "--time", "30", self.name, timeout=60)
        done = self.engine.docker("inspect", "--format", "{{.State.ExitCode}}", self.name)
        return int(done.stdout.strip())

    def remove(self) -> None:
        self.engine.docker("rm", "--force", self.name, timeout=60)
