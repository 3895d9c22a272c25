"""Fixtures for the manifest tests: a kustomize to build the overlays with.

Found in this order: ``kubectl kustomize`` (kubectl embeds kustomize), a ``kustomize`` on PATH, one
installed earlier into ``~/.cache/kzero/bin``, else installed there now with
``go install sigs.k8s.io/kustomize/kustomize/v5@<KUSTOMIZE_VERSION>`` (about a minute; Go fetches it
through the Go module proxy). With neither kubectl, kustomize nor Go the tests fail and say so:
a fresh CI machine must not skip the overlay builds silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

KUSTOMIZE_VERSION = "v5.5.0"
CACHE_BIN = Path.home() / ".cache" / "kzero" / "bin"  # next to the Kafka jars (tests/kafka_fixture.py)


def _go_install() -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.fail("building the kustomize overlays needs kubectl, kustomize or Go (to `go install` kustomize "
                    f"{KUSTOMIZE_VERSION} into {CACHE_BIN}); none is on PATH", pytrace=False)
    CACHE_BIN.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([go, "install", f"sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"],
                          env={**os.environ, "GOBIN": str(CACHE_BIN)}, capture_output=True, text=True,
                          timeout=900, check=False)
    if done.returncode != 0:
        pytest.fail(f"go install kustomize {KUSTOMIZE_VERSION} failed:\n{done.stderr}", pytrace=False)
    return CACHE_BIN / "kustomize"


@pytest.fixture(scope="session")
def kustomize() -> list[str]:
    """The command that builds a kustomization directory given as its last argument."""
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if found := shutil.which("kustomize"):
        return [found, "build"]
    cached = CACHE_BIN / "kustomize"
    return [str(cached if cached.exists() else _go_install()), "build"]
