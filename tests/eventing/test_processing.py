from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from eventing.processing import REJECTED, UNAVAILABLE, Failure, Processor, Success
from predictors.client import PermanentCallError, TransientCallError
from predictors.retry import RetryPolicy


class FakePredictor:
    """Echoes instances upper-cased; ``bad`` instances are rejected; fails ``down`` times first."""

    def __init__(self, down: int = 0) -> None:
        self.calls: list[list[Any]] = []
        self.down = down
        self.headers: list[Mapping[str, str] | None] = []

    async def predict(self, model: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        self.calls.append(list(body["instances"]))
        self.headers.append(headers)
        if self.down:
            self.down -= 1
            raise TransientCallError("connection refused", retry_after_s=0)
        if "bad" in body["instances"]:
            raise PermanentCallError("instances[1]: must not be empty", status=400)
        return {"predictions": [str(i).upper() for i in body["instances"]]}

    async def close(self) -> None:
        pass


FAST = RetryPolicy(max_attempts=3, base_delay_s=0, max_delay_s=0)


FIRST = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
SECOND = "00-11111111111111111111111111111111-2222222222222222-01"


def recording() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_one_call_for_the_batch_and_each_request_gets_its_slice() -> None:
    predictor = FakePredictor()
    outcomes = await Processor(predictor, "m", FAST, 64).process(
        [{"instances": ["a", "b"]}, {"instances": ["c"]}], [{"traceparent": FIRST}, {}]
    )
    assert outcomes == [Success({"predictions": ["A", "B"]}, 1), Success({"predictions": ["C"]}, 1)]
    assert predictor.calls == [["a", "b", "c"]]
    assert predictor.headers == [{"traceparent": FIRST}]  # no recording tracer: the context still flows


async def test_a_merged_call_runs_under_a_span_of_the_first_request_linked_to_the_others() -> None:
    provider, exporter = recording()
    predictor = FakePredictor(down=1)
    await Processor(predictor, "m", FAST, 64, tracer=provider.get_tracer("t")).process(
        [{"instances": ["a"]}, {"instances": ["b"]}], [{"traceparent": FIRST}, {"traceparent": SECOND}]
    )
    [span] = exporter.get_finished_spans()
    assert span.name == "predict m"
    assert f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent.span_id == 0xB7AD6B7169203331
    assert [f"{link.context.trace_id:032x}" for link in span.links] == ["1" * 32]
    assert span.attributes["kzero.attempt"] == 2 and span.attributes["kzero.batch_size"] == 2
    assert [event.name for event in span.events] == ["retry"]
    # every attempt carries the call span's context, for the client's span to join the trace
    assert predictor.headers == [{"traceparent": f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"}] * 2


async def test_a_rejected_request_fails_alone() -> None:
    predictor = FakePredictor()
    outcomes = await Processor(predictor, "m", FAST, 64).process(
        [{"instances": ["a"]}, {"instances": ["bad"]}, {"instances": ["c"]}]
    )
    assert outcomes[0] == Success({"predictions": ["A"]}, 1) and outcomes[2] == Success({"predictions": ["C"]}, 1)
    assert isinstance(outcomes[1], Failure) and outcomes[1].code == REJECTED and "instances[1]" in outcomes[1].message
    assert predictor.calls[0] == ["a", "bad", "c"] and sorted(predictor.calls[1:]) == [["a"], ["bad"], ["c"]]


async def test_transient_failures_are_retried_then_succeed() -> None:
    predictor = FakePredictor(down=2)
    [outcome] = await Processor(predictor, "m", FAST, 64).process([{"instances": ["a"]}])
    assert outcome == Success({"predictions": ["A"]}, 3)


async def test_exhausted_retries_fail_every_request_of_the_call_with_attempts() -> None:
    provider, exporter = recording()
    predictor = FakePredictor(down=10)
    retried: list[int] = []
    outcomes = await Processor(predictor, "m", FAST, 64, tracer=provider.get_tracer("t"),
                               on_retry=lambda attempt, _: retried.append(attempt)).process(
        [{"instances": ["a"]}, {"instances": ["b"]}])
    assert outcomes == [Failure(UNAVAILABLE, "connection refused", 3)] * 2
    assert retried == [1, 2]
    [span] = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR and span.attributes["kzero.attempt"] == 3
