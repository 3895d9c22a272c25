from __future__ import annotations

import pytest

from eventing.calls import plan, split, traced_body


def test_requests_with_equal_parameters_share_a_call_in_order() -> None:
    requests = [
        {"instances": ["a", "b"]},
        {"instances": ["c"], "parameters": {"max_new_tokens": 4}},
        {"instances": ["d"], "parameters": {}},
        {"instances": ["e"], "parameters": {"max_new_tokens": 4}},
    ]
    calls = plan(requests, max_instances=10)
    assert [(c.members, c.counts) for c in calls] == [((0, 2), (2, 1)), ((1, 3), (1, 1))]
    assert calls[0].body == {"instances": ["a", "b", "d"]}
    assert calls[1].body == {"instances": ["c", "e"], "parameters": {"max_new_tokens": 4}}


def test_calls_respect_the_instance_limit_without_splitting_a_request() -> None:
    requests = [{"instances": ["x"] * 3}, {"instances": ["y"] * 3}, {"instances": ["z"] * 7}]
    assert [c.members for c in plan(requests, max_instances=5)] == [(0,), (1,), (2,)]
    assert [c.members for c in plan(requests, max_instances=6)] == [(0, 1), (2,)]


def test_split_gives_each_member_its_predictions() -> None:
    [call] = plan([{"instances": ["a", "b"]}, {"instances": ["c"]}], max_instances=8)
    assert split(call, {"predictions": [1, 2, 3]}) == [{"predictions": [1, 2]}, {"predictions": [3]}]
    with pytest.raises(ValueError, match="2 predictions for 3 instances"):
        split(call, {"predictions": [1, 2]})


def test_each_instance_carries_its_request_trace_context_and_event_data_cannot_set_it() -> None:
    requests = [{"instances": ["a", "b"], "parameters": {"traceparents": ["x", "y"], "max_new_tokens": 4}},
                {"instances": ["c"], "parameters": {"max_new_tokens": 4}}]
    [call] = plan(requests, max_instances=8)
    assert call.body == {"instances": ["a", "b", "c"], "parameters": {"max_new_tokens": 4}}
    carriers = [{"traceparent": "00-1-a-01", "tracestate": "k=v"}, {"traceparent": "00-2-b-01"}]
    assert traced_body(call, carriers)["parameters"] == {
        "max_new_tokens": 4, "traceparents": ["00-1-a-01", "00-1-a-01", "00-2-b-01"],
        "tracestates": ["k=v", "k=v", None]}
    assert traced_body(call, [{}, {}]) == call.body, "no context at all: the body as planned"
    assert call.body == {"instances": ["a", "b", "c"], "parameters": {"max_new_tokens": 4}}, "not mutated"
