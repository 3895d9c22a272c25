from __future__ import annotations

import copy
from typing import Any

import pytest

from eventing.calls import Call
from eventing.openai_calls import plan, split, traced_body


def embeddings(body: dict[str, Any]) -> dict[str, Any]:
    return {"url": "/v1/embeddings", "body": body}


def reply(texts: list[str], *, kzero: bool = True) -> dict[str, Any]:
    """What the predictor answers for ``texts``: a vector and a token count per text, told apart by text."""
    data = [{"object": "embedding", "index": i, "embedding": [float(len(t)), float(ord(t[0]))]}
            for i, t in enumerate(texts)]
    tokens = [len(t.split()) + 2 for t in texts]
    body = {"object": "list", "data": data, "model": "m",
            "usage": {"prompt_tokens": sum(tokens), "total_tokens": sum(tokens)}}
    return {**body, "kzero": {"input_tokens": tokens}} if kzero else body


def test_bodies_equal_apart_from_input_share_a_call_in_order() -> None:
    requests = [
        embeddings({"model": "m", "input": "a"}),
        embeddings({"model": "m", "input": "b", "encoding_format": "base64"}),
        embeddings({"model": "m", "input": ["c", "d"]}),
        embeddings({"model": "m", "input": "e", "encoding_format": "base64"}),
        embeddings({"model": "m", "input": "f", "user": "u1"}),
        embeddings({"model": "m", "input": "g", "dimensions": 384}),
        embeddings({"model": "other", "input": "h"}),
    ]
    calls = plan(requests, max_inputs=16)
    assert [(c.members, c.counts) for c in calls] == [
        ((0, 2), (1, 2)), ((1, 3), (1, 1)), ((4,), (1,)), ((5,), (1,)), ((6,), (1,))]
    assert calls[0].body == {"model": "m", "input": ["a", "c", "d"], "kzero": {"input_tokens": True}}
    assert calls[1].body == {"model": "m", "input": ["b", "e"], "encoding_format": "base64",
                             "kzero": {"input_tokens": True}}
    assert [c.body for c in calls[2:]] == [r["body"] for r in requests[4:]], "a call of one: its body as it is"


def test_other_routes_token_ids_and_bodies_setting_kzero_go_alone_unchanged() -> None:
    requests = [
        {"url": "/v1/chat/completions", "body": {"model": "m", "messages": [{"role": "user", "content": "a"}]}},
        {"url": "/v1/chat/completions", "body": {"model": "m", "messages": [{"role": "user", "content": "a"}]}},
        {"url": "/v1/completions", "body": {"model": "m", "prompt": "p"}},
        embeddings({"model": "m", "input": [1, 2, 3]}),
        embeddings({"model": "m", "input": [[1, 2], [3]]}),
        embeddings({"model": "m", "input": []}),
        embeddings({"model": "m", "input": "x", "kzero": {"input_tokens": True}}),
        embeddings({"model": "m", "input": "y", "kzero": {"input_tokens": True}}),
        embeddings({"model": "m"}),
    ]
    before = copy.deepcopy(requests)
    calls = plan(requests, max_inputs=16)
    assert [c.members for c in calls] == [(i,) for i in range(len(requests))]
    assert [c.body for c in calls] == [r["body"] for r in requests]
    assert requests == before, "not mutated"


def test_calls_respect_the_input_limit_without_splitting_a_request() -> None:
    requests = [embeddings({"model": "m", "input": ["x"] * n}) for n in (3, 3, 7, 1)]
    assert [c.members for c in plan(requests, max_inputs=5)] == [(0,), (1,), (2,), (3,)]
    assert [c.members for c in plan(requests, max_inputs=6)] == [(0, 1), (2,), (3,)]
    assert [c.members for c in plan(requests, max_inputs=7)] == [(0, 1), (2,), (3,)]
    assert [(c.members, c.counts) for c in plan(requests, max_inputs=14)] == [((0, 1, 2, 3), (3, 3, 7, 1))]


def test_each_input_of_a_merged_call_carries_its_request_trace_context() -> None:
    [call] = plan([embeddings({"model": "m", "input": ["a", "b"]}), embeddings({"model": "m", "input": "c"})], 8)
    carriers = [{"traceparent": "00-1-a-01", "tracestate": "k=v"}, {"traceparent": "00-2-b-01"}]
    assert traced_body(call, carriers)["kzero"] == {
        "input_tokens": True, "traceparents": ["00-1-a-01", "00-1-a-01", "00-2-b-01"],
        "tracestates": ["k=v", "k=v", None]}
    assert traced_body(call, [{}, {}]) == call.body, "no context at all: the body as planned"
    assert call.body["kzero"] == {"input_tokens": True}, "not mutated"
    [alone] = plan([{"url": "/v1/completions", "body": {"model": "m", "prompt": "p"}}], 8)
    assert traced_body(alone, [{"traceparent": "00-1-a-01"}]) == alone.body, "a call of one: its headers carry it"


def test_split_gives_each_member_the_body_it_would_have_had_alone() -> None:
    requests = [embeddings({"model": "m", "input": ["a b", "c"]}), embeddings({"model": "m", "input": "d e f"}),
                embeddings({"model": "m", "input": ["g"]})]
    [call] = plan(requests, 8)
    parts = split(call, reply(["a b", "c", "d e f", "g"]))
    assert parts == [reply(["a b", "c"], kzero=False), reply(["d e f"], kzero=False), reply(["g"], kzero=False)]
    assert [list(part) for part in parts] == [["object", "data", "model", "usage"]] * 3, "the same keys, in order"


def test_split_orders_embeddings_by_index() -> None:
    [call] = plan([embeddings({"model": "m", "input": "a"}), embeddings({"model": "m", "input": "bb"})], 8)
    shuffled = reply(["a", "bb"])
    shuffled["data"].reverse()
    assert split(call, shuffled) == [reply(["a"], kzero=False), reply(["bb"], kzero=False)]


def test_a_call_of_one_passes_its_reply_through() -> None:
    chat = {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}
    [call] = plan([{"url": "/v1/chat/completions", "body": {"model": "m", "messages": []}}], 8)
    assert split(call, chat) == [chat]
    with pytest.raises(ValueError, match="answered list, not an object"):
        split(call, [chat])


@pytest.mark.parametrize(("broken", "message"), [
    (lambda r: {**r, "data": r["data"][:2]}, "2 embeddings for 3 inputs"),
    (lambda r: {**r, "data": None}, "NoneType embeddings for 3 inputs"),
    (lambda r: {**r, "data": [*r["data"][:2], {**r["data"][2], "index": 1}]}, "not indexed 0 to 2"),
    (lambda r: {**r, "data": [*r["data"][:2], {**r["data"][2], "index": "2"}]}, "not indexed 0 to 2"),
    (lambda r: {**r, "data": [*r["data"][:2], "x"]}, "not indexed 0 to 2"),
    (lambda r: {k: v for k, v in r.items() if k != "kzero"}, "kzero.input_tokens for 3 inputs"),
    (lambda r: {**r, "kzero": {"input_tokens": [1, 2]}}, "kzero.input_tokens for 3 inputs"),
    (lambda r: {**r, "kzero": {"input_tokens": [1, 2, "3"]}}, "kzero.input_tokens for 3 inputs"),
    (lambda r: {**r, "kzero": []}, "kzero.input_tokens for 3 inputs"),
])
def test_a_reply_that_does_not_fit_the_call_is_the_predictors_fault(broken: Any, message: str) -> None:
    call = Call({"model": "m", "input": ["a", "b", "c"]}, (0, 1), (2, 1))
    with pytest.raises(ValueError, match=message):
        split(call, broken(reply(["a", "b", "c"])))
