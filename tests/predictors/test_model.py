"""BatchedModel in-process: readiness waits, load shedding, trace context and batch links."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Hashable, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from observability.telemetry import setup_telemetry
from predictors.batcher import BatcherConfig
from predictors.loading import LoadReport
from predictors.metrics import PredictorMetrics
from predictors.model import BatchedModel, InferenceFailed
from serving.errors import InvalidInput, NotReady, Overloaded, Unavailable

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


class UpperEngine:
    """Upper-cases text; ``boom`` breaks the forward pass; can be held at a gate."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def batch_key(self, item: str) -> Hashable:
        return None

    def run_batch(self, items: Sequence[str]) -> list[str]:
        self.gate.wait(10)
        self.batches.append(list(items))
        if "boom" in items:
            raise RuntimeError("CUDA error: device-side assert")
        return [item.upper() for item in items]

    def warmup(self) -> None:
        pass


class UpperTask:
    def __init__(self) -> None:
        self.engine = UpperEngine()


def make_model(loader_gate: threading.Event | None = None, **batcher: Any) -> tuple[BatchedModel, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    task = UpperTask()

    def load() -> tuple[Any, LoadReport]:
        if loader_gate is not None:
            loader_gate.wait(10)
        return task, LoadReport(path=__import__("pathlib").Path("."), phases={"load": 0.01})

    config = BatcherConfig(**({"max_batch_size": 8, "max_batch_latency_ms": 20} | batcher))
    model = BatchedModel(
        "upper", load, config, load_wait_s=0.2, retry_after_s=3,
        tracer=provider.get_tracer("test"), metrics=PredictorMetrics(CollectorRegistry()),
    )
    return model, exporter


async def test_requests_wait_for_the_load_then_succeed() -> None:
    gate = threading.Event()
    model, _ = make_model(gate)
    loading = asyncio.ensure_future(model.load_in_background())
    waiting = asyncio.ensure_future(model.infer_items(["a"], {}))
    await asyncio.sleep(0.05)
    assert not model.ready and not waiting.done()
    gate.set()
    await loading
    assert model.ready and await waiting == ["A"]


async def test_load_deadline_gives_not_ready_with_retry_after() -> None:
    gate = threading.Event()
    model, _ = make_model(gate)
    loading = asyncio.ensure_future(model.load_in_background())
    with pytest.raises(NotReady) as err:
        await model.infer_items(["a"], {})
    assert err.value.retry_after_s == 3 and "still loading" in str(err.value)
    gate.set()
    await loading


async def test_failed_load_is_reported_to_waiting_requests() -> None:
    def broken() -> Any:
        raise OSError("no such model")

    model, _ = make_model()
    model._loader = broken
    with pytest.raises(OSError):
        await model.load_in_background()
    with pytest.raises(Unavailable, match="failed to load: no such model"):
        await model.infer_items(["a"], {})


async def test_a_request_that_does_not_fit_the_queue_is_shed_whole() -> None:
    model, _ = make_model(max_queue=4, max_batch_size=1)
    await model.load_in_background()
    engine = model.task.engine
    engine.gate.clear()
    first = asyncio.ensure_future(model.infer_items(["x"], {}))
    queued = asyncio.ensure_future(model.infer_items(["a", "b", "c"], {}))
    await asyncio.sleep(0.1)
    with pytest.raises(Overloaded, match="3 requests queued"):
        await model.infer_items(["d", "e"], {})
    engine.gate.set()
    assert await first == ["X"] and await queued == ["A", "B", "C"]
    assert ["d"] not in engine.batches


async def test_a_request_larger_than_the_whole_queue_is_the_callers_error_not_a_503() -> None:
    model, _ = make_model(max_queue=4, max_batch_size=1)
    await model.load_in_background()
    with pytest.raises(InvalidInput, match=r"^instances: 5 items can never fit the queue of 4") as caught:
        await model.infer_items(list("abcde"), {})
    assert not isinstance(caught.value, Unavailable)
    assert model.task.engine.batches == []
    assert await model.infer_items(list("abcd"), {}) == list("ABCD")


async def test_engine_failure_fails_only_its_item_and_is_not_blamed_on_the_caller() -> None:
    model, _ = make_model()
    await model.load_in_background()
    ok, bad = await asyncio.gather(model.infer_items(["fine"], {}), model.infer_items(["boom"], {}),
                                   return_exceptions=True)
    assert ok == ["FINE"]
    assert isinstance(bad, InferenceFailed) and not isinstance(bad, InvalidInput)
    assert "device-side assert" in str(bad)


async def test_request_spans_continue_the_callers_trace_and_batch_spans_link_them() -> None:
    model, exporter = make_model()
    await model.load_in_background()
    headers = [{"traceparent": f"00-{TRACE_ID[:-1]}{i}-{PARENT}-01"} for i in range(3)]
    await asyncio.gather(*(model.infer_items([f"t{i}"], h) for i, h in enumerate(headers)))
    spans = exporter.get_finished_spans()
    requests = [s for s in spans if s.name == "infer upper"]
    [batch] = [s for s in spans if s.name == "batch upper"]
    assert sorted(f"{s.context.trace_id:032x}" for s in requests) == [f"{TRACE_ID[:-1]}{i}" for i in range(3)]
    assert all(f"{s.parent.span_id:016x}" == PARENT for s in requests)
    assert batch.parent is None and batch.attributes["kzero.batch_size"] == 3
    assert {link.context.span_id for link in batch.links} == {s.context.span_id for s in requests}


def test_telemetry_exports_only_when_an_endpoint_is_set() -> None:
    assert not setup_telemetry("t", {}, set_global=False).exporting
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    telemetry = setup_telemetry("t", env, set_global=False)
    assert telemetry.exporting
    telemetry.shutdown()
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL='thrift'"):
        setup_telemetry("t", {**env, "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, set_global=False)
