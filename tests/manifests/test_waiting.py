"""``apply --wait``'s loop over scripted watches: a failure ends it only once it lasts the window."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from typing import Any

from manifests.cluster import Ref
from manifests.waiting import wait_ready

Doc = dict[str, Any]
KSVC = Ref("serving.knative.dev/v1", "Service", "kn-rag-transformer", "kn-rag")


def _ksvc(status: str, reason: str = "", url: str = "") -> Doc:
    return {"apiVersion": KSVC.api_version, "kind": "Service", "metadata": {"name": KSVC.name, "generation": 1},
            "status": {"observedGeneration": 1, "url": url,
                       "conditions": [{"type": "Ready", "status": status, "reason": reason, "message": reason}]}}


class ScriptedCluster:
    """Each watch of a ref yields its script's objects (after each one's delay), then idles as a real watch does."""

    def __init__(self, scripts: dict[Ref, list[tuple[float, Doc]]]) -> None:
        self.scripts = scripts
        self.done = threading.Event()

    def watch(self, ref: Ref, timeout_s: int) -> Iterator[Doc]:
        for delay, obj in self.scripts.pop(ref, []):
            time.sleep(delay)
            yield obj
        self.done.wait(timeout_s)


def _wait(scripts: dict[Ref, list[tuple[float, Doc]]], timeout_s: float, window_s: float) -> tuple[int, str, float]:
    cluster, out = ScriptedCluster(scripts), io.StringIO()
    start = time.monotonic()
    try:
        rc = wait_ready(cluster, list(scripts), timeout_s, out, failure_window_s=window_s)  # type: ignore[arg-type]
    finally:
        cluster.done.set()
    return rc, out.getvalue(), time.monotonic() - start


def test_a_failure_that_clears_within_the_window_does_not_end_the_wait() -> None:
    rc, out, _ = _wait({KSVC: [(0, _ksvc("Unknown", "OutOfDate")), (0, _ksvc("False", "ConfigurationMissing")),
                               (0.5, _ksvc("True", url="http://kn-rag.example.com"))]}, timeout_s=30, window_s=5)
    assert rc == 0, out
    assert "Service kn-rag-transformer: failed: ConfigurationMissing" in out
    assert out.strip().endswith("ready: http://kn-rag.example.com")


def test_a_failure_that_lasts_the_window_ends_the_wait_then() -> None:
    rc, out, took = _wait({KSVC: [(0, _ksvc("False", "RevisionFailed"))]}, timeout_s=30, window_s=1)
    assert rc == 1
    assert out.strip().endswith("Service kn-rag/kn-rag-transformer failed: RevisionFailed: RevisionFailed")
    assert 1 <= took < 10


def test_a_window_of_zero_ends_the_wait_on_the_first_failure() -> None:
    rc, out, took = _wait({KSVC: [(0, _ksvc("False", "RevisionFailed"))]}, timeout_s=30, window_s=0)
    assert rc == 1 and "failed: RevisionFailed" in out
    assert took < 5


def test_the_timeout_comes_first_when_it_is_shorter_than_the_window() -> None:
    rc, out, took = _wait({KSVC: [(0, _ksvc("False", "RevisionFailed"))]}, timeout_s=1, window_s=30)
    assert rc == 1
    assert "timed out after 1s waiting for: Service kn-rag-transformer (failed: RevisionFailed" in out
    assert took < 10
