"""The RAG transformer as a real process between a real generation predictor and Milvus Lite."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import openai
import pytest
from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest

from events.http_binding import events_from_http
from serving.launch import PredictorProcess, free_port
from tests.transformers_pre.conftest import seed, transformer_process
from tests.transformers_pre.corpus import DOCS, QUESTIONS
from transformers_pre.store import Chunk, VectorStore

pytestmark = pytest.mark.slow

CLUSTER = {"field": "topic", "op": "eq", "value": "cluster"}
CLUSTER_DOCS = {doc_id for doc_id, (topic, _) in DOCS.items() if topic == "cluster"}


async def ask(server: PredictorProcess, instances: list, status: int = 200) -> dict:
    async with httpx.AsyncClient(base_url=server.url, timeout=180) as client:
        response = await client.post("/v1/models/rag:predict", json={"instances": instances})
    assert response.status_code == status, response.text
    return response.json()


async def test_v1_answers_with_sources_citations_and_usage(rag_server: PredictorProcess) -> None:
    [prediction] = (await ask(rag_server, [{"question": "Where do messages that can never be handled go?"}]))[
        "predictions"]
    assert prediction["answer"]
    sources = prediction["sources"]
    assert len(sources) == 4 and sources[0]["doc_id"] == "dlq"
    assert set(sources[0]) == {"doc_id", "chunk_id", "text", "score"} and "kzero.dlq" in sources[0]["text"]
    assert all(1 <= c <= 4 for c in prediction["citations"])
    usage = prediction["usage"]
    assert usage["prompt_tokens"] > 50 and 0 < usage["completion_tokens"] <= 48 and usage["passages"] == 4


async def test_filter_and_top_k(rag_server: PredictorProcess) -> None:
    [prediction] = (await ask(rag_server, [{"question": "How is Kafka run?", "top_k": 2,
                                            "filter": CLUSTER}]))["predictions"]
    assert len(prediction["sources"]) == 2
    assert {s["doc_id"] for s in prediction["sources"]} <= CLUSTER_DOCS


async def test_concurrent_requests_keep_their_own_context(rag_server: PredictorProcess) -> None:
    questions = [{"question": q, "top_k": 2, "parameters": {"max_new_tokens": 8}} for q, _ in QUESTIONS[:8]]
    alone = [(await ask(rag_server, [q]))["predictions"][0] for q in questions]
    together = await asyncio.gather(*(ask(rag_server, [q]) for q in questions))
    for question, single, reply in zip(questions, alone, together, strict=True):
        [prediction] = reply["predictions"]
        assert prediction["sources"] == single["sources"], question
        assert prediction["answer"] == single["answer"], question


async def test_v2_rest_and_grpc(rag_server: PredictorProcess) -> None:
    def request() -> InferRequest:
        tensor = InferInput("question", [1], "BYTES")
        tensor.set_data_from_numpy(np.array(["Which protocol uses protobuf over HTTP/2?"], dtype=object), False)
        return InferRequest(model_name="rag", infer_inputs=[tensor])

    # Generous timeouts (the clients' default is 60 s): 48 tokens on a shared, busy CPU can take longer.
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=180))
    grpc_client = InferenceGRPCClient(rag_server.grpc_target, timeout=180)
    try:
        by_rest = await rest.infer(rag_server.url, request(), model_name="rag")
        by_grpc = await grpc_client.infer(request())
    finally:
        await rest.close()
        await grpc_client.close()
    for response in (by_rest, by_grpc):
        outputs = {o.name: o for o in response.outputs}
        sources = outputs["sources"].as_numpy()[0]
        sources = json.loads(sources.decode() if isinstance(sources, bytes) else sources)
        assert sources[0]["doc_id"] == "grpc"
        assert outputs["answer"].datatype == "BYTES"


async def test_openai_stream_passes_the_answer_through_with_sources(rag_server: PredictorProcess) -> None:
    client = openai.AsyncOpenAI(base_url=rag_server.url + "/openai/v1", api_key="unused")
    stream = await client.chat.completions.create(
        model="rag", messages=[{"role": "user", "content": "How many dimensions do the sentence vectors have?"}],
        max_tokens=32, temperature=0, stream=True,
    )
    pieces, sources, final = [], None, {}
    async for chunk in stream:
        assert chunk.model == "rag"
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
        if getattr(chunk, "sources", None):
            sources = chunk.sources  # type: ignore[attr-defined]
            final = chunk.model_extra or {}
    assert len([p for p in pieces if p]) > 1 and "".join(pieces).strip()
    assert sources is not None and sources[0]["doc_id"] == "embedding-model"
    reply = await client.chat.completions.create(
        model="rag", messages=[{"role": "user", "content": "How many dimensions do the sentence vectors have?"}],
        max_tokens=32, temperature=0,
    )
    # The chain's answer: what was streamed, or the replacement the final chunk carries (ground, no_repeat).
    assert reply.choices[0].message.content == final.get("answer", "".join(pieces).strip())
    assert reply.model_extra is not None and reply.model_extra["mode"] == final["mode"]


async def test_cloudevent_in_cloudevent_out(rag_server: PredictorProcess) -> None:
    headers = {"ce-specversion": "1.0", "ce-id": "q-1", "ce-source": "/tests", "ce-type": "dev.kzero.inference.request",
               "ce-jobid": "job-7", "content-type": "application/json"}
    body = {"instances": [{"question": "What adds worker replicas when a backlog builds up?", "top_k": 1}]}
    async with httpx.AsyncClient(base_url=rag_server.url, timeout=180) as client:
        response = await client.post("/v1/models/rag:predict", json=body, headers=headers)
    assert response.status_code == 200, response.text
    [event], mode = events_from_http(dict(response.headers), response.content)
    assert mode == "binary" and event.type == "dev.kzero.inference.result"
    assert event.get("requestid") == "q-1" and event.get("jobid") == "job-7"
    assert event.data["predictions"][0]["sources"][0]["doc_id"] == "keda"


@pytest.mark.parametrize(
    ("instance", "status", "message"),
    [
        ({"question": "   "}, 400, "instances[0].question: must not be empty"),
        ({"question": "x" * 2001}, 400, "2001 characters exceed the limit of 2000"),
        ({"question": "q", "filter": 'doc_id != ""'}, 400, "instances[0].filter: structured filters are required"),
        ({"question": "q", "filter": {"field": "text", "op": "eq", "value": "x"}}, 400,
         "instances[0].filter.field: 'text' is not a filterable field; allowed: doc_id, source, title, topic"),
        ({"question": "q", "collection": "missing"}, 404, "collection 'missing' is not served; served: kzero"),
        ({"question": "q", "colour": "red"}, 400, "instances[0].colour: unknown field"),
        ({"question": "q", "top_k": 500}, 400, "instances[0].top_k: 500 exceeds the limit of 20"),
        ({"question": "q", "parameters": {"beams": 2}}, 400, "instances[0].parameters.beams: unknown parameter"),
    ],
)
async def test_bad_questions_are_4xx_naming_the_problem(
    rag_server: PredictorProcess, instance: dict, status: int, message: str
) -> None:
    assert message in (await ask(rag_server, [instance], status=status))["error"]


async def test_predictor_down_gives_503_then_recovers(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, model_cache: Path
) -> None:
    db = tmp_path / "own.db"  # Milvus Lite allows one process per file
    await seed(db)
    port = free_port()
    transformer = transformer_process(tmp_path_factory, db, f"127.0.0.1:{port}")
    predictor = PredictorProcess(["--task", "generate", "--model_id", "smollm2-135m-instruct", "--cache_dir",
                                  str(model_cache)], model_name="smol", http_port=port, log_path=tmp_path / "p.log")
    try:
        await asyncio.to_thread(transformer.wait_ready)
        async with httpx.AsyncClient(base_url=transformer.url, timeout=180) as client:
            body = {"instances": [{"question": "How large are the pieces a document is split into?"}]}
            down = await client.post("/v1/models/rag:predict", json=body)
            assert down.status_code == 503 and int(down.headers["retry-after"]) > 0
            assert "predictor unavailable" in down.json()["error"]
            predictor.start()
            await asyncio.to_thread(predictor.wait_ready)
            up = await client.post("/v1/models/rag:predict", json=body)
            assert up.status_code == 200 and up.json()["predictions"][0]["sources"][0]["doc_id"] == "chunking"
    finally:
        predictor.stop()
        assert transformer.stop() == 0


def doc_ids(prediction: dict) -> set[str]:
    return {source["doc_id"] for source in prediction["sources"]}


async def test_structured_filters_narrow_retrieval_and_values_cannot_widen_it(rag_server: PredictorProcess) -> None:
    def asking(filter_: object) -> dict:
        return {"question": "How is Kafka run?", "top_k": 10, "filter": filter_, "parameters": {"max_new_tokens": 2}}

    doc = "doc_id"
    unfiltered, cluster, both, either, injected, quoted = (await ask(rag_server, [
        asking(None),
        asking(CLUSTER),
        asking([CLUSTER, {"field": doc, "op": "in", "value": ["keda", "strimzi", "broker"]}]),
        asking({"any": [{"field": doc, "op": "eq", "value": "broker"}, {"field": doc, "op": "eq", "value": "dlq"}]}),
        asking({"field": doc, "op": "eq", "value": 'keda" or doc_id != "'}),
        asking([CLUSTER, {"field": "topic", "op": "ne", "value": "x\\\" or topic != \""}]),
    ]))["predictions"]
    assert len(doc_ids(unfiltered)) == 10 and not doc_ids(unfiltered) <= CLUSTER_DOCS
    assert doc_ids(cluster) == CLUSTER_DOCS
    assert doc_ids(both) == {"keda", "strimzi"}
    assert doc_ids(either) == {"broker", "dlq"}
    assert injected["sources"] == [] and injected["usage"]["passages"] == 0
    assert doc_ids(quoted) == CLUSTER_DOCS


async def test_v2_grpc_openai_and_cloudevents_take_the_same_filters(rag_server: PredictorProcess) -> None:
    def request(parameters: dict) -> InferRequest:
        tensor = InferInput("question", [1], "BYTES")
        tensor.set_data_from_numpy(np.array(["How is Kafka run?"], dtype=object), False)
        return InferRequest(model_name="rag", infer_inputs=[tensor], parameters=parameters)

    def sources(response: object) -> set[str]:
        [found] = next(o for o in response.outputs if o.name == "sources").as_numpy()  # type: ignore[attr-defined]
        return {s["doc_id"] for s in json.loads(found.decode() if isinstance(found, bytes) else found)}

    structured = {"filter": json.dumps([CLUSTER])}
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=180))
    grpc_client = InferenceGRPCClient(rag_server.grpc_target, timeout=180)
    try:
        assert sources(await rest.infer(rag_server.url, request(structured), model_name="rag")) <= CLUSTER_DOCS
        assert sources(await grpc_client.infer(request(structured))) <= CLUSTER_DOCS
        for parameters, code, message in [
            ({"filter": 'doc_id != ""'}, grpc.StatusCode.INVALID_ARGUMENT,
             "parameters.filter: structured filters are required"),
            ({"filter": "[{"}, grpc.StatusCode.INVALID_ARGUMENT, "parameters.filter: not valid JSON"),
            ({"collection": "secret"}, grpc.StatusCode.NOT_FOUND, "collection 'secret' is not served; served: kzero"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await grpc_client.infer(request(parameters))
            assert err.value.code() == code and message in (err.value.details() or "")
    finally:
        await rest.close()
        await grpc_client.close()

    async with httpx.AsyncClient(base_url=rag_server.url, timeout=180) as http:
        v2 = await http.post("/v2/models/rag/infer", json={
            "inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], "data": ["q"]}],
            "parameters": {"filter": 'doc_id != ""'}})
        assert v2.status_code == 400 and "parameters.filter: structured filters are required" in v2.text
        headers = {"ce-specversion": "1.0", "ce-id": "f-1", "ce-source": "/tests",
                   "ce-type": "dev.kzero.inference.request", "content-type": "application/json"}
        for instance, status, message in [
            ({"question": "q", "filter": 'doc_id != ""'}, 400, "instances[0].filter: structured filters are required"),
            ({"question": "q", "collection": "secret"}, 404, "collection 'secret' is not served"),
        ]:
            event = await http.post("/v1/models/rag:predict", json={"instances": [instance]}, headers=headers)
            assert event.status_code == status and message in event.text

    client = openai.AsyncOpenAI(base_url=rag_server.url + "/openai/v1", api_key="unused")
    messages = [{"role": "user", "content": "How is Kafka run?"}]
    reply = await client.chat.completions.create(model="rag", messages=messages, max_tokens=2,  # type: ignore[arg-type]
                                                 extra_body={"filter": CLUSTER, "collection": "kzero"})
    assert {s["doc_id"] for s in reply.sources} <= CLUSTER_DOCS  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError, match="filter: structured filters are required"):
        await client.chat.completions.create(model="rag", messages=messages,  # type: ignore[arg-type]
                                             extra_body={"filter": 'doc_id != ""'})
    with pytest.raises(openai.NotFoundError, match="collection 'secret' is not served"):
        await client.chat.completions.create(model="rag", messages=messages,  # type: ignore[arg-type]
                                             extra_body={"collection": "secret"})


@pytest.fixture(scope="module")
def raw_filter_server(
    tmp_path_factory: pytest.TempPathFactory, generate_server: PredictorProcess, embed_server: PredictorProcess,
) -> Iterator[PredictorProcess]:
    """Trusts raw expressions and serves two collections; a third one exists in its file but is not served."""
    db = tmp_path_factory.mktemp("raw") / "raw.db"  # Milvus Lite allows one process per file
    asyncio.run(seed(db))
    store = VectorStore.connect(str(db), "secret")
    try:
        store.ensure_collection(384)
        store.replace_document("classified", "h", [Chunk("classified", 0, "a secret")], np.ones((1, 384), np.float32))
    finally:
        store.close()
    server = transformer_process(tmp_path_factory, db, f"127.0.0.1:{generate_server.http_port}",
                                 "--embedder", f"{embed_server.url}#{embed_server.model_name}",
                                 "--allow_raw_filter", "--collections", "kzero,extra")
    try:
        server.wait_ready()
        yield server
    finally:
        assert server.stop() == 0


async def test_raw_expressions_when_allowed_and_their_errors_say_nothing_of_the_schema(
    raw_filter_server: PredictorProcess,
) -> None:
    def asking(**fields: object) -> dict:
        return {"question": "How is Kafka run?", "top_k": 10, "parameters": {"max_new_tokens": 2}, **fields}

    raw, structured = (await ask(raw_filter_server, [
        asking(filter='metadata["topic"] == "cluster" and doc_id != "keda"'),
        asking(filter={"field": "doc_id", "op": "in", "value": ["keda", "dlq"]}),
    ]))["predictions"]
    assert doc_ids(raw) == CLUSTER_DOCS - {"keda"} and doc_ids(structured) == {"keda", "dlq"}
    for expression in ["nosuch == 1", "metadata[topic] ==== 1", 'doc_id == 1']:
        error = (await ask(raw_filter_server, [asking(filter=expression)], status=400))["error"]
        assert error.startswith("instances[0].filter: the vector store cannot evaluate this expression"), error
        assert not any(word in error for word in ("available", "chunk_id", "doc_hash", "column", "sparse"))
    missing = (await ask(raw_filter_server, [asking(collection="extra")], status=404))["error"]
    assert "'extra' does not exist" in missing  # served, so saying it is missing tells nothing new
    secret = (await ask(raw_filter_server, [asking(collection="secret")], status=404))["error"]
    nope = (await ask(raw_filter_server, [asking(collection="nope")], status=404))["error"]
    assert secret == "collection 'secret' is not served; served: kzero, extra" == nope.replace("nope", "secret")
