"""Playing a controller where none runs: writing status through the status subresource, as KServe,
Knative Eventing or the PV binder would."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from manifests.cluster import Ref

Doc = dict[str, Any]


def condition(kind: str, status: str, reason: str = "", message: str = "") -> Doc:
    found = {"type": kind, "status": status, "lastTransitionTime": "2026-01-01T00:00:00Z"}
    return found | ({"reason": reason} if reason else {}) | ({"message": message} if message else {})


def ready(url: str | None = None) -> Doc:
    return {"conditions": [condition("Ready", "True")], **({"url": url} if url else {})}


class Controller:
    def __init__(self, dynamic: DynamicClient) -> None:
        self.dynamic = dynamic

    def write_status(self, ref: Ref, status: Doc) -> None:
        resource = self.dynamic.resources.get(api_version=ref.api_version, kind=ref.kind)
        live = resource.get(name=ref.name, namespace=ref.namespace).to_dict()
        # observedGeneration as a controller sets it: this status is about the current spec.
        status = {"observedGeneration": live["metadata"].get("generation", 1), **status}
        body = {"apiVersion": ref.api_version, "kind": ref.kind, "metadata": {"name": ref.name}, "status": status}
        resource.status.patch(body=body, namespace=ref.namespace, content_type="application/merge-patch+json")

    def wait_for(self, ref: Ref, timeout_s: float = 60) -> Doc:
        resource = self.dynamic.resources.get(api_version=ref.api_version, kind=ref.kind)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return resource.get(name=ref.name, namespace=ref.namespace).to_dict()
            except NotFoundError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def finalize_once_deleted(self, ref: Ref) -> Callable[[], None]:
        """Remove the object's finalizers once it is being deleted, as kube-controller-manager's
        pvc-protection controller does for a claim no pod uses; returns a join function."""
        resource = self.dynamic.resources.get(api_version=ref.api_version, kind=ref.kind)

        def deleting() -> bool:
            return bool(self.wait_for(ref)["metadata"].get("deletionTimestamp"))

        def finalize() -> None:
            deadline = time.monotonic() + 60
            while not deleting():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{ref} was never deleted")
                time.sleep(0.1)
            resource.patch(body={"metadata": {"name": ref.name, "finalizers": None}}, namespace=ref.namespace,
                           content_type="application/merge-patch+json")

        return self._in_thread(finalize)

    def later(self, steps: list[tuple[Ref, Doc]], last_after: threading.Event | None = None) -> Callable[[], None]:
        """Write each status once its object exists, in a thread (as a controller would, while a command
        waits), the last one only after ``last_after`` is set; returns a function that joins the thread
        and re-raises what went wrong."""
        def play() -> None:
            for i, (ref, status) in enumerate(steps):
                self.wait_for(ref)
                if i == len(steps) - 1 and last_after is not None and not last_after.wait(60):
                    raise TimeoutError("the command never started watching")
                self.write_status(ref, status)

        return self._in_thread(play)

    @staticmethod
    def _in_thread(work: Callable[[], None]) -> Callable[[], None]:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                work()
            except BaseException as e:
                errors.append(e)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def join() -> None:
            thread.join(60)
            if errors:
                raise errors[0]

        return join
