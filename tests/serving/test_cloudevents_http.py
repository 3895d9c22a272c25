"""CloudEvents over HTTP on the v1 predict route, as Knative (KafkaSource, Trigger) delivers them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest

from events.errors import INVALID_EVENT, REJECTED
from events.event import ERROR_TYPE, REQUEST_TYPE, RESULT_TYPE, Event
from events.http_binding import BATCH_CONTENT_TYPE, events_from_http
from serving.cloudevents_http import answer
from serving.errors import InvalidInput
from serving.launch import PredictorProcess
from tests.predictors.metrics import batch_histogram

PATH = "/v1/models/minilm:predict"
SOURCE = "/kzero/predictors/minilm"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
STRUCTURED = "application/cloudevents+json"


def knative_binary(id: str, data: Any, type: str = REQUEST_TYPE, **extensions: str) -> dict[str, Any]:
    """What a KafkaSource or Trigger sends in binary mode: no ce-time."""
    headers = {"ce-specversion": "1.0", "ce-id": id, "ce-source": "/apis/v1/namespaces/default/kafkasources/k",
               "ce-type": type, "content-type": "application/json"}
    headers.update({f"ce-{name}": value for name, value in extensions.items()})
    return {"headers": headers, "content": json.dumps(data)}


def structured(id: str, data: Any, type: str = REQUEST_TYPE) -> dict[str, Any]:
    return {"specversion": "1.0", "id": id, "source": "/knative/trigger", "type": type,
            "datacontenttype": "application/json", "data": data}


def reply_events(response: httpx.Response) -> tuple[list[Event], str]:
    assert response.status_code == 200, response.text
    return events_from_http(response.headers, response.content)


# --- the reply logic, with a fake model -------------------------------------------------------------


async def fake_predict(body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    if not all(isinstance(i, str) for i in body["instances"]):
        raise InvalidInput("instances[0]", "expected a string")
    return {"predictions": [len(i) for i in body["instances"]], "traceparent": headers.get("traceparent")}


async def test_binary_event_is_answered_in_binary_mode_with_trace_context_of_the_event() -> None:
    request = knative_binary("e1", {"instances": ["abc"]}, traceparent=TRACEPARENT, jobid="j1")
    headers, body = await answer(fake_predict, request["headers"], request["content"].encode(), source=SOURCE)
    (event,), mode = events_from_http(headers, body)
    assert mode == "binary" and "ce-time" in headers
    assert (event.type, event.source, event.get("requestid"), event.get("jobid")) == (RESULT_TYPE, SOURCE, "e1", "j1")
    assert event.data == {"predictions": [3], "traceparent": TRACEPARENT}


async def test_batch_members_run_concurrently_and_fail_alone() -> None:
    started: list[str] = []
    all_started = asyncio.Event()

    async def gated_predict(body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        started.append(body["instances"][0])
        if len(started) == 2:
            all_started.set()
        await all_started.wait()  # returns only if both good members are in the model at once
        return await fake_predict(body, headers)

    items = [structured("a", {"instances": ["x"]}), {"id": "no-specversion"}, structured("b", {"texts": ["y"]}),
             structured("c", {"instances": ["yy"]})]
    headers, body = await answer(gated_predict, {"Content-Type": BATCH_CONTENT_TYPE}, json.dumps(items).encode(),
                                 source=SOURCE)
    replies, mode = events_from_http(headers, body)
    assert mode == "batch"
    assert [e.type for e in replies] == [RESULT_TYPE, ERROR_TYPE, ERROR_TYPE, RESULT_TYPE]
    assert [e.get("requestid") for e in replies] == ["a", "no-specversion", "b", "c"]
    assert replies[1].get("errorcode") == INVALID_EVENT and replies[1].data["request"] == {"id": "no-specversion"}
    assert replies[2].data["error"]["message"] == "data.instances: must be a non-empty list"
    assert replies[3].data["predictions"] == [2]


async def test_a_batch_over_the_cap_is_refused_whole_before_any_event_runs() -> None:
    called: list[Any] = []

    async def counting_predict(body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        called.append(body)
        return await fake_predict(body, headers)

    items = [structured(str(i), {"instances": ["x"]}) for i in range(3)]
    with pytest.raises(InvalidInput, match=r"^body: 3 events in a batch exceed the limit of 2$"):
        await answer(counting_predict, {"Content-Type": BATCH_CONTENT_TYPE}, json.dumps(items).encode(),
                     source=SOURCE, max_batch_events=2)
    assert called == []
    headers, body = await answer(counting_predict, {"Content-Type": BATCH_CONTENT_TYPE},
                                 json.dumps(items[:2]).encode(), source=SOURCE, max_batch_events=2)
    assert [e.type for e in events_from_http(headers, body)[0]] == [RESULT_TYPE, RESULT_TYPE]


@pytest.mark.parametrize(
    ("headers", "body", "field"),
    [
        ({"content-type": STRUCTURED}, b'{"specversion": "1.0", "id": "1", "source": "s", "type": "' +
         REQUEST_TYPE.encode() + b'", "data": {"instances": ["\\ud800"]}}', "data.instances[0]"),
        (knative_binary("1", {})["headers"], b'{"instances": ["ok", "\xff"]}', "data.instances[1]"),
        ({"content-type": BATCH_CONTENT_TYPE}, b"[" * 100_000 + b"]" * 100_000, "body"),
        ({"content-type": STRUCTURED}, b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "body"),
    ],
)
async def test_text_that_is_not_unicode_or_deep_nesting_is_a_400_naming_the_field(
    headers: dict[str, str], body: bytes, field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await answer(fake_predict, headers, body, source=SOURCE)
    assert caught.value.field == field


# --- a real server, called as Knative calls it --------------------------------------------------------

TEXTS = ["Knative delivers events to the predictor.", "The broker keeps the log.", "Batches share a pass."]


@pytest.fixture
async def client(embed_server: PredictorProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=embed_server.url, timeout=60) as c:
        yield c


async def plain_v1(client: httpx.AsyncClient, texts: list[str]) -> np.ndarray:
    response = await client.post(PATH, json={"instances": texts})
    assert response.status_code == 200, response.text
    assert "ce-type" not in response.headers
    return np.array(response.json()["predictions"])


@pytest.mark.slow
async def test_plain_v1_request_still_goes_through_kserve(client: httpx.AsyncClient) -> None:
    assert (await plain_v1(client, TEXTS[:2])).shape == (2, 384)


@pytest.mark.slow
async def test_binary_event_without_time_gets_a_binary_result(client: httpx.AsyncClient) -> None:
    response = await client.post(PATH, **knative_binary("req-1", {"instances": TEXTS[:2]}))
    (event,), mode = reply_events(response)
    assert mode == "binary" and response.headers["content-type"] == "application/json"
    assert (event.type, event.source, event.get("requestid")) == (RESULT_TYPE, SOURCE, "req-1")
    np.testing.assert_allclose(event.data["predictions"], await plain_v1(client, TEXTS[:2]), atol=1e-5)


@pytest.mark.slow
async def test_binary_extensions_are_copied_into_the_result(client: httpx.AsyncClient) -> None:
    request = knative_binary("req-2", {"instances": TEXTS[:1]}, jobid="job-7", partitionkey="tenant-a",
                             traceparent=TRACEPARENT)
    (event,), _ = reply_events(await client.post(PATH, **request))
    assert {n: event.get(n) for n in ("requestid", "jobid", "partitionkey", "traceparent")} == {
        "requestid": "req-2", "jobid": "job-7", "partitionkey": "tenant-a", "traceparent": TRACEPARENT}


@pytest.mark.slow
async def test_structured_event_without_time_gets_a_structured_result(client: httpx.AsyncClient) -> None:
    response = await client.post(PATH, content=json.dumps(structured("req-3", {"instances": TEXTS[2:]})),
                                 headers={"content-type": STRUCTURED})
    (event,), mode = reply_events(response)
    assert mode == "structured" and response.headers["content-type"].startswith(STRUCTURED)
    assert (event.type, event.get("requestid")) == (RESULT_TYPE, "req-3")
    np.testing.assert_allclose(event.data["predictions"], await plain_v1(client, TEXTS[2:]), atol=1e-5)


@pytest.mark.slow
async def test_batch_is_answered_in_order_and_a_bad_event_fails_alone(
    client: httpx.AsyncClient, embed_server: PredictorProcess
) -> None:
    items = [
        structured("b0", {"instances": [TEXTS[0]]}),
        structured("b1", {"instances": [TEXTS[1]]}, type=RESULT_TYPE),
        structured("b2", {"instances": [TEXTS[1]]}),
        structured("b3", {"instances": [3]}),
        structured("b4", {"instances": [TEXTS[2]]}),
    ]
    reference = await plain_v1(client, TEXTS)
    before = batch_histogram(embed_server.url, "minilm")
    response = await client.post(PATH, content=json.dumps(items), headers={"content-type": BATCH_CONTENT_TYPE})
    after = batch_histogram(embed_server.url, "minilm")
    replies, mode = reply_events(response)
    assert mode == "batch"
    assert [e.type for e in replies] == [RESULT_TYPE, ERROR_TYPE, RESULT_TYPE, ERROR_TYPE, RESULT_TYPE]
    assert [e.get("requestid") for e in replies] == [f"b{i}" for i in range(5)]
    assert replies[1].get("errorcode") == INVALID_EVENT and "type:" in replies[1].data["error"]["message"]
    assert replies[1].data["request"] == items[1]
    assert replies[3].get("errorcode") == REJECTED and "instances[0]" in replies[3].data["error"]["message"]
    for position, text_index in ((0, 0), (2, 1), (4, 2)):
        np.testing.assert_allclose(replies[position].data["predictions"][0], reference[text_index], atol=1e-5)
    # The good events went to the model together and shared a forward pass.
    assert after.sum - before.sum == 3
    assert after.count - before.count < 3


BAD_EVENTS = [
    ("missing ce-id", {k: v for k, v in knative_binary("x", {"instances": ["a"]})["headers"].items() if k != "ce-id"},
     "id: "),
    ("request type expected", knative_binary("x", {"instances": ["a"]}, type=RESULT_TYPE)["headers"], "type: "),
]


@pytest.mark.slow
@pytest.mark.parametrize(("case", "headers", "field"), BAD_EVENTS, ids=[c[0] for c in BAD_EVENTS])
async def test_malformed_event_is_a_400_naming_the_attribute(
    client: httpx.AsyncClient, case: str, headers: dict[str, str], field: str
) -> None:
    response = await client.post(PATH, headers=headers, content=json.dumps({"instances": ["a"]}))
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(field)


@pytest.mark.slow
@pytest.mark.parametrize(("data", "status", "message"), [
    ({"texts": ["a"]}, 400, "data.instances: must be a non-empty list"),
    ({"instances": [3]}, 400, "instances[0]: expected a string"),
])
async def test_bad_data_in_a_single_event_is_a_400(
    client: httpx.AsyncClient, data: dict[str, Any], status: int, message: str
) -> None:
    response = await client.post(PATH, **knative_binary("x", data))
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


@pytest.mark.slow
async def test_event_for_an_unknown_model_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/models/nope:predict", **knative_binary("x", {"instances": ["a"]}))
    assert response.status_code == 404 and "nope" in response.json()["error"]
