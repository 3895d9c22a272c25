"""One trace across every serving hop, checked on what real server processes export over OTLP.

The session's predictors and transformer export to the session's ``otlp_receiver``; each test sends
its own ``traceparent`` and asserts on the spans that arrive with that trace id.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from kserve import InferenceGRPCClient
from kserve.protocol.infer_type import InferInput, InferRequest

from serving.launch import PredictorProcess, free_port
from tests.otlp_receiver import OtlpReceiver, Span, tree

pytestmark = pytest.mark.slow

GRPC_INFER = "inference.GRPCInferenceService/ModelInfer"
V1_ROUTE = "POST /v1/models/{model_name}:predict"
EMBED_ARGS = ["--task", "embed", "--model_id", "all-minilm-l6-v2", "--max_batch_latency_ms", "5"]


def caller() -> tuple[str, str, str]:
    """A new trace id, the caller's span id and the ``traceparent`` carrying both."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def one(spans: list[Span], **fields: object) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in fields.items())]
    assert len(found) == 1, f"expected one span with {fields}, got {len(found)}\n{tree(spans)}"
    return found[0]


def has(**fields: object) -> Callable[[list[Span]], bool]:
    return lambda spans: any(all(getattr(s, k) == v for k, v in fields.items()) for s in spans)


def all_of(*predicates: Callable[[list[Span]], bool]) -> Callable[[list[Span]], bool]:
    return lambda spans: all(p(spans) for p in predicates)


def batch_linking(receiver: OtlpReceiver, infer: Span) -> Span:
    """The batch span that ran ``infer``'s items (it is exported once its batch ends)."""
    linked = lambda s: s.name.startswith("batch ") and (infer.trace_id, infer.span_id) in s.links  # noqa: E731
    receiver.wait_for(lambda spans: any(linked(s) for s in spans), 30)
    [batch] = [s for s in receiver.spans(service=infer.service) if linked(s)]
    return batch


async def test_a_rag_request_is_one_trace_across_transformer_predictors_and_milvus(
    otlp_receiver: OtlpReceiver, rag_server: PredictorProcess
) -> None:
    trace_id, caller_span, traceparent = caller()
    marker = secrets.token_hex(6)
    question = f"Where do messages that can never be handled go? ({marker})"
    async with httpx.AsyncClient(base_url=rag_server.url, timeout=180) as client:
        response = await client.post("/v1/models/rag:predict", json={"instances": [{"question": question}]},
                                     headers={"traceparent": traceparent})
    assert response.status_code == 200, response.text

    transformer, embedder, generator = "kzero-transformer-rag", "kzero-predictor-minilm", "kzero-predictor-smol"
    spans = otlp_receiver.wait_for(lambda _: all_of(
        has(service=transformer, kind="SERVER"), has(name="rag.usage"), has(service=embedder, name="infer minilm"),
        has(service=generator, name="infer smol"), has(service=embedder, kind="SERVER"),
        has(service=generator, kind="SERVER"),
    )(otlp_receiver.trace(trace_id)), 60)
    spans = otlp_receiver.trace(trace_id)
    shown = tree(spans)

    server = one(spans, service=transformer, kind="SERVER")
    assert server.parent_span_id == caller_span and server.name == V1_ROUTE, shown
    assert server.attributes["http.route"] == "/v1/models/{model_name}:predict"
    assert server.attributes["http.response.status_code"] == 200 and server.status_code != "ERROR"
    steps = {s.name: s for s in spans if s.name.startswith("rag.")}
    assert set(steps) == {f"rag.{n}" for n in ("validate", "embed_query", "retrieve", "prompt", "generate",
                                                "cite", "usage")}, shown
    assert all(s.parent_span_id == server.span_id and s.service == transformer for s in steps.values()), shown
    assert steps["rag.embed_query"].attributes["gen_ai.operation.name"] == "embeddings"
    assert steps["rag.embed_query"].attributes["gen_ai.request.model"] == "minilm"
    assert steps["rag.generate"].attributes["gen_ai.request.model"] == "smol"
    assert steps["rag.generate"].attributes["gen_ai.usage.output_tokens"] > 0

    search = one(spans, name="search kzero")
    assert search.parent_span_id == steps["rag.retrieve"].span_id
    assert search.attributes["db.system"] == "milvus" and search.attributes["db.operation.name"] == "search"
    assert search.attributes["db.collection.name"] == "kzero" and search.attributes["kzero.passages"] == 4

    for step, service, model in (("rag.embed_query", embedder, "minilm"), ("rag.generate", generator, "smol")):
        [call] = [s for s in spans if s.kind == "CLIENT" and s.parent_span_id == steps[step].span_id]
        assert call.name == V1_ROUTE and call.service == transformer, shown
        assert call.attributes["http.request.method"] == "POST"
        assert call.attributes["url.full"].endswith(f"/v1/models/{model}:predict")
        assert call.attributes["server.address"] == "127.0.0.1" and call.attributes["http.response.status_code"] == 200
        predictor = one(spans, service=service, kind="SERVER")
        assert predictor.parent_span_id == call.span_id and predictor.name == V1_ROUTE, shown
        infer = one(spans, service=service, name=f"infer {model}")
        assert infer.parent_span_id == predictor.span_id, shown
        assert infer.attributes["gen_ai.request.model"] == model and infer.attributes["kzero.items"] == 1
        if model == "smol":  # the continuous engine (the default): no batch, the row joins the running one
            assert infer.attributes["gen_ai.request.max_tokens"] == 48
            assert "gen_ai.first_token" in infer.events, shown
            continue
        assert infer.attributes["kzero.batch_size"] >= 1 and infer.attributes["kzero.queue_wait_ms"] >= 0
        batch = batch_linking(otlp_receiver, infer)
        assert batch.attributes["kzero.batch_size"] >= 1 and batch.attributes["gen_ai.request.model"] == model
    generate_infer = one(spans, name="infer smol")
    assert generate_infer.attributes["gen_ai.operation.name"] == "chat"
    assert generate_infer.attributes["gen_ai.usage.input_tokens"] > 50
    assert 0 < generate_infer.attributes["gen_ai.usage.output_tokens"] <= 48
    assert one(spans, name="infer minilm").attributes["gen_ai.operation.name"] == "embeddings"

    texts = [v for s in spans for v in s.attributes.values() if isinstance(v, str)]
    assert not [t for t in texts if marker in t or "never be handled" in t], "a span recorded the question"


async def test_grpc_v2_continues_the_trace_in_the_call_metadata(
    otlp_receiver: OtlpReceiver, embed_server: PredictorProcess
) -> None:
    def request(text: str) -> InferRequest:
        tensor = InferInput("text", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([text], dtype=object), False)
        return InferRequest(model_name="minilm", infer_inputs=[tensor])

    trace_id, caller_span, traceparent = caller()
    bad_trace, _, bad_traceparent = caller()
    client = InferenceGRPCClient(embed_server.grpc_target)
    try:
        await client.infer(request("a gRPC question"), headers=[("traceparent", traceparent)])
        with pytest.raises(Exception, match=r"INVALID_ARGUMENT|inputs\.text"):
            await client.infer(request(""), headers=[("traceparent", bad_traceparent)])
    finally:
        await client.close()

    otlp_receiver.wait_for(lambda _: has(name="infer minilm")(otlp_receiver.trace(trace_id))
                           and has(kind="SERVER")(otlp_receiver.trace(bad_trace)), 30)
    spans = otlp_receiver.trace(trace_id)
    server = one(spans, kind="SERVER")
    assert server.name == GRPC_INFER and server.service == "kzero-predictor-minilm"
    assert server.parent_span_id == caller_span, tree(spans)
    assert server.attributes["rpc.system"] == "grpc" and server.attributes["rpc.method"] == "ModelInfer"
    assert server.attributes["rpc.service"] == "inference.GRPCInferenceService"
    assert server.attributes["rpc.grpc.status_code"] == 0 and server.status_code != "ERROR"
    infer = one(spans, name="infer minilm")
    assert infer.parent_span_id == server.span_id
    batch_linking(otlp_receiver, infer)

    rejected = one(otlp_receiver.trace(bad_trace), kind="SERVER")
    assert rejected.attributes["rpc.grpc.status_code"] == 3  # INVALID_ARGUMENT: the caller's fault
    assert rejected.status_code != "ERROR"


async def test_a_batched_call_continues_each_instance_trace_over_v1_v2_and_grpc(
    otlp_receiver: OtlpReceiver, embed_server: PredictorProcess
) -> None:
    """``parameters.traceparents`` (a JSON list on v1, JSON text in a string parameter on v2 and gRPC):
    each instance gets an ``item`` span in its own trace, linked to the request's ``infer`` span."""
    request_trace, _, request_traceparent = caller()
    parents = {name: caller() for name in ("v1a", "v1c", "v2a", "v2b", "grpc_a", "grpc_b")}
    tp = {name: parent[2] for name, parent in parents.items()}
    async with httpx.AsyncClient(base_url=embed_server.url, timeout=60) as http:
        v1 = await http.post("/v1/models/minilm:predict", headers={"traceparent": request_traceparent}, json={
            "instances": ["one", "two", "three"],
            "parameters": {"traceparents": [tp["v1a"], "00-not-a-traceparent", tp["v1c"]],
                           "tracestates": ["kzero=1", None, None]}})
        wrong = await http.post("/v1/models/minilm:predict", json={
            "instances": ["x", "y"], "parameters": {"traceparents": [tp["v1a"]]}})
        v2 = await http.post("/v2/models/minilm/infer", json={
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["v2 one", "v2 two"]}],
            "parameters": {"traceparents": json.dumps([tp["v2a"], tp["v2b"]])}})
    assert v1.status_code == 200 and len(v1.json()["predictions"]) == 3, v1.text
    assert v2.status_code == 200 and v2.json()["outputs"][0]["shape"] == [2, 384], v2.text
    assert wrong.status_code == 400 and "parameters.traceparents" in wrong.json()["error"], wrong.text
    assert not [r for r in (v1, v2, wrong) for t in tp.values() if t in r.text], "a context was echoed"

    def grpc_request(texts: list[str], traceparents: list[str]) -> InferRequest:
        tensor = InferInput("text", [len(texts)], "BYTES")
        tensor.set_data_from_numpy(np.array(texts, dtype=object), False)
        return InferRequest(model_name="minilm", infer_inputs=[tensor],
                            parameters={"traceparents": json.dumps(traceparents)})

    client = InferenceGRPCClient(embed_server.grpc_target)
    try:
        answer = await client.infer(grpc_request(["g one", "g two"], [tp["grpc_a"], tp["grpc_b"]]))
        with pytest.raises(Exception, match=r"INVALID_ARGUMENT|parameters\.traceparents"):
            await client.infer(grpc_request(["g one", "g two"], [tp["grpc_a"]]))
    finally:
        await client.close()
    assert answer.outputs[0].shape == [2, 384] and not answer.parameters

    for trace_id, _, _ in parents.values():
        otlp_receiver.wait_for(lambda _, t=trace_id: has(name="item minilm")(otlp_receiver.trace(t)), 30)
    items = {name: one(otlp_receiver.trace(trace_id), name="item minilm") for name, (trace_id, _, _) in
             parents.items()}
    for name, item in items.items():
        assert item.parent_span_id == parents[name][1] and item.service == "kzero-predictor-minilm"
        assert item.attributes["gen_ai.operation.name"] == "embeddings" and item.attributes["kzero.batch_size"] >= 1
        [(infer_trace, infer_span)] = item.links
        infer = one(otlp_receiver.trace(infer_trace), span_id=infer_span)
        assert infer.name == "infer minilm" and infer.attributes["kzero.items"] in (2, 3)
        batch = batch_linking(otlp_receiver, infer)
        assert (item.trace_id, item.span_id) in batch.links
        assert item.attributes["kzero.batch_id"] == batch.span_id
    v1_infer = one(otlp_receiver.trace(request_trace), name="infer minilm")
    assert items["v1a"].links == items["v1c"].links == ((request_trace, v1_infer.span_id),)
    assert items["v2a"].links == items["v2b"].links != items["grpc_a"].links == items["grpc_b"].links
    # The malformed entry: its item starts a trace of its own, still linked to the request.
    fresh = otlp_receiver.wait_for(lambda spans: any(
        s.name == "item minilm" and s.links == ((request_trace, v1_infer.span_id),) and s.parent_span_id is None
        for s in spans), 30)
    [orphan] = [s for s in fresh if s.name == "item minilm" and s.parent_span_id is None
                and s.links == ((request_trace, v1_infer.span_id),)]
    assert orphan.trace_id not in {request_trace, *(p[0] for p in parents.values())}


async def test_a_merged_embeddings_call_continues_each_input_trace(
    otlp_receiver: OtlpReceiver, embed_server: PredictorProcess
) -> None:
    """OpenAI embeddings carry the same per-item contexts in kzero's own ``kzero`` body field (the
    worker's merged calls); they are taken out of the reply like the v1 parameters."""
    request_trace, _, request_traceparent = caller()
    parents = [caller(), caller()]
    async with httpx.AsyncClient(base_url=embed_server.url, timeout=60) as http:
        response = await http.post("/openai/v1/embeddings", headers={"traceparent": request_traceparent}, json={
            "model": "minilm", "input": ["first line", "second line"],
            "kzero": {"traceparents": [p[2] for p in parents], "tracestates": ["kzero=1", None]}})
    assert response.status_code == 200 and len(response.json()["data"]) == 2, response.text
    assert list(response.json()) == ["object", "data", "model", "usage"], "no kzero key unless asked"
    otlp_receiver.wait_for(lambda _: has(name="infer minilm")(otlp_receiver.trace(request_trace)), 30)
    infer = one(otlp_receiver.trace(request_trace), name="infer minilm")
    for trace_id, span_id, _ in parents:
        otlp_receiver.wait_for(lambda _, t=trace_id: has(name="item minilm")(otlp_receiver.trace(t)), 30)
        item = one(otlp_receiver.trace(trace_id), name="item minilm")
        assert item.parent_span_id == span_id and item.attributes["gen_ai.operation.name"] == "embeddings"
        assert item.links == ((request_trace, infer.span_id),)


async def test_a_streamed_chat_is_inside_the_transformer_server_span(
    otlp_receiver: OtlpReceiver, rag_server: PredictorProcess
) -> None:
    trace_id, caller_span, traceparent = caller()
    client = openai.AsyncOpenAI(base_url=f"{rag_server.url}/openai/v1", api_key="unused", timeout=180)
    first_chunk_ns = 0
    chunks = 0
    try:
        stream = await client.chat.completions.create(
            model="rag", messages=[{"role": "user", "content": "Which protocol uses protobuf over HTTP/2?"}],
            stream=True, max_tokens=24, extra_headers={"traceparent": traceparent})
        async for _ in stream:
            chunks += 1
            first_chunk_ns = first_chunk_ns or time.time_ns()
    finally:
        await client.close()
    assert chunks > 2

    generator = "kzero-predictor-smol"
    otlp_receiver.wait_for(lambda _: all_of(
        has(service="kzero-transformer-rag", kind="SERVER"), has(service=generator, name="infer smol"),
        has(service=generator, kind="SERVER"), has(name="rag.usage"),
    )(otlp_receiver.trace(trace_id)), 60)
    spans = otlp_receiver.trace(trace_id)
    shown = tree(spans)
    server = one(spans, service="kzero-transformer-rag", kind="SERVER")
    assert server.name == "POST /openai/v1/chat/completions" and server.parent_span_id == caller_span, shown
    call = one(spans, service="kzero-transformer-rag", kind="CLIENT", name="POST /openai/v1/chat/completions")
    assert call.parent_span_id == server.span_id and call.attributes["gen_ai.operation.name"] == "chat"
    predictor = one(spans, service=generator, kind="SERVER")
    assert predictor.parent_span_id == call.span_id, shown
    infer = one(spans, service=generator, name="infer smol")
    assert infer.parent_span_id == predictor.span_id and infer.attributes["gen_ai.operation.name"] == "chat"
    # The stream outlives the handler: the transformer's spans of it (the relay, the steps after
    # generation) end inside its server span, which ends after the first chunk arrived. The
    # predictor's spans are another process's: its server span may end a moment after the last byte
    # it sent reached the transformer, so only their order within the predictor is asserted.
    after = one(spans, name="rag.usage")
    assert server.end_ns >= max(call.end_ns, after.end_ns), shown
    assert server.end_ns > first_chunk_ns
    assert predictor.end_ns >= infer.end_ns


def quiet_predictor(tmp_path: Path, env: dict[str, str]) -> PredictorProcess:
    log = tmp_path / "predictor.log"
    return PredictorProcess(EMBED_ARGS, model_name="minilm", log_path=log, env=env)


def test_an_unreachable_collector_never_slows_requests_or_shutdown(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": dead, "OTEL_EXPORTER_OTLP_INSECURE": "true",
           "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "500"}
    server = quiet_predictor(tmp_path, env).start()
    try:
        server.wait_ready()
        durations = []
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for i in range(20):
                started = time.monotonic()
                response = client.post("/v1/models/minilm:predict", json={"instances": [f"text {i}"]},
                                       headers={"traceparent": caller()[2]})
                durations.append(time.monotonic() - started)
                assert response.status_code == 200, response.text
        assert max(durations) < 1.0, durations
        started = time.monotonic()
        assert server.stop(timeout=30) == 0
        assert time.monotonic() - started < 15
    finally:
        server.stop()


def test_json_logs_carry_the_trace_of_the_request(tmp_path: Path) -> None:
    server = quiet_predictor(tmp_path, {"KZERO_LOG_FORMAT": "json"}).start()
    trace_id, _, traceparent = caller()
    try:
        server.wait_ready()
        response = httpx.post(f"{server.url}/v1/models/minilm:predict", json={"instances": ["logged"]},
                              headers={"traceparent": traceparent}, timeout=30)
        assert response.status_code == 200
    finally:
        assert server.stop() == 0
    assert server.log_path is not None
    lines = [line for line in server.log_path.read_text().splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]
    assert entries and all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert {"kserve", "uvicorn.error"} & {e["logger"] for e in entries}, "KServe/uvicorn logs were not adopted"
    traced = [e for e in entries if e.get("trace_id") == trace_id]
    assert [e for e in traced if e["logger"] == "uvicorn.access" and "/v1/models/minilm" in e["message"]]
    assert all(len(e["span_id"]) == 16 for e in traced)


@pytest.mark.parametrize(("variable", "value"), [("KZERO_LOG_FORMAT", "xml"), ("OTEL_TRACES_SAMPLER", "sometimes")])
def test_a_bad_observability_setting_exits_2_naming_it(tmp_path: Path, variable: str, value: str) -> None:
    server = quiet_predictor(tmp_path, {variable: value}).start()
    assert server.process is not None
    assert server.process.wait(120) == 2
    assert server.log_path is not None and variable in server.log_path.read_text()



async def test_grpc_to_the_transformer_reaches_both_predictors_in_one_trace(
    otlp_receiver: OtlpReceiver, rag_server: PredictorProcess
) -> None:
    tensor = InferInput("question", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(["Which protocol uses protobuf over HTTP/2?"], dtype=object), False)
    trace_id, caller_span, traceparent = caller()
    client = InferenceGRPCClient(rag_server.grpc_target)
    try:
        request = InferRequest(model_name="rag", infer_inputs=[tensor])
        await client.infer(request, headers=[("traceparent", traceparent)])
    finally:
        await client.close()

    transformer = "kzero-transformer-rag"
    otlp_receiver.wait_for(lambda _: all_of(
        has(service=transformer, kind="SERVER"), has(name="search kzero"),
        has(service="kzero-predictor-minilm", name="infer minilm"),
        has(service="kzero-predictor-smol", name="infer smol"),
    )(otlp_receiver.trace(trace_id)), 60)
    spans = otlp_receiver.trace(trace_id)
    shown = tree(spans)
    server = one(spans, service=transformer, kind="SERVER")
    assert server.name == GRPC_INFER and server.parent_span_id == caller_span, shown
    assert server.attributes["rpc.grpc.status_code"] == 0
    retrieve = one(spans, name="rag.retrieve")
    assert retrieve.parent_span_id == server.span_id, shown
    assert one(spans, name="search kzero").parent_span_id == retrieve.span_id
    for service, model in (("kzero-predictor-minilm", "minilm"), ("kzero-predictor-smol", "smol")):
        predictor = one(spans, service=service, kind="SERVER")
        call = one(spans, span_id=predictor.parent_span_id)
        assert call.kind == "CLIENT" and call.service == transformer, shown
        assert one(spans, service=service, name=f"infer {model}").parent_span_id == predictor.span_id


async def test_a_non_streamed_chat_is_one_trace(otlp_receiver: OtlpReceiver, rag_server: PredictorProcess) -> None:
    trace_id, caller_span, traceparent = caller()
    client = openai.AsyncOpenAI(base_url=f"{rag_server.url}/openai/v1", api_key="unused", timeout=180)
    try:
        reply = await client.chat.completions.create(
            model="rag", messages=[{"role": "user", "content": "Which protocol uses protobuf over HTTP/2?"}],
            max_tokens=16, extra_headers={"traceparent": traceparent})
    finally:
        await client.close()
    assert reply.choices[0].message.content

    generator = "kzero-predictor-smol"
    # The predictor's server span ends after its last byte, so it may reach the collector in a later
    # export than its infer span: wait for it too.
    otlp_receiver.wait_for(lambda _: all_of(
        has(service="kzero-transformer-rag", kind="SERVER"), has(service=generator, name="infer smol"),
        has(service=generator, kind="SERVER"), has(name="rag.usage"),
    )(otlp_receiver.trace(trace_id)), 60)
    spans = otlp_receiver.trace(trace_id)
    shown = tree(spans)
    server = one(spans, service="kzero-transformer-rag", kind="SERVER")
    assert server.parent_span_id == caller_span and server.attributes["http.response.status_code"] == 200, shown
    call = one(spans, service="kzero-transformer-rag", kind="CLIENT", name="POST /openai/v1/chat/completions")
    predictor = one(spans, service=generator, kind="SERVER")
    assert call.parent_span_id == server.span_id and predictor.parent_span_id == call.span_id, shown
    infer = one(spans, service=generator, name="infer smol")
    assert infer.parent_span_id == predictor.span_id
    assert infer.attributes["gen_ai.usage.output_tokens"] <= 16


def test_server_metrics_reach_the_collector(otlp_receiver: OtlpReceiver, embed_server: PredictorProcess) -> None:
    response = httpx.post(f"{embed_server.url}/v1/models/minilm:predict", json={"instances": ["counted"]}, timeout=30)
    assert response.status_code == 200
    wanted = {"kzero.requests", "kzero.request.duration", "kzero.batch.size", "kzero.queue.wait",
              "kzero.queue.depth", "kzero.model.ready", "kzero.cold.start"}
    deadline = time.monotonic() + 30
    while not wanted <= otlp_receiver.metric_names("kzero-predictor-minilm") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert wanted <= otlp_receiver.metric_names("kzero-predictor-minilm"), otlp_receiver.metric_names()
    phases = {p.get("phase") for p in otlp_receiver.points("kzero.cold.start", "kzero-predictor-minilm")}
    assert {"import", "load"} <= phases, phases
    routes = {p.get("route") for p in otlp_receiver.points("kzero.requests", "kzero-predictor-minilm")}
    assert "/v1/models/{model_name}:predict" in routes, routes
