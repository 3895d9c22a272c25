"""``apply --wait``: watch the service and its event route until ready, failed, or out of time.

One watch per object (a thread each, feeding one queue); a line is printed whenever an object's
state changes, with the seconds since the start.

A failed state ends the wait only once it has lasted ``failure_window_s`` (as ``kn``'s
``--wait-window``): controllers write some failures that clear on their own. Knative's route
reconciler, for one, marks a new Service ``ConfigurationMissing`` when its informer has not yet seen
the Configuration the Service reconciler just created, and Ready a moment later.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import TextIO

from manifests.cluster import Cluster, ClusterError, Doc, Ref
from manifests.readiness import Readiness, readiness

WATCH_WINDOW_S = 10  # a watch ends this often, so a finished wait's threads stop soon after
FAILURE_WINDOW_S = 10.0
PRIMARY = {("serving.kserve.io", "InferenceService"), ("serving.knative.dev", "Service")}
ROUTE = {("eventing.knative.dev", "Broker"), ("eventing.knative.dev", "Trigger"),
         ("eventing.knative.dev", "KafkaSink"), ("sources.knative.dev", "KafkaSource")}


def _key(api_version: str, kind: str) -> tuple[str, str]:
    return api_version.rpartition("/")[0], kind


def waits_for(doc: Doc) -> bool:
    """The objects ``apply --wait`` waits for: the service and, where the overlay has them, its event route."""
    return _key(doc["apiVersion"], doc["kind"]) in PRIMARY | ROUTE


def _follow(cluster: Cluster, ref: Ref, deadline: float, stop: threading.Event,
            events: queue.Queue[tuple[Ref, Doc | ClusterError]]) -> None:
    try:
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            for obj in cluster.watch(ref, int(min(left, WATCH_WINDOW_S)) + 1):
                events.put((ref, obj))
                if stop.is_set():
                    return
    except ClusterError as e:
        events.put((ref, e))


def wait_ready(cluster: Cluster, refs: list[Ref], timeout_s: float, out: TextIO, *, url_of: Ref | None = None,
               failure_window_s: float = FAILURE_WINDOW_S) -> int:
    """0 when every object is ready (then the URL of ``url_of`` is printed), 1 on a lasting failure or the timeout."""
    start = time.monotonic()
    deadline = start + timeout_s
    events: queue.Queue[tuple[Ref, Doc | ClusterError]] = queue.Queue()
    stop = threading.Event()
    states: dict[Ref, Readiness] = {}
    failed_since: dict[Ref, float] = {}
    for ref in refs:
        threading.Thread(target=_follow, args=(cluster, ref, deadline, stop, events), daemon=True,
                         name=f"watch {ref}").start()
    try:
        while not (len(states) == len(refs) and all(s.ready for s in states.values())):
            if failed_since:
                ref, since = min(failed_since.items(), key=lambda item: item[1])
                if time.monotonic() - since >= failure_window_s:
                    state = states[ref]
                    print(f"{ref.kind} {ref.namespace}/{ref.name} failed: {state.reason}: {state.message}", file=out)
                    return 1
            wake = min([deadline, *(t + failure_window_s for t in failed_since.values())])
            try:
                ref, item = events.get(timeout=max(0.0, wake - time.monotonic()))
            except queue.Empty:
                if time.monotonic() < deadline:
                    continue  # a failure's window is over: the top of the loop reports it
                waiting = [f"{r.kind} {r.name} ({states[r].describe() if r in states else 'no status'})"
                           for r in refs if not (r in states and states[r].ready)]
                print(f"timed out after {timeout_s:g}s waiting for: {'; '.join(waiting)}", file=out)
                return 1
            if isinstance(item, ClusterError):
                raise item
            state = readiness(item)
            if states.get(ref) != state:
                states[ref] = state
                print(f"[{time.monotonic() - start:4.0f}s] {ref.kind} {ref.name}: {state.describe()}", file=out,
                      flush=True)
            if not state.failed:
                failed_since.pop(ref, None)
            else:
                failed_since.setdefault(ref, time.monotonic())
    finally:
        stop.set()
    target = url_of or next((r for r in refs if _key(r.api_version, r.kind) in PRIMARY), None)
    if target is not None and states[target].url:
        print(f"ready: {states[target].url}", file=out)
    else:
        print("ready", file=out)
    return 0
