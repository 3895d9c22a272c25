"""Per-item trace context: the ``traceparents`` parameter on the wire and the item spans it yields."""

from __future__ import annotations

import asyncio

import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.infer_type import InferRequest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from predictors.model import InferenceFailed
from serving import item_trace
from serving.errors import InvalidInput
from tests.predictors.test_model import make_model

A = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
B = "00-11111111111111111111111111111111-2222222222222222-01"


def span_context(context: object) -> trace.SpanContext:
    return trace.get_current_span(context).get_span_context()  # type: ignore[arg-type]


def test_encode_gives_one_entry_per_instance_and_nothing_without_any_context() -> None:
    assert item_trace.encode([{}, {}]) == {}
    assert item_trace.encode([{"traceparent": A}, {}]) == {"traceparents": [A, None]}
    assert item_trace.encode([{"traceparent": A, "tracestate": "k=v"}, {"traceparent": B}]) == {
        "traceparents": [A, B], "tracestates": ["k=v", None]}
    assert item_trace.as_scalars({"traceparents": [A, None], "max_new_tokens": 4}) == {
        "traceparents": f'["{A}", null]', "max_new_tokens": 4}


def test_split_takes_the_trace_parameters_out_without_touching_the_input() -> None:
    body = {"instances": ["a"], "parameters": {"traceparents": [A], "temperature": 0.5}}
    stripped, traced = item_trace.split_v1(body)
    assert stripped == {"instances": ["a"], "parameters": {"temperature": 0.5}} and traced == {"traceparents": [A]}
    assert body["parameters"] == {"traceparents": [A], "temperature": 0.5}
    plain = {"instances": ["a"], "parameters": {"temperature": 0.5}}
    assert item_trace.split_v1(plain) == (plain, {})
    odd = {"instances": ["a"], "parameters": ["not", "a", "mapping"]}
    assert item_trace.split_v1(odd) == (odd, {}), "left for the task to reject"

    grpc = pb.ModelInferRequest(model_name="m")
    grpc.parameters["traceparents"].CopyFrom(pb.InferParameter(string_param=f'["{A}"]'))
    grpc.parameters["seed"].CopyFrom(pb.InferParameter(int64_param=3))
    request = InferRequest.from_grpc(grpc)
    stripped_request, traced = item_trace.split_v2(request)
    assert stripped_request.parameters == {"seed": 3} and traced == {"traceparents": f'["{A}"]'}
    assert set(request.parameters) == {"traceparents", "seed"}


def test_contexts_one_per_item_from_a_list_or_json_text() -> None:
    assert item_trace.contexts({}, 2) is None
    for value in ([A, B], f'["{A}", "{B}"]'):
        first, second = item_trace.contexts({"traceparents": value, "tracestates": ["k=v", None]}, 2)
        assert span_context(first).span_id == 0xB7AD6B7169203331 and span_context(first).trace_state.get("k") == "v"
        assert span_context(second).trace_id == int("1" * 32, 16)


ZERO_TRACE_ID = "00-" + "0" * 32 + "-" + "1" * 16 + "-01"


@pytest.mark.parametrize("entry", [None, "", "00-zz-b7ad6b7169203331-01", 17, ZERO_TRACE_ID])
def test_a_malformed_entry_only_means_a_new_trace_for_its_item(entry: object) -> None:
    malformed, good = item_trace.contexts({"traceparents": [entry, A]}, 2)
    assert not span_context(malformed).is_valid and span_context(good).is_valid


@pytest.mark.parametrize(("traced", "field", "problem"), [
    ({"traceparents": [A]}, "parameters.traceparents", "1 entries for 2 instances"),
    ({"traceparents": A}, "parameters.traceparents", "expected a list"),
    ({"traceparents": {"0": A}}, "parameters.traceparents", "expected a list, got dict"),
    ({"traceparents": [A, B], "tracestates": ["k=v"]}, "parameters.tracestates", "1 entries for 2 instances"),
])
def test_a_list_of_the_wrong_shape_is_invalid_input_naming_the_parameter(
    traced: dict[str, object], field: str, problem: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        item_trace.contexts(traced, 2)
    assert raised.value.field == field and problem in raised.value.problem
    assert A not in str(raised.value), "the context is never echoed"


async def test_each_item_gets_a_span_in_its_own_trace_and_the_batch_links_them_all() -> None:
    model, exporter = make_model()
    await model.load_in_background()
    parents = item_trace.contexts({"traceparents": [A, "garbage", B]}, 3)
    assert await model.infer_items(["a", "b", "c"], {}, parents=parents) == ["A", "B", "C"]
    spans = exporter.get_finished_spans()
    [request] = [s for s in spans if s.name == "infer upper"]
    [batch] = [s for s in spans if s.name == "batch upper"]
    items = [s for s in spans if s.name == "item upper"]
    by_trace = {s.context.trace_id: s for s in items}
    first, third = by_trace.pop(0x0AF7651916CD43DD8448EB211C80319C), by_trace.pop(int("1" * 32, 16))
    [fresh] = by_trace.values()
    assert first.parent.span_id == 0xB7AD6B7169203331 and third.parent.span_id == 0x2222222222222222
    assert fresh.parent is None and fresh.context.trace_id not in {request.context.trace_id, first.context.trace_id}
    for item in items:
        assert [link.context.span_id for link in item.links] == [request.context.span_id]
        assert item.attributes["kzero.batch_id"] == f"{batch.context.span_id:016x}"
        assert item.attributes["kzero.batch_size"] == 3 and item.attributes["kzero.queue_wait_ms"] >= 0
        assert item.attributes["gen_ai.request.model"] == "upper" and item.end_time <= request.end_time
    assert {link.context.span_id for link in batch.links} == {s.context.span_id for s in [request, *items]}


async def test_an_item_that_fails_fails_its_own_span() -> None:
    model, exporter = make_model()
    await model.load_in_background()
    with pytest.raises(InferenceFailed):
        await model.infer_items(["boom"], {}, parents=item_trace.contexts({"traceparents": [A]}, 1))
    await asyncio.sleep(0)
    [item] = [s for s in exporter.get_finished_spans() if s.name == "item upper"]
    assert item.status.status_code == StatusCode.ERROR and item.attributes["error.type"] == "RuntimeError"
