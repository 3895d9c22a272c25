"""Exactly-once with several workers: rebalances, zombies and crashes, as a ``read_committed`` reader sees it.

Three ``--exactly-once`` worker processes share a 6-partition topic while the job is submitted in chunks,
so every scale-out, scale-in, stall and crash lands on a worker with work in flight. The verdict comes
from librdkafka (``read_committed``), not the kafka-python client the worker uses.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventing.jobs import send_events
from events.event import RESULT_TYPE, Event
from serving.launch import PredictorProcess
from tests.eventing.helpers import TopicReader, Topics, WorkerProcess, job, read_committed

pytestmark = pytest.mark.slow

EVENTS = 1500
CHUNK = 150
# The broker's group.min.session.timeout.ms: a stopped worker is out of the group this long after its last heartbeat.
SESSION_TIMEOUT_MS = 6000


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    return Topics.fresh(kafka_bootstrap, partitions=6)


@pytest.fixture
def workers(kafka_bootstrap: str, topics: Topics, embed_server: PredictorProcess, tmp_path: Path) -> Iterator:
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        extra = ["--exactly-once", "--session-timeout-ms", str(SESSION_TIMEOUT_MS),
                 "--max-batch", "16", "--max-in-flight", "64"]
        worker = WorkerProcess(kafka_bootstrap, topics, embed_server.url,
                               tmp_path / f"worker-{len(started)}.log", extra).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.resume()  # a stopped process ignores SIGKILL until continued
        worker.stop()


class Job:
    """Submits the job chunk by chunk and follows its results."""

    def __init__(self, bootstrap: str, topics: Topics, job_id: str) -> None:
        self._bootstrap, self._topics = bootstrap, topics
        self.events = job(job_id, EVENTS, keys=60)  # 60 keys: every partition gets work
        self._next = 0
        self.results = TopicReader(bootstrap, topics.results)

    def submit(self, chunks: int = 1) -> None:
        batch = self.events[self._next:self._next + chunks * CHUNK]
        send_events(self._bootstrap, self._topics.requests, batch, "binary", progress=False)
        self._next += len(batch)

    def answered(self) -> int:
        return len(self.results.request_ids())

    def wait_answered(self, at_least: int, timeout_s: float = 120) -> None:
        self.results.wait_for(lambda r: len(r.request_ids()) >= at_least, timeout_s)

    def finish(self) -> None:
        self.submit(chunks=EVENTS // CHUNK)
        self.wait_answered(EVENTS, timeout_s=240)
        self.results.close()

    def verdict(self) -> dict[str, int]:
        """Duplicates and missing results as librdkafka's ``read_committed`` consumer counts them."""
        events = read_committed(self._bootstrap, self._topics.results)
        dead_lettered = read_committed(self._bootstrap, self._topics.dlq)
        counts = Counter(e.get("requestid") for e in events)
        expected = {e.id for e in self.events}
        return {"results": len(events), "duplicates": sum(counts.values()) - len(counts),
                "missing": len(expected - set(counts)), "unexpected": len(set(counts) - expected),
                "not_results": sum(1 for e in events if not _is_result(e)), "dead_lettered": len(dead_lettered)}


def _is_result(event: Event) -> bool:
    return event.type == RESULT_TYPE and len(event.data["predictions"]) == 1


def _check(verdict: dict[str, int]) -> None:
    print(json.dumps(verdict))
    assert verdict["missing"] == 0, verdict
    assert verdict["duplicates"] == 0, verdict
    assert verdict["unexpected"] == verdict["not_results"] == verdict["dead_lettered"] == 0, verdict


def test_scaling_out_and_in_mid_job(kafka_bootstrap: str, topics: Topics, workers) -> None:
    work = Job(kafka_bootstrap, topics, "eos-scale")
    work.submit(2)
    first = workers()
    work.wait_answered(100)
    work.submit()
    workers()  # KEDA scales out: each join is a rebalance with batches in flight
    work.wait_answered(work.answered() + 100)
    work.submit()
    workers()
    work.wait_answered(work.answered() + 100)
    work.submit()
    assert first.terminate() == 0  # and in again
    work.finish()
    _check(work.verdict())


def test_zombies_and_a_crash_mid_job(kafka_bootstrap: str, topics: Topics, workers) -> None:
    work = Job(kafka_bootstrap, topics, "eos-faults")
    crew = [workers() for _ in range(3)]
    work.submit(2)
    work.wait_answered(100)
    for victim in (crew[0], crew[1], crew[0]):
        work.submit()
        work.wait_answered(work.answered() + 20)
        victim.pause()  # mid-job: it stops heartbeating, the others take its partitions over
        work.submit()
        time.sleep(SESSION_TIMEOUT_MS / 1000 + 3)
        victim.resume()  # a zombie: it still believes it owns them and carries on
        work.wait_answered(work.answered() + 50)
    work.submit()
    crew[2].kill()
    crew[2] = workers()
    work.finish()
    for worker in crew:
        assert worker.terminate() == 0
    _check(work.verdict())
