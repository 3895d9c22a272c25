"""A local control plane for the tests: etcd and kube-apiserver in a loopback-only network namespace.

Token authentication (an admin in ``system:masters`` and users without any binding, for RBAC
tests), RBAC authorization, a self-signed serving certificate for 127.0.0.1, and a kubeconfig per
user that reaches the API server through the relay from the host's loopback. Inside the namespace
the ports are fixed (nothing else lives there); the relay's host port is a free one.
"""

from __future__ import annotations

import os
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.cluster import netns

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBE_SCRIPT = REPO_ROOT / "scripts" / "kube.sh"
ETCD_PORT, ETCD_PEER_PORT, API_PORT = 2379, 2380, 6443
START_TIMEOUT_S = 120
ADMIN, LIMITED = "admin", "limited"  # LIMITED has no RoleBinding until a test gives it one


def kube_binaries(progress: Callable[[str], None], *, build: bool = True) -> dict[str, str]:
    """``scripts/kube.sh build`` (or ``paths``): NAME -> path. Its progress lines go to ``progress``."""
    proc = subprocess.Popen(["bash", str(KUBE_SCRIPT), "build" if build else "paths"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None and proc.stdout is not None
    errors = []
    for line in proc.stderr:
        errors.append(line)
        progress(line.rstrip())
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise RuntimeError(f"scripts/kube.sh {'build' if build else 'paths'} failed:\n{''.join(errors[-30:])}")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def self_signed(directory: Path, name: str, *, ips: Sequence[str] = ("127.0.0.1",),
                dns: Sequence[str] = ("localhost",)) -> tuple[Path, Path]:
    """A self-signed certificate (it is its own CA) and key for ``ips``/``dns``: (cert, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    sans = ",".join([*(f"IP:{ip}" for ip in ips), *(f"DNS:{d}" for d in dns)])
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30",
            "-subj", f"/CN={name}", "-addext", f"subjectAltName={sans}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-keyout", str(key), "-out", str(cert))
    return cert, key


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)


@dataclass
class ControlPlane:
    """etcd + kube-apiserver; ``start()`` returns once the API server is ready."""

    binaries: dict[str, str]
    workdir: Path
    namespace: netns.Namespace = field(init=False)
    processes: list[Process] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    host_port: int = 0

    @property
    def ca(self) -> Path:
        return self.workdir / "pki" / "apiserver.crt"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.host_port}"

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              namespace: netns.Namespace | None = None) -> Process:
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        ns = namespace or self.namespace
        proc = subprocess.Popen(ns.command(argv), stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        process = Process(name, proc, log)
        self.processes.append(process)
        return process

    def adopt(self, name: str, proc: subprocess.Popen[str], log: Path) -> None:
        self.processes.append(Process(name, proc, log))  # type: ignore[arg-type]

    def start(self) -> ControlPlane:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True)
        self.namespace = netns.Namespace()
        try:
            self._start(pki)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, pki: Path) -> None:
        cert, key = self_signed(pki, "apiserver", dns=("localhost", "kubernetes", "kubernetes.default.svc"))
        openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
        openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
        self.tokens = {ADMIN: secrets.token_hex(16), LIMITED: secrets.token_hex(16)}
        token_file = pki / "tokens.csv"
        token_file.write_text(f"{self.tokens[ADMIN]},{ADMIN},uid-admin,system:masters\n"
                              f"{self.tokens[LIMITED]},{LIMITED},uid-limited\n")
        etcd = self.spawn("etcd", [self.binaries["etcd"], "--name", "kzero", "--data-dir", str(self.workdir / "etcd"),
                                   "--listen-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
                                   "--advertise-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
                                   "--listen-peer-urls", f"http://127.0.0.1:{ETCD_PEER_PORT}",
                                   "--initial-advertise-peer-urls", f"http://127.0.0.1:{ETCD_PEER_PORT}",
                                   "--initial-cluster", f"kzero=http://127.0.0.1:{ETCD_PEER_PORT}",
                                   "--listen-metrics-urls", "", "--log-level", "warn"])
        apiserver = self.spawn("kube-apiserver", [
            self.binaries["kube-apiserver"],
            "--etcd-servers", f"http://127.0.0.1:{ETCD_PORT}",
            "--bind-address", "127.0.0.1", "--secure-port", str(API_PORT), "--advertise-address", "127.0.0.1",
            # The `kubernetes` Service's endpoints would be this loopback address, which Endpoints refuse.
            "--endpoint-reconciler-type", "none",
            "--service-cluster-ip-range", "10.96.0.0/16",
            "--tls-cert-file", str(cert), "--tls-private-key-file", str(key), "--cert-dir", str(pki),
            "--token-auth-file", str(token_file), "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            # Debian's etcd 3.4 does not send the progress notifications the watch cache needs to serve a
            # watch from "now" (a quiet kind's cache never catches up: 504 "Too large resource version").
            "--watch-cache=false",
            "--profiling=false", "--v", "1",
        ])
        relay, self.host_port = netns.relay(connect_port=API_PORT, connect_netns=self.namespace.path,
                                            log=self.workdir / "logs" / "relay.log")
        self.adopt("relay", relay, self.workdir / "logs" / "relay.log")
        self._wait_ready(etcd, apiserver)
        for user in self.tokens:
            self.write_kubeconfig(user)

    def _wait_ready(self, *processes: Process) -> None:
        context = ssl.create_default_context(cafile=str(self.ca))
        request = urllib.request.Request(f"{self.server}/readyz",
                                         headers={"Authorization": f"Bearer {self.tokens[ADMIN]}"})
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            for p in processes:
                p.check()
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kube-apiserver not ready after {START_TIMEOUT_S}s:\n{processes[-1].tail()}")
            time.sleep(0.5)

    def kubeconfig(self, user: str = ADMIN, *, inside: bool = False) -> Path:
        """The kubeconfig of ``user``: for the host, or (``inside``) for processes in the namespace."""
        return self.workdir / f"kubeconfig-{user}{'-inside' if inside else ''}"

    def write_kubeconfig(self, user: str) -> None:
        for inside, server in ((False, self.server), (True, f"https://127.0.0.1:{API_PORT}")):
            config = {
                "apiVersion": "v1", "kind": "Config", "current-context": "kzero-test",
                "clusters": [{"name": "kzero-test", "cluster": {"server": server,
                                                                "certificate-authority": str(self.ca)}}],
                "users": [{"name": user, "user": {"token": self.tokens[user]}}],
                "contexts": [{"name": "kzero-test", "context": {"cluster": "kzero-test", "user": user}}],
            }
            self.kubeconfig(user, inside=inside).write_text(yaml.safe_dump(config))

    def stop(self) -> None:
        # All at once: each would otherwise wait for the API server the others are shutting down.
        for process in self.processes:
            if process.proc.poll() is None:
                process.proc.terminate()
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        if hasattr(self, "namespace"):
            self.namespace.close()
