"""Tracing cost: throughput with tracing on (exporting over OTLP/gRPC to a local receiver) vs off.

A real OTLP receiver (tests/otlp_receiver.py: a gRPC TraceService/MetricsService server that
decodes and keeps every span) runs in its own process. Two embedding predictors run side by side,
identical but for the environment: "off" has no OTEL endpoint (spans carry ids and trace context on,
but nothing is recorded or exported: observability.unexported), "on" records spans and exports traces
and metrics to the receiver (metrics every 5 s).

- (a) predictor: 64 closed-loop clients, one text per request, alternating between the two
      servers in rounds (off, on, off, on, ...) so drift on the machine hits both alike;
- (b) Kafka pipeline: an embedding job through ``python -m eventing worker`` (at-least-once,
      --max-batch 64) on fresh topics, against the off predictor with a worker without an endpoint,
      and against the on predictor with a worker that exports too; alternating in rounds. The
      rate is the steady rate of bench/eventing_throughput.py (results between the 10% and 90%
      marks per second of their producer timestamps).

Ratio = on / off (summed over rounds). Target >= 0.95 for both.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import time
from typing import Any

from common import (
    MODEL_NAME,
    ROOT,
    check,
    closed_loop,
    cpu_now,
    cpu_usage,
    machine_info,
    noise_note,
    parse_args,
    percentile,
    predictor,
    report,
    table,
)
from embed_batching import CLIENTS, payload
from eventing_throughput import PREDICTOR_ARGS, kafka_broker, measure, worker_child

TARGET = 0.95
ROUNDS = 3
EVENTS, QUICK_EVENTS = 3000, 600


def _receiver_main(endpoint: Any, counts: Any, stop: Any) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.otlp_receiver import OtlpReceiver

    with OtlpReceiver(http=False) as receiver:
        endpoint.put(receiver.grpc_endpoint)
        while not stop.wait(0.5):
            counts.value = len(receiver.spans())
        counts.value = len(receiver.spans())


class Receiver:
    """The OTLP receiver in a child process; ``spans`` is how many it has collected."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._endpoint = ctx.Queue()
        self._count = ctx.Value("q", 0)
        self._stop = ctx.Event()
        self._process = ctx.Process(target=_receiver_main, args=(self._endpoint, self._count, self._stop),
                                    daemon=True)

    def __enter__(self) -> Receiver:
        self._process.start()
        self.endpoint = self._endpoint.get(timeout=60)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._process.join(10)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def spans(self) -> int:
        return int(self._count.value)

    def env(self, service: str) -> dict[str, str]:
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_METRIC_EXPORT_INTERVAL": "5000",
                "OTEL_SERVICE_NAME": service}


def predictor_rounds(urls: dict[str, str], pids: dict[str, int | None], duration_s: float) -> dict[str, Any]:
    totals: dict[str, dict[str, Any]] = {k: {"requests": 0, "wall_s": 0.0, "latencies": [], "errors": 0,
                                             "other_cores": []} for k in urls}
    for round_ in range(ROUNDS):
        for label, url in urls.items():
            predict = f"{url}/v1/models/{MODEL_NAME}:predict"
            cpu = cpu_now(pids[label])
            result = asyncio.run(closed_loop(predict, payload, clients=CLIENTS, duration_s=duration_s / ROUNDS))
            used = cpu_usage(cpu, result.wall_s, pids[label])
            t = totals[label]
            t["requests"] += result.requests
            t["wall_s"] += result.wall_s
            t["latencies"] += result.latencies_s
            t["errors"] += result.errors
            t["other_cores"].append(used["other_cores"])
            print(f"predictor round {round_ + 1} {label}: {result.requests / result.wall_s:,.1f} req/s",
                  file=sys.stderr)
    return {label: {"requests_per_s": t["requests"] / t["wall_s"], "requests": t["requests"], "errors": t["errors"],
                    "p50_ms": percentile(t["latencies"], 50) * 1e3, "p99_ms": percentile(t["latencies"], 99) * 1e3,
                    "other_cores": max(t["other_cores"])}
            for label, t in totals.items()}


def main() -> None:
    args = parse_args(__doc__)
    duration = args.duration or (6.0 if args.quick else 45.0)
    events = QUICK_EVENTS if args.quick else EVENTS
    machine = machine_info()
    with Receiver() as receiver, kafka_broker() as (bootstrap, broker_pid):
        on_env = receiver.env("kzero-predictor-bench")
        with predictor(PREDICTOR_ARGS, "tracing-off") as (off, _), \
                predictor(PREDICTOR_ARGS, "tracing-on", on_env) as (on, _):
            urls = {"off": off.url, "on": on.url}
            pids = {"off": off.process.pid if off.process else None, "on": on.process.pid if on.process else None}
            warm = {k: asyncio.run(closed_loop(f"{u}/v1/models/{MODEL_NAME}:predict", payload, clients=CLIENTS,
                                               per_client=2)) for k, u in urls.items()}
            if any(w.errors for w in warm.values()):
                raise RuntimeError(f"warm-up failed: {[w.first_error for w in warm.values()]}")
            spans_before = receiver.spans
            served = predictor_rounds(urls, pids, duration)
            time.sleep(6)  # let the on server's last batch of spans arrive
            served_spans = receiver.spans - spans_before

            workers = {"off": worker_child(bootstrap, off.url, ["--max-batch", "64"], "tracing-off"),
                       "on": worker_child(bootstrap, on.url, ["--max-batch", "64"], "tracing-on",
                                          receiver.env("kzero-worker-bench"))}
            process_pids = {"predictor": pids["on"], "broker": broker_pid, "receiver": receiver.pid}
            pipeline: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
            spans_before = receiver.spans
            for round_ in range(ROUNDS):
                for label, start in workers.items():
                    run = measure(f"tracing-{label}-{round_}", bootstrap, events, start,
                                  {**process_pids, "predictor": pids[label]}, timeout_s=300 + events / 10)
                    pipeline[label].append(run)
                    print(f"pipeline round {round_ + 1} {label}: {run['steady_per_s']:,.1f} events/s",
                          file=sys.stderr)
            time.sleep(6)
            pipeline_spans = receiver.spans - spans_before

    predictor_ratio = served["on"]["requests_per_s"] / served["off"]["requests_per_s"]
    steady = {k: sum(r["steady_per_s"] for r in runs) / len(runs) for k, runs in pipeline.items()}
    pipeline_ratio = steady["on"] / steady["off"]
    predictor_table = table(
        ["predictor", "req/s", "p50 ms", "p99 ms", "requests", "errors", "max other cores"],
        [[k, r["requests_per_s"], r["p50_ms"], r["p99_ms"], r["requests"], r["errors"], r["other_cores"]]
         for k, r in served.items()])
    pipeline_table = table(
        ["pipeline", "steady events/s per round", "mean steady events/s", "end-to-end events/s (mean)"],
        [[k, " / ".join(f"{r['steady_per_s']:,.0f}" for r in runs), steady[k],
          sum(r["end_to_end_per_s"] for r in runs) / len(runs)] for k, runs in pipeline.items()])
    ratio_table = table(
        ["ratio (tracing on / off)", "value", "target"],
        [["predictor throughput", f"{predictor_ratio:.3f}x", check(predictor_ratio, TARGET)],
         ["Kafka pipeline steady throughput", f"{pipeline_ratio:.3f}x", check(pipeline_ratio, TARGET)]])
    notes = (f"{CLIENTS} clients, {duration:g}s per server in {ROUNDS} alternating rounds; pipeline {events} events "
             f"per run, {ROUNDS} rounds each; the receiver collected {served_spans:,} spans during the predictor "
             f"runs and {pipeline_spans:,} during the pipeline runs (on side only)")
    other = {f"predictor {k}": r["other_cores"] for k, r in served.items()}
    other |= {r["config"]: r["cores"]["other"] for runs in pipeline.values() for r in runs}
    notes += "\n\n" + noise_note(other, limit=0.6)
    report("Tracing on vs off", machine, [notes, predictor_table, pipeline_table, ratio_table], "tracing",
           {"clients": CLIENTS, "duration_s": duration, "rounds": ROUNDS, "events": events, "predictor": served,
            "pipeline": pipeline, "spans": {"predictor": served_spans, "pipeline": pipeline_spans},
            "ratios": {"predictor": predictor_ratio, "pipeline": pipeline_ratio}, "target": TARGET})


if __name__ == "__main__":
    main()
