"""Eventing throughput: an N-event embedding job through Kafka, next to the transport and compute limits.

One broker (started here on free ports with a temporary data dir, unless ``KAFKA_BOOTSTRAP_SERVERS``
is set), fresh topics with 4 partitions and a fresh consumer group for every configuration. For each,
all N request events (one short text each, partition keys from 16 keys) are produced first; then the
consumer is started and a reader in this process follows the result topic (and the DLQ) until N
distinct request ids arrived.

- (p)  the pipeline: one embedding predictor (64 texts / 5 ms) and ``python -m eventing worker
       --max-batch 64``, at-least-once;
- (pe) the same worker with ``--exactly-once``;
- (c)  the same worker with ``--max-batch 1`` (N/10 events: it is slow);
- (a)  the transport limit: a plain kafka-python consumer in a group that produces, per request, a
       record of a real result's size with the request's headers, flushing and committing every poll;
- (b)  the compute limit: ``EmbedEngine.run_batch`` in this process on the same texts, best of batch
       sizes 16-128, run after the predictor and the broker stopped.
- batch API against plain job: a B-line embeddings job (10,000; 1,000 with ``--quick``), end to end,
  side by side against one predictor and a worker already assigned its partitions: (j) ``python -m
  eventing submit`` then ``results --output`` until every result is in the output file; (o) the
  OpenAI Batch API (``python -m eventing batch-api``) with the ``openai`` client: upload, create, poll
  every 0.2 s until completed, download the output file. ``--batch-only`` runs just this part.

Two rates per configuration: end-to-end = N / (consumer process start -> N-th distinct result read),
which includes the worker's start-up; steady = the results between the 10% and 90% marks divided by
the time between their producer timestamps, which excludes start-up and the reader's lag. Ratios use
the steady rates.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    LOGS,
    MODEL_NAME,
    ROOT,
    check,
    machine_info,
    mean_batch,
    noise_note,
    parse_args,
    predictor,
    report,
    scrape_metrics,
    table,
)
from embed_batching import MODEL_ID, TEXT, raw_limit
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from eventing.jobs import send_events
from eventing.topics import ensure_topics
from eventing.worker import PRODUCER_BATCH_BYTES
from events.event import Event, request_event
from serving.launch import free_port

EVENTS, QUICK_EVENTS = 20_000, 1_000
BATCH_LINES, QUICK_BATCH_LINES = 10_000, 1_000
MAX_BATCH_1_SHARE = 10  # (c) runs N / 10 events
PARTITIONS = 4
KEYS = 16
COMPUTE_BATCH_SIZES = (16, 32, 64, 128)
PREDICTOR_ARGS = ["--task", "embed", "--model_id", MODEL_ID, "--max_batch_size", "64", "--max_batch_latency_ms", "5"]
TARGETS = {"pipeline_over_limit": 0.7, "pipeline_over_max_batch_1": 5.0, "batch_api_over_job": 0.9}
KAFKA_SH = ROOT / "scripts" / "kafka.sh"
SOURCE = "/kzero/bench"


@dataclass(frozen=True)
class Topics:
    requests: str
    results: str
    dlq: str
    group: str

    @classmethod
    def fresh(cls, bootstrap: str, label: str) -> Topics:
        tag = f"bench-{label}-{uuid.uuid4().hex[:8]}"
        topics = cls(f"{tag}.requests", f"{tag}.results", f"{tag}.dlq", f"{tag}.group")
        ensure_topics(bootstrap, [topics.requests, topics.results, topics.dlq], PARTITIONS)
        return topics


@dataclass(frozen=True)
class Child:
    """A consumer process under measurement; ``stuck`` says why it will never finish, or None."""

    pid: int
    alive: Callable[[], bool]
    stop: Callable[[], None]
    stuck: Callable[[], str | None] = lambda: None


class Stuck(RuntimeError):
    """The consumer cannot finish this attempt; a new attempt on fresh topics may."""


@contextmanager
def kafka_broker() -> Iterator[tuple[str, int | None]]:
    """(bootstrap address, broker pid or None when external); a broker started here is stopped and deleted."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        yield external, None
        return
    data = tempfile.mkdtemp(prefix="kzero-bench-kafka-")
    port = free_port()
    controller = next(p for p in iter(free_port, None) if p != port)
    env = {**os.environ, "KZERO_KAFKA_PORT": str(port), "KZERO_KAFKA_CONTROLLER_PORT": str(controller),
           "KZERO_KAFKA_DATA": data}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    try:
        started = subprocess.run(["bash", str(KAFKA_SH), "start"], env=env, capture_output=True, text=True,
                                 timeout=900, check=False)
        if started.returncode != 0 or not started.stdout.strip():
            raise RuntimeError(f"scripts/kafka.sh start failed (rc={started.returncode}):\n{started.stderr}")
        pid = int((Path(data) / "kafka.pid").read_text().strip())
        yield started.stdout.strip().splitlines()[-1], pid
    finally:
        subprocess.run(["bash", str(KAFKA_SH), "stop"], env=env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(data, ignore_errors=True)


def request_events(count: int, job: str) -> Iterator[Event]:
    for i in range(count):
        yield request_event([TEXT.format(i=i)], source=SOURCE, jobid=job, partitionkey=f"key-{i % KEYS}",
                            id=f"{job}-{i}")


class ResultReader:
    """Follows the result and DLQ topics from the beginning; remembers each request id's first result."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                       isolation_level="read_committed", check_crcs=False)
        self._consumer.topics()  # metadata, so partitions_for_topic knows the new topics
        self._results = topics.results
        partitions = [TopicPartition(t, p) for t in (topics.results, topics.dlq)
                      for p in sorted(self._consumer.partitions_for_topic(t) or ())]
        self._consumer.assign(partitions)
        self._consumer.seek_to_beginning(*partitions)
        self.read_at: list[float] = []  # monotonic time each new distinct result was read
        self.produced_ms: list[int] = []  # its producer timestamp
        self.value_bytes = 0
        self.duplicates = 0
        self.failed: set[bytes] = set()
        self._seen: set[bytes] = set()

    def read_until(self, expected: int, deadline: float, child: Child, what: str) -> None:
        progress_at = checked_at = time.monotonic()
        while len(self._seen) + len(self.failed) < expected:
            now = time.monotonic()
            if now > deadline or not child.alive():
                state = "timed out" if child.alive() else "exited"
                raise RuntimeError(f"{what} {state} with {len(self._seen)} of {expected} results and "
                                   f"{len(self.failed)} dead letters read")
            if now - progress_at > 2 and now - checked_at > 1:  # quiet for a while: look for a known stall
                checked_at = now
                if reason := child.stuck():
                    raise Stuck(f"{what}: {reason}")
            for records in self._consumer.poll(timeout_ms=100).values():
                progress_at = time.monotonic()
                for record in records:
                    self._add(record, progress_at)
        if self.failed:
            raise RuntimeError(f"{what}: {len(self.failed)} requests were dead-lettered")

    def _add(self, record: Any, now: float) -> None:
        requestid = next((v for k, v in record.headers or () if k == "ce_requestid"), None)
        if requestid is None:
            raise RuntimeError(f"a record on {record.topic} has no ce_requestid header (not binary mode?)")
        if record.topic != self._results:
            self.failed.add(requestid)
        elif requestid in self._seen:
            self.duplicates += 1
        else:
            self._seen.add(requestid)
            self.read_at.append(now)
            self.produced_ms.append(record.timestamp)
            self.value_bytes += len(record.value or b"")

    def close(self) -> None:
        self._consumer.close()


def cpu_seconds(pids: Mapping[str, int | None]) -> dict[str, float]:
    """Busy CPU-s of the machine, of this process ("reader") and of each named process (0 when not running)."""
    import psutil

    t = psutil.cpu_times()
    out = {"machine": t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0),
           "reader": time.process_time()}
    for name, pid in pids.items():
        try:
            out[name] = sum(psutil.Process(pid).cpu_times()[:2]) if pid else 0.0
        except psutil.NoSuchProcess:
            out[name] = 0.0
    return out


def cores(before: Mapping[str, float], after: Mapping[str, float], wall_s: float) -> dict[str, float]:
    """Average cores used per process over ``wall_s``; "other" is everything not named."""
    used = {name: (after[name] - before.get(name, 0.0)) / wall_s for name in after if name != "machine"}
    used["other"] = max(0.0, (after["machine"] - before["machine"]) / wall_s - sum(used.values()))
    return used


def steady_rate(produced_ms: list[int]) -> float:
    """Results between the 10% and 90% marks per second of producer time between them."""
    stamps = sorted(produced_ms)
    low, high = len(stamps) // 10, len(stamps) * 9 // 10 - 1
    span_s = (stamps[high] - stamps[low]) / 1000 if high > low else 0.0
    return (high - low) / span_s if span_s > 0 else float("nan")


def measure(label: str, bootstrap: str, count: int, start: Callable[[Topics], Child],
            pids: Mapping[str, int | None], timeout_s: float, attempts: int = 3) -> dict[str, Any]:
    """``measure_once``, again on fresh topics when the consumer got stuck."""
    stalls = []
    while True:
        try:
            return {**measure_once(label, bootstrap, count, start, pids, timeout_s), "stalls": stalls}
        except Stuck as err:
            stalls.append(str(err))
            print(f"  {err}; {'retrying on fresh topics' if len(stalls) < attempts else 'giving up'}",
                  file=sys.stderr)
            if len(stalls) >= attempts:
                raise


def measure_once(label: str, bootstrap: str, count: int, start: Callable[[Topics], Child],
                 pids: Mapping[str, int | None], timeout_s: float) -> dict[str, Any]:
    """Produce ``count`` requests to fresh topics, start the consumer, read until every result arrived."""
    topics = Topics.fresh(bootstrap, label)
    produce_started = time.monotonic()
    send_events(bootstrap, topics.requests, request_events(count, label), "binary", progress=False)
    print(f"{label}: produced {count} requests in {time.monotonic() - produce_started:.1f}s", file=sys.stderr)
    reader = ResultReader(bootstrap, topics)
    child: Child | None = None
    try:
        cpu = cpu_seconds(pids)
        started = time.monotonic()
        child = start(topics)
        reader.read_until(count, started + timeout_s, child, label)
        wall = time.monotonic() - started
        used = cores(cpu, cpu_seconds({**pids, "consumer": child.pid}), wall)
    finally:
        if child is not None:
            child.stop()
        reader.close()
    print(f"{label}: {count} results in {wall:.1f}s", file=sys.stderr)
    return {"config": label, "events": count, "topics": topics.__dict__, "wall_s": wall,
            "first_result_s": reader.read_at[0] - started, "end_to_end_per_s": count / wall,
            "steady_per_s": steady_rate(reader.produced_ms), "duplicates": reader.duplicates,
            "mean_result_bytes": reader.value_bytes / count, "cores": used}


def worker_child(bootstrap: str, predictor_url: str, flags: list[str], label: str,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Callable[[Topics], Child]:
    def start(topics: Topics) -> Child:
        command = [sys.executable, "-m", "eventing", "worker", "--bootstrap-servers", bootstrap,
                   "--input-topic", topics.requests, "--output-topic", topics.results, "--dlq-topic", topics.dlq,
                   "--group", topics.group, "--predictor-url", predictor_url, "--model", MODEL_NAME, *flags]
        log_path = LOGS / f"eventing-{label}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                       cwd=cwd)

        def stop() -> None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

        def stuck() -> str | None:
            # kafka-python's group leader can assign before it has the new topic's metadata; it then
            # holds no partitions until the next metadata refresh (metadata_max_age_ms, 5 minutes).
            assigned = [ln for ln in log_path.read_text().splitlines() if "eventing.worker INFO assigned" in ln]
            return "the worker was assigned no partitions" if assigned and assigned[-1].endswith("[]") else None

        return Child(process.pid, lambda: process.poll() is None, stop, stuck)

    return start


def relay(bootstrap: str, topics: Topics, value_size: int) -> None:
    """The transport limit: per request, one result-sized record with its headers; flush and commit per poll."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=topics.group, enable_auto_commit=False,
                             auto_offset_reset="earliest", isolation_level="read_committed")
    consumer.topics()  # metadata first, so the group's assignment cannot miss the topic (see worker_child)
    consumer.subscribe([topics.requests])
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
                             batch_size=PRODUCER_BATCH_BYTES)  # the worker's producer settings
    value = b"0" * value_size
    while True:
        polled = consumer.poll(timeout_ms=100)
        for records in polled.values():
            for r in records:
                requestid = next(v for k, v in r.headers if k == "ce_id")
                producer.send(topics.results, value=value, key=r.key, headers=[*r.headers, ("ce_requestid", requestid)])
        if polled:
            producer.flush()
            consumer.commit()


def relay_child(bootstrap: str, value_size: int) -> Callable[[Topics], Child]:
    def start(topics: Topics) -> Child:
        process = multiprocessing.get_context("spawn").Process(target=relay, args=(bootstrap, topics, value_size),
                                                               daemon=True)
        process.start()
        assert process.pid is not None

        def stop() -> None:
            process.terminate()
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()

        return Child(process.pid, process.is_alive, stop)

    return start


def pipeline(bootstrap: str, broker_pid: int | None, count: int, tree: Path | None = None,
             ) -> tuple[dict[str, dict[str, Any]], float]:
    """(p), (pe) and (c) against one predictor; its seconds to ready. With ``tree`` (``--baseline``): only
    (p), its predictor and worker from that source tree."""
    configs = {"at-least-once": (count, ["--max-batch", "64"]),
               "exactly-once": (count, ["--max-batch", "64", "--exactly-once"]),
               "max-batch-1": (count // MAX_BATCH_1_SHARE, ["--max-batch", "1"])}
    if tree is not None:
        configs = {"at-least-once-baseline": configs["at-least-once"]}
    runs = {}
    with predictor(PREDICTOR_ARGS, "eventing-predictor" + ("-baseline" if tree else ""), cwd=tree) as (proc, ready_s):
        assert proc.process is not None
        pids = {"predictor": proc.process.pid, "broker": broker_pid}
        for label, (events, flags) in configs.items():
            before = scrape_metrics(proc.url)
            run = measure(label, bootstrap, events, worker_child(bootstrap, proc.url, flags, label, cwd=tree), pids,
                          timeout_s=300 + events / 10)
            after = scrape_metrics(proc.url)
            calls = sum(v - before.get(k, 0.0) for k, v in after.items()
                        if k.startswith("kzero_requests_total{") and 'method="POST"' in k)
            runs[label] = {**run, "worker_flags": flags, "predictor_calls": calls,
                           "events_per_call": events / calls if calls else float("nan"),
                           "mean_forward_batch": mean_batch(before, after)}
    return runs, ready_s


def wait_assigned(label: str, child: Child, timeout_s: float = 120) -> None:
    """Until the worker of ``label`` holds partitions, so neither path below pays for its start-up."""
    log_path = LOGS / f"eventing-{label}.log"
    deadline = time.monotonic() + timeout_s
    while True:
        assigned = [ln for ln in log_path.read_text().splitlines() if "eventing.worker INFO assigned" in ln]
        if assigned and not assigned[-1].endswith("[]"):
            return
        if time.monotonic() > deadline or not child.alive():
            raise RuntimeError(f"{label}: the worker holds no partitions; see {log_path}")
        time.sleep(0.2)


def children_cpu() -> float:
    """CPU-s of this process's finished children (the submit and results commands)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def job_path(bootstrap: str, url: str, pids: Mapping[str, int | None], lines: int) -> dict[str, Any]:
    """(j): ``submit`` then ``results --output``, timed from submit's start to the results command's exit."""
    label = "batch-cmp-job"
    topics = Topics.fresh(bootstrap, label)
    source, output = LOGS / "batch-cmp-job.jsonl", LOGS / "batch-cmp-job.out.jsonl"
    source.write_text("".join(f'"{TEXT.format(i=i)}"\n' for i in range(lines)))
    child = worker_child(bootstrap, url, ["--max-batch", "64"], label)(topics)
    try:
        wait_assigned(label, child)
        eventing = [sys.executable, "-m", "eventing"]
        cpu = {**cpu_seconds({**pids, "worker": child.pid}), "clients": children_cpu()}
        started = time.monotonic()
        subprocess.run([*eventing, "submit", "--bootstrap-servers", bootstrap, "--topic", topics.requests,
                        "--job-id", label, "--input", str(source)], check=True, capture_output=True)
        subprocess.run([*eventing, "results", "--bootstrap-servers", bootstrap, "--topic", topics.results,
                        "--dlq-topic", topics.dlq, "--job-id", label, "--expect", str(lines), "--output", str(output),
                        "--timeout", "900"], check=True, capture_output=True)
        wall = time.monotonic() - started
        used = cores(cpu, {**cpu_seconds({**pids, "worker": child.pid}), "clients": children_cpu()}, wall)
    finally:
        child.stop()
    got = sum(1 for _ in output.open())
    if got != lines:
        raise RuntimeError(f"{label}: {got} result lines for {lines} requests")
    return {"config": "job: submit + results", "lines": lines, "wall_s": wall, "lines_per_s": lines / wall,
            "cores": used}


def batch_api_path(bootstrap: str, url: str, pids: Mapping[str, int | None], lines: int) -> dict[str, Any]:
    """(o): upload, create, poll, download with the ``openai`` client against ``python -m eventing batch-api``."""
    import json

    import openai

    from serving.launch import http_status

    label = "batch-cmp-api"
    topics = Topics.fresh(bootstrap, label)
    child = worker_child(bootstrap, url, ["--max-batch", "64"], label)(topics)
    data_dir = Path(tempfile.mkdtemp(prefix="kzero-bench-batch-"))
    port = free_port()
    with (LOGS / "eventing-batch-api.log").open("wb") as log:
        api = subprocess.Popen([sys.executable, "-m", "eventing", "batch-api", "--bootstrap-servers", bootstrap,
                                "--port", str(port), "--data-dir", str(data_dir), "--model",
                                f"{MODEL_NAME}={topics.requests}", "--results-topic", topics.results, "--dlq-topic",
                                topics.dlq, "--group", f"{topics.group}-api"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_assigned(label, child)
        while http_status(f"http://127.0.0.1:{port}/v2/health/live") != 200:
            if api.poll() is not None:
                raise RuntimeError(f"the batch API exited; see {LOGS}/eventing-batch-api.log")
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0, timeout=120)
        content = "".join(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/embeddings",
                                      "body": {"model": MODEL_NAME, "input": TEXT.format(i=i)}}) + "\n"
                          for i in range(lines)).encode()
        named = {**pids, "worker": child.pid, "batch-api": api.pid}
        cpu = {**cpu_seconds(named), "clients": 0.0}
        started = time.monotonic()
        upload = client.files.create(file=("bench.jsonl", content), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            if api.poll() is not None or not child.alive():
                raise RuntimeError(f"{label}: a process exited; see {LOGS}/eventing-batch-api.log")
            time.sleep(0.2)
            batch = client.batches.retrieve(batch.id)
        if batch.status != "completed" or batch.output_file_id is None:
            raise RuntimeError(f"{label}: batch ended {batch.status}: {batch.request_counts}")
        got = len(client.files.content(batch.output_file_id).content.splitlines())
        wall = time.monotonic() - started
        used = cores(cpu, {**cpu_seconds(named), "clients": 0.0}, wall)
    finally:
        api.terminate()
        api.wait(60)
        child.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    if got != lines:
        raise RuntimeError(f"{label}: {got} output lines for {lines} input lines")
    return {"config": "batch API: openai client", "lines": lines, "wall_s": wall, "lines_per_s": lines / wall,
            "cores": used}


def batch_comparison(bootstrap: str, broker_pid: int | None, lines: int) -> tuple[dict[str, Any], str]:
    """Both paths side by side against one predictor; the results and their markdown table."""
    with predictor(PREDICTOR_ARGS, "eventing-batch-predictor") as (proc, _):
        assert proc.process is not None
        pids = {"predictor": proc.process.pid, "broker": broker_pid}
        job = job_path(bootstrap, proc.url, pids, lines)
        api = batch_api_path(bootstrap, proc.url, pids, lines)
    ratio = api["lines_per_s"] / job["lines_per_s"]

    def cpu_cell(r: dict[str, Any]) -> str:
        c = r["cores"]
        return " / ".join(f"{c.get(k, 0.0):.2f}" for k in ("predictor", "worker", "batch-api", "broker",
                                                           "reader", "clients", "other"))

    rendered = table(
        ["path (upload/submit -> all results written)", "lines", "wall s", "lines/s",
         "cores: predictor / worker / batch-api / broker / this process / submit+results / other"],
        [[r["config"], r["lines"], r["wall_s"], r["lines_per_s"], cpu_cell(r)] for r in (job, api)]
        + [["batch API / job", None, None, f"{ratio:.2f}x", check(ratio, TARGETS["batch_api_over_job"])]],
    )
    return {"job": job, "batch_api": api, "ratio": ratio}, rendered


def main() -> None:
    args = parse_args(__doc__, load=False, switches=[("--batch-only", "only the batch API against plain job part")],
                      paths=[("--baseline", "also run the at-least-once pipeline from this source tree")])
    count = QUICK_EVENTS if args.quick else EVENTS
    lines = QUICK_BATCH_LINES if args.quick else BATCH_LINES
    load_at_start = os.getloadavg()[0]
    machine = machine_info()
    if args.batch_only:
        with kafka_broker() as (bootstrap, broker_pid):
            batch, batch_table = batch_comparison(bootstrap, broker_pid, lines)
        notes = (f"{lines} embedding lines per path; {PARTITIONS} partitions; one worker (--max-batch 64) already "
                 f"holding its partitions; 1-minute load average at start {load_at_start:.2f} on "
                 f"{os.cpu_count()} cores\n\n"
                 + noise_note({r["config"]: r["cores"]["other"] for r in (batch["job"], batch["batch_api"])}))
        report("Eventing: the OpenAI Batch API against a plain job", machine, [notes, batch_table],
               "eventing_batch_api", {"lines": lines, "predictor_args": PREDICTOR_ARGS,
                                      "load_average_at_start": load_at_start, **batch,
                                      "target": TARGETS["batch_api_over_job"]})
        return
    with kafka_broker() as (bootstrap, broker_pid):
        batch, batch_table = batch_comparison(bootstrap, broker_pid, lines)
        runs, ready_s = pipeline(bootstrap, broker_pid, count)
        if args.baseline:
            runs["baseline"] = pipeline(bootstrap, broker_pid, count, args.baseline)[0]["at-least-once-baseline"]
        value_size = round(runs["at-least-once"]["mean_result_bytes"])
        runs["transport"] = measure("transport", bootstrap, count, relay_child(bootstrap, value_size),
                                    {"broker": broker_pid}, timeout_s=300 + count / 10)
    print("compute limit: the raw model in this process", file=sys.stderr)
    raw = [r for r in raw_limit(0.3 if args.quick else 2.0) if r["batch_size"] in COMPUTE_BATCH_SIZES]
    compute = max(raw, key=lambda r: r["texts_per_s"])

    alo, eos, single, transport = (runs[k] for k in ("at-least-once", "exactly-once", "max-batch-1", "transport"))
    limit = min(transport["steady_per_s"], compute["texts_per_s"])
    ratios = {"pipeline_over_limit": alo["steady_per_s"] / limit,
              "pipeline_over_max_batch_1": alo["steady_per_s"] / single["steady_per_s"],
              "exactly_once_over_at_least_once": eos["steady_per_s"] / alo["steady_per_s"]}
    if "baseline" in runs:
        ratios["baseline_over_limit"] = runs["baseline"]["steady_per_s"] / limit

    def cpu_cell(r: dict[str, Any]) -> str:
        c = r["cores"]
        return " / ".join(f"{c.get(k, 0.0):.2f}" for k in ("predictor", "consumer", "broker", "reader", "other"))

    main_table = table(
        ["config", "events", "end-to-end events/s", "steady events/s", "first result s", "events / predictor call",
         "mean forward batch", "cores: predictor / consumer / broker / reader / other"],
        [[r["config"], r["events"], r["end_to_end_per_s"], r["steady_per_s"], r["first_result_s"],
          r.get("events_per_call"), r.get("mean_forward_batch"), cpu_cell(r)] for r in runs.values()]
        + [[f"compute (raw model, batch {compute['batch_size']}, {compute['side_by_side']} at a time, "
            f"{compute['encoder']} encoder)", None, None,
            compute["texts_per_s"], None, None, compute["batch_size"], f"other {compute['other_cores']:.2f}"]],
    )
    ratio_table = table(
        ["ratio (steady rates)", "value", "target"],
        [["pipeline / min(transport, compute)", f"{ratios['pipeline_over_limit']:.2f}x",
          check(ratios["pipeline_over_limit"], TARGETS["pipeline_over_limit"])],
         ["pipeline / max-batch 1", f"{ratios['pipeline_over_max_batch_1']:.2f}x",
          check(ratios["pipeline_over_max_batch_1"], TARGETS["pipeline_over_max_batch_1"])],
         ["exactly-once / at-least-once", f"{ratios['exactly_once_over_at_least_once']:.2f}x", "(none)"]]
        + ([["baseline tree's pipeline / min(transport, compute)", f"{ratios['baseline_over_limit']:.2f}x",
             check(ratios["baseline_over_limit"], TARGETS["pipeline_over_limit"])]] if "baseline" in runs else []),
    )
    notes = (f"{count} events per config ({single['events']} for max-batch-1); {PARTITIONS} partitions, {KEYS} keys; "
             f"predictor ready in {ready_s:.1f}s; transport records carry {value_size} bytes (a real result's mean); "
             f"compute limit = best of batch sizes {list(COMPUTE_BATCH_SIZES)}, one batch at a time or two side by "
             f"side, traced or eager encoder; 1-minute load average at start "
             f"{load_at_start:.2f} on {os.cpu_count()} cores"
             + ("" if broker_pid else "; external broker: its CPU counts as other"))
    notes += "".join(f"\n\n{r['config']}: {len(r['stalls'])} attempt(s) stalled and were repeated on fresh topics "
                     f"({r['stalls'][0]})" for r in runs.values() if r["stalls"])
    raw_busy = {f"compute {r['encoder']} batch {r['batch_size']} x{r['side_by_side']}": r["other_cores"] for r in raw}
    notes += "\n\n" + noise_note({r["config"]: r["cores"]["other"] for r in runs.values()} | raw_busy
                                 | {r["config"]: r["cores"]["other"] for r in (batch["job"], batch["batch_api"])})
    report("Eventing: an embedding job through Kafka", machine, [notes, main_table, ratio_table, batch_table],
           "eventing_throughput",
           {"events": count, "predictor_args": PREDICTOR_ARGS, "predictor_ready_s": ready_s,
            "load_average_at_start": load_at_start, "runs": runs, "compute": raw, "compute_best": compute,
            "ratios": ratios, "targets": TARGETS, "batch_lines": lines, "batch_comparison": batch})


if __name__ == "__main__":
    main()
