from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from eventing.processing import Failure, Processor, Success
from events.errors import REJECTED, UNAVAILABLE, MalformedEvent
from events.event import Event, openai_request_event
from serving.client import PermanentCallError, TransientCallError
from serving.retry import RetryPolicy


class FakePredictor:
    """Echoes instances upper-cased; ``bad`` instances are rejected; fails ``down`` times first."""

    def __init__(self, down: int = 0) -> None:
        self.calls: list[list[Any]] = []
        self.down = down
        self.headers: list[Mapping[str, str] | None] = []
        self.parameters: list[Any] = []

    async def predict(self, model: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        self.calls.append(list(body["instances"]))
        self.parameters.append(body.get("parameters"))
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
    # no recording tracer: the contexts still flow, the call's in its headers and each instance's in
    # its parameters (a request without one gets null: the server starts a trace for it)
    assert predictor.headers == [{"traceparent": FIRST}]
    assert predictor.parameters == [{"traceparents": [FIRST, FIRST, None]}]


def traceparent(span: Any) -> str:
    return f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"


async def test_a_merged_call_has_a_span_in_each_request_trace_and_sends_each_instance_context() -> None:
    provider, exporter = recording()
    predictor = FakePredictor(down=1)
    await Processor(predictor, "m", FAST, 64, tracer=provider.get_tracer("t")).process(
        [{"instances": ["a"], "parameters": {"traceparents": ["forged"]}}, {"instances": ["b", "c"]}],
        [{"traceparent": FIRST}, {"traceparent": SECOND}],
    )
    lead, other = sorted(exporter.get_finished_spans(), key=lambda s: s.context.trace_id)
    assert lead.name == other.name == "predict m"
    assert f"{lead.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert lead.parent.span_id == 0xB7AD6B7169203331
    assert f"{other.context.trace_id:032x}" == "1" * 32 and other.parent.span_id == 0x2222222222222222
    assert [link.context.span_id for link in lead.links] == [0x2222222222222222]
    assert [link.context.span_id for link in other.links] == [lead.context.span_id]
    for span in (lead, other):
        assert span.attributes["kzero.attempt"] == 2 and span.attributes["kzero.batch_size"] == 2
        assert span.attributes["kzero.items"] == 3 and [event.name for event in span.events] == ["retry"]
    # every attempt carries the lead span's context, for the client's span to join that trace; each
    # instance carries its own request's span (the worker's, not one forged in the event data)
    assert predictor.headers == [{"traceparent": traceparent(lead)}] * 2
    assert predictor.parameters == [{"traceparents": [traceparent(lead), traceparent(other), traceparent(other)]}] * 2


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
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, "without per-request headers: one span, in the current trace"
    assert spans[0].status.status_code == StatusCode.ERROR and spans[0].attributes["kzero.attempt"] == 3


async def test_a_failed_merged_call_fails_the_span_in_every_request_trace() -> None:
    provider, exporter = recording()
    await Processor(FakePredictor(), "m", FAST, 64, tracer=provider.get_tracer("t")).process(
        [{"instances": ["a"]}, {"instances": ["bad"]}], [{"traceparent": FIRST}, {"traceparent": SECOND}])
    spans = exporter.get_finished_spans()
    merged = [s for s in spans if s.attributes["kzero.batch_size"] == 2]
    alone = [s for s in spans if s.attributes["kzero.batch_size"] == 1]
    assert len(merged) == 2 and all(s.status.status_code == StatusCode.ERROR for s in merged)
    assert {s.attributes["error.type"] for s in merged} == {"400"}
    # each request is retried alone, in its own trace: only the bad one fails again
    assert sorted((s.context.trace_id, s.status.status_code) for s in alone) == [
        (0x0AF7651916CD43DD8448EB211C80319C, StatusCode.UNSET), (int("1" * 32, 16), StatusCode.ERROR)]


class FakeOpenAIPredictor(FakePredictor):
    """Also serves OpenAI routes: echoes the body, refuses model "gone", is down ``openai_down`` times first."""

    def __init__(self, openai_down: int = 0) -> None:
        super().__init__()
        self.openai_calls: list[tuple[str, dict]] = []
        self.openai_down = openai_down

    async def openai(self, url: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        self.openai_calls.append((url, dict(body)))
        if self.openai_down:
            self.openai_down -= 1
            raise TransientCallError("connection refused", retry_after_s=0)
        if body.get("model") == "gone":
            raise PermanentCallError("predictor answered 404: model 'gone' is not served here", status=404)
        return {"object": "list", "echo": dict(body)}


def _openai_event(url: str, body: dict[str, Any], id: str) -> Event:
    return openai_request_event(url, body, source="/tests", id=id, jobid="b1")


async def test_openai_requests_of_different_models_go_apart_beside_merged_v1_requests() -> None:
    predictor = FakeOpenAIPredictor(openai_down=1)
    processor = Processor(predictor, "m", FAST, 64)
    first = processor.validate(_openai_event("/v1/embeddings", {"model": "m", "input": "x"}, "b1-1"))
    gone = processor.validate(_openai_event("/v1/embeddings", {"model": "gone", "input": "y"}, "b1-2"))
    outcomes = await processor.process([first, {"instances": ["a"]}, gone, {"instances": ["b"]}])
    assert outcomes[0] == Success({"object": "list", "echo": {"model": "m", "input": "x"}}, 2)  # retried once
    assert outcomes[1] == Success({"predictions": ["A"]}, 1) and outcomes[3] == Success({"predictions": ["B"]}, 1)
    assert isinstance(outcomes[2], Failure) and outcomes[2].code == REJECTED and "gone" in outcomes[2].message
    assert predictor.calls == [["a", "b"]]  # the v1 requests still merged into one call
    assert sorted(call[1]["input"] for call in predictor.openai_calls) == ["x", "x", "y"]


async def test_a_v1_body_shaped_like_an_openai_request_stays_v1_and_clients_without_openai_refuse() -> None:
    predictor = FakePredictor()
    processor = Processor(predictor, "m", FAST, 64)
    lookalike = {"instances": ["a"], "url": "/v1/embeddings", "body": {}}
    openai_request = processor.validate(_openai_event("/v1/completions", {"model": "m", "prompt": "p"}, "b1-3"))
    outcomes = await processor.process([lookalike, openai_request])
    assert outcomes[0] == Success({"predictions": ["A"]}, 1)
    assert isinstance(outcomes[1], Failure) and outcomes[1].code == REJECTED and "v1" in outcomes[1].message


def test_openai_request_events_are_checked() -> None:
    processor = Processor(FakePredictor(), "m", FAST, 64)
    with pytest.raises(MalformedEvent, match="openaiurl"):
        processor.validate(_openai_event("/v1/moderations", {"model": "m"}, "b1-4"))
    with pytest.raises(MalformedEvent, match=r"data\.stream"):
        processor.validate(_openai_event("/v1/chat/completions", {"model": "m", "stream": True}, "b1-5"))


class FakeEmbedder(FakePredictor):
    """Serves ``/v1/embeddings`` as the predictor does: a vector and a token count per text (in ``kzero``
    when asked); a text "bad" is a 400 naming its input; down ``openai_down`` times first."""

    def __init__(self, openai_down: int = 0) -> None:
        super().__init__()
        self.openai_calls: list[tuple[dict[str, Any], Mapping[str, str] | None]] = []
        self.openai_down = openai_down

    async def openai(self, url: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        self.openai_calls.append((dict(body), headers))
        if self.openai_down:
            self.openai_down -= 1
            raise TransientCallError("connection refused", retry_after_s=0)
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        if "bad" in texts:
            raise PermanentCallError(f"input[{texts.index('bad')}]: bad text", status=400)
        vectors = [[float(len(t)), float(ord(t[0]))] for t in texts]
        encoded = ([base64.b64encode(struct.pack("<2f", *v)).decode() for v in vectors]
                   if body.get("encoding_format") == "base64" else vectors)
        tokens = [len(t.split()) + 2 for t in texts]
        reply = {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": e}
                                            for i, e in enumerate(encoded)],
                 "model": body["model"], "usage": {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens)}}
        return {**reply, "kzero": {"input_tokens": tokens}} if body.get("kzero", {}).get("input_tokens") else reply


def _embeddings(processor: Processor, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [processor.validate(_openai_event("/v1/embeddings", b, f"b1-{i}")) for i, b in enumerate(bodies)]


@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_merged_embeddings_requests_get_the_bodies_they_would_have_had_alone(encoding: str) -> None:
    bodies = [{"model": "m", "input": text, "encoding_format": encoding}
              for text in (["a b", "c"], "d e f", ["g", "h i", "j"])]
    predictor = FakeEmbedder()
    processor = Processor(predictor, "m", FAST, 64)
    merged = await processor.process(_embeddings(processor, bodies))
    assert [call[0]["input"] for call in predictor.openai_calls] == [["a b", "c", "d e f", "g", "h i", "j"]]
    alone = [(await processor.process(_embeddings(processor, [body])))[0] for body in bodies]
    assert [call[0] for call in predictor.openai_calls[1:]] == bodies, "alone: each body as it is"
    assert merged == alone
    assert all(isinstance(o, Success) and "kzero" not in o.response for o in merged)


async def test_a_bad_embeddings_request_fails_alone() -> None:
    predictor = FakeEmbedder()
    processor = Processor(predictor, "m", FAST, 64)
    outcomes = await processor.process(_embeddings(processor, [{"model": "m", "input": t} for t in ("a", "bad", "c")]))
    assert [type(o) for o in outcomes] == [Success, Failure, Success]
    assert isinstance(outcomes[1], Failure) and outcomes[1].code == REJECTED
    assert outcomes[1].message.startswith("input[0]"), "the bad line's own error, as if it had been sent alone"
    inputs = [call[0]["input"] for call in predictor.openai_calls]
    assert inputs[0] == ["a", "bad", "c"] and sorted(inputs[1:]) == ["a", "bad", "c"]


async def test_chat_requests_go_one_per_call_even_when_equal() -> None:
    predictor = FakeOpenAIPredictor()
    processor = Processor(predictor, "m", FAST, 64)
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    outcomes = await processor.process(
        [processor.validate(_openai_event("/v1/chat/completions", chat, f"b1-{i}")) for i in range(2)])
    assert outcomes == [Success({"object": "list", "echo": chat}, 1)] * 2
    assert predictor.openai_calls == [("/v1/chat/completions", chat)] * 2


async def test_a_merged_embeddings_call_has_a_span_in_each_request_trace_and_sends_each_input_context() -> None:
    provider, exporter = recording()
    predictor = FakeEmbedder(openai_down=1)
    processor = Processor(predictor, "m", FAST, 64, tracer=provider.get_tracer("t"))
    await processor.process(_embeddings(processor, [{"model": "m", "input": "a"}, {"model": "m", "input": ["b", "c"]}]),
                            [{"traceparent": FIRST}, {"traceparent": SECOND}])
    lead, other = sorted(exporter.get_finished_spans(), key=lambda s: s.context.trace_id)
    assert lead.name == other.name == "openai /v1/embeddings"
    assert lead.parent.span_id == 0xB7AD6B7169203331 and other.parent.span_id == 0x2222222222222222
    assert [link.context.span_id for link in lead.links] == [0x2222222222222222]
    assert [link.context.span_id for link in other.links] == [lead.context.span_id]
    for span in (lead, other):
        assert span.attributes["kzero.attempt"] == 2 and span.attributes["kzero.batch_size"] == 2
        assert span.attributes["kzero.items"] == 3 and [event.name for event in span.events] == ["retry"]
    assert [headers for _, headers in predictor.openai_calls] == [{"traceparent": traceparent(lead)}] * 2
    assert [body["kzero"] for body, _ in predictor.openai_calls] == [
        {"input_tokens": True, "traceparents": [traceparent(lead), traceparent(other), traceparent(other)]}] * 2


async def test_exhausted_retries_fail_every_member_of_a_merged_embeddings_call() -> None:
    predictor = FakeEmbedder(openai_down=10)
    processor = Processor(predictor, "m", FAST, 64)
    outcomes = await processor.process(_embeddings(processor, [{"model": "m", "input": t} for t in "ab"]))
    assert outcomes == [Failure(UNAVAILABLE, "connection refused", 3)] * 2
    assert [body["input"] for body, _ in predictor.openai_calls] == [["a", "b"]] * 3


async def test_embeddings_calls_hold_at_most_max_instances_inputs() -> None:
    predictor = FakeEmbedder()
    processor = Processor(predictor, "m", FAST, 3)
    outcomes = await processor.process(
        _embeddings(processor, [{"model": "m", "input": t} for t in (["a", "b"], "c", "d", ["e", "f", "g", "h"])]))
    assert all(isinstance(o, Success) for o in outcomes)
    # a call of one sends its body as it is; the request larger than the limit is not split
    assert sorted((body["input"] for body, _ in predictor.openai_calls), key=str) == [
        ["a", "b", "c"], ["e", "f", "g", "h"], "d"]
