"""Start ``python -m predictors`` as a child process on free loopback ports (demo, tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

# Ports handed out by this process: a port is only free until its server binds it, so two servers
# started close together (one's gRPC port, the next one's HTTP port) could otherwise be given the
# same one, and a client then reached the wrong server.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now and never handed out before by this process."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


@dataclass
class PredictorProcess:
    """A kzero server child process (``python -m predictors`` by default, or ``module``); ``with``
    starts it and stops it with SIGTERM."""

    args: Sequence[str]
    model_name: str = "model"
    module: str = "predictors"
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    cwd: Path | None = None
    """Where the child runs; ``-m`` imports its packages from there first (a benchmark runs an older
    source tree side by side with this one)."""
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", self.module, "--model_name", self.model_name,
            "--http_port", str(self.http_port), "--grpc_port", str(self.grpc_port), *self.args,
        ]

    def start(self) -> PredictorProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **self.env}
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(self.command(), env=env, cwd=self.cwd, stdout=out,
                                        stderr=subprocess.STDOUT)
        return self

    def wait_live(self, timeout: float = 60.0) -> float:
        return self._wait("/v2/health/live", timeout)

    def wait_ready(self, timeout: float = 600.0) -> float:
        """Seconds from process start until ``/v2/health/ready`` answered 200."""
        return self._wait("/v2/health/ready", timeout)

    def _wait(self, path: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"predictor exited with {self.process.returncode}; see {self.log_path}")
            if http_status(self.url + path, timeout=1.0) == 200:
                return time.monotonic() - self.started_at
            time.sleep(0.05)
        raise TimeoutError(f"{self.url}{path} not 200 within {timeout}s; see {self.log_path}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> PredictorProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
