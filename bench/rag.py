"""RAG: vector retrieval latency and recall, the transformer chain's own overhead, ingestion throughput.

1. Retrieval. N synthetic chunks (384-d unit vectors, seeded: N/100 random centers, each vector a
   center plus Gaussian noise, so every vector has ~100 meaningful neighbours) go into a throwaway
   Milvus Lite file through ``VectorStore.replace_documents`` in batches of 5,000 (new documents, so
   ``absent``: no delete, as ingest does for them), once per index: IVF_FLAT, FLAT and, side by
   side, the store's default AUTOINDEX; the store is closed and reopened
   as the transformer would find it. 200
   queries (stored vectors plus small noise, renormalized) are searched one at a time with
   ``VectorStore.search(top_k=10)`` and, as the exact limit, with a torch matmul + topk over the same
   vectors in this process (CPU; also the GPU when there is one). recall@10 of Milvus is measured
   against the exact top-10 (exact is 1.0 by definition).
2. Chain overhead. The real transformer process (``python -m transformers_pre``, in-process MiniLM
   embedder, Milvus Lite with the corpus of part 3) in front of a FAKE predictor: a bare ASGI app on
   uvicorn that answers every request instantly with one fixed prediction. Closed-loop clients ask v1
   questions (``max_new_tokens: 1``, which the fake ignores) at 1 and 16 concurrent clients. Measured
   side by side at the same concurrency: the fake predictor's round trip when called directly with a
   prompt-sized body, and the embedder's latency for one question in this process through the same
   ``ClientEmbedder`` + in-process client the transformer uses. overhead = p50(transformer) -
   p50(fake predictor direct) - p50(embedder), i.e. validation, retrieval, prompt, citations, the two
   extra (de)serializations and the server itself. At 16 clients on few cores, the difference also
   holds time spent queued behind other requests' work.
3. Ingestion. ``ingest()`` (chunking, hash lookups, batched embedding with batch 64, Milvus writes,
   overlapped) on a synthetic corpus (deterministic sentences from a word list, 300-600 words per
   document) into a fresh Milvus Lite collection, versus ``ClientEmbedder.embed`` alone on the same
   chunk texts in batches of 64 (the raw embedder limit). Connecting and creating the collection are
   not timed.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    LOGS,
    LoadResult,
    check,
    closed_loop,
    cpu_now,
    machine_info,
    noise_note,
    parse_args,
    percentile,
    report,
    table,
)

from serving.launch import PredictorProcess, free_port, http_status
from transformers_pre.index import IndexConfig
from transformers_pre.ingest.readers import Document
from transformers_pre.store import Chunk, VectorStore

EMBEDDER = "all-minilm-l6-v2"
DIM = 384
SEED = 1234
INSERT_BATCH = 5_000
QUERIES = 200
TOP_K = 10
CLUSTER_SIZE = 100  # N / CLUSTER_SIZE centers: 1,000 for the default 100,000 chunks
NOISE = 0.75  # norm of the noise added to a center (centers are unit vectors)
QUERY_NOISE = 0.25  # norm of the noise added to a stored vector to make a query
CLIENTS = (1, 16)
INGEST_BATCH = 64
OVERHEAD_TARGET_MS = 3.0  # issue 16 (issue 4 asked for 5)
INGEST_TARGET = 0.7
COLLECTION = "kzero"
INDEXES = (IndexConfig(index_type="IVF_FLAT"), IndexConfig(index_type="FLAT"), IndexConfig())  # the default last
SEARCH_TARGET = 1.5  # Milvus p50 / exact CPU p50
RECALL_TARGET = 0.95
PREDICTOR_MODEL = "fake"

FAKE_PREDICTOR = """
import sys
import uvicorn
BODY = (b'{"predictions":[{"text":"ok [1]","finish_reason":"stop",'
        b'"usage":{"prompt_tokens":1,"completion_tokens":1}}]}')
HEADERS = [(b"content-type", b"application/json")]
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""

WORDS = (
    "kafka broker partition offset consumer producer topic event stream batch record header key value "
    "model predictor transformer embedding vector index search query answer passage context prompt token "
    "chunk document citation source cluster node replica pod service gateway route request response latency "
    "throughput memory cache disk network timeout retry failure error signal trace metric log alert dashboard "
    "scale start stop load ready health probe config secret volume image build deploy rollout canary traffic "
    "river mountain forest valley ocean desert island harbor bridge tower castle garden village market street "
    "quick slow bright dark warm cold quiet loud simple complex early late small large ancient modern hidden "
    "carefully rarely often always never quickly slowly gently firmly openly mostly nearly barely freely "
    "measure compare verify explain describe improve protect connect observe follow collect deliver remember "
    "the a an of to in on at by for with from into over under between after before during while because"
).split()
TOPICS = ("kafka", "serving", "retrieval", "operations", "travel")


# -- synthetic data -------------------------------------------------------------------------------


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clustered_vectors(n: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` stored unit vectors around ``n / CLUSTER_SIZE`` centers, and ``queries`` perturbed copies."""
    rng = np.random.default_rng(SEED)
    centers = unit(rng.standard_normal((max(1, n // CLUSTER_SIZE), DIM), dtype=np.float32))
    owner = rng.integers(0, len(centers), n)
    sigma = NOISE / math.sqrt(DIM)
    vectors = unit(centers[owner] + sigma * rng.standard_normal((n, DIM), dtype=np.float32))
    picked = rng.choice(n, queries, replace=False)
    noise = QUERY_NOISE / math.sqrt(DIM) * rng.standard_normal((queries, DIM), dtype=np.float32)
    return vectors.astype(np.float32), unit(vectors[picked] + noise).astype(np.float32)


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 14))]
    return " ".join(words).capitalize() + "."


def corpus(count: int) -> list[Document]:
    """``count`` deterministic documents of 300-600 words in paragraphs of 3-6 sentences."""
    rng = random.Random(SEED)
    documents = []
    for i in range(count):
        target, words, paragraphs = rng.randint(300, 600), 0, []
        while words < target:
            sentences = [sentence(rng) for _ in range(rng.randint(3, 6))]
            words += sum(len(s.split()) for s in sentences)
            paragraphs.append(" ".join(sentences))
        documents.append(Document(f"doc-{i:04d}", "\n\n".join(paragraphs), {"topic": TOPICS[i % len(TOPICS)]}))
    return documents


def questions(count: int) -> list[str]:
    rng = random.Random(SEED + 1)
    nouns = WORDS[:100]
    return [f"What do the documents say about {rng.choice(nouns)} and {rng.choice(nouns)}?" for _ in range(count)]


# -- CPU accounting -------------------------------------------------------------------------------


def cpu_snapshot() -> tuple[float, dict[int, float]]:
    """(machine busy CPU-s, CPU-s of this process and of each of its descendants by pid)."""
    import psutil

    me = psutil.Process()
    own = {me.pid: sum(me.cpu_times()[:2])}
    for child in me.children(recursive=True):
        try:
            own[child.pid] = sum(child.cpu_times()[:2])
        except psutil.Error:
            continue
    return cpu_now(None)[0], own


def other_cores(start: tuple[float, dict[int, float]], wall_s: float) -> float:
    """Average cores used during ``wall_s`` by processes other than this one and its children
    (Milvus Lite, the transformer, the fake predictor)."""
    machine, own = cpu_snapshot()
    ours = sum(v - start[1].get(pid, 0.0) for pid, v in own.items())
    return max(0.0, machine - start[0] - ours) / wall_s


def latency(values_s: Sequence[float]) -> dict[str, float]:
    return {"p50_ms": percentile(values_s, 50) * 1e3, "p99_ms": percentile(values_s, 99) * 1e3,
            "mean_ms": sum(values_s) / len(values_s) * 1e3 if values_s else math.nan}


# -- 1. retrieval ---------------------------------------------------------------------------------


def milvus_search(workdir: Path, vectors: np.ndarray, queries: np.ndarray, index: IndexConfig) -> dict[str, Any]:
    """Insert ``vectors`` into a fresh Milvus Lite file, reopen it, search each query; row indices found."""
    db = str(workdir / f"retrieval-{index.index_type}.db")
    started = time.perf_counter()
    store = VectorStore.connect(db, COLLECTION, index)
    try:
        store.ensure_collection(DIM)
        connect_s = time.perf_counter() - started
        started = time.perf_counter()
        for first in range(0, len(vectors), INSERT_BATCH):
            doc_id = f"batch-{first // INSERT_BATCH:04d}"
            rows = range(first, min(first + INSERT_BATCH, len(vectors)))
            chunks = [Chunk(doc_id, i, f"synthetic chunk {i}") for i in rows]
            store.replace_documents([(doc_id, doc_id, chunks, vectors[rows.start:rows.stop])], absent={doc_id})
        insert_s = time.perf_counter() - started
    finally:
        started = time.perf_counter()
        store.close()
    close_s = time.perf_counter() - started
    started = time.perf_counter()
    store = VectorStore.connect(db, COLLECTION, index)
    try:
        store.load()
        reopen_s = time.perf_counter() - started
        count = store.count()
        for query in queries[:20]:  # warm-up
            store.search(query, TOP_K)
        found, seconds = [], []
        cpu = cpu_snapshot()
        wall = time.perf_counter()
        for query in queries:
            t0 = time.perf_counter()
            hits = store.search(query, TOP_K)
            seconds.append(time.perf_counter() - t0)
            found.append([h.chunk_id for h in hits])
        other = other_cores(cpu, time.perf_counter() - wall)
    finally:
        store.close()
    return {"index": index.index_type, "build_params": index.build_params(),
            "search_params": index.search_params(index.index_type), "rows": count, "connect_s": connect_s,
            "insert_s": insert_s, "insert_rows_per_s": len(vectors) / insert_s,
            "close_s": close_s, "reopen_load_s": reopen_s, "found": found, "other_cores": other, **latency(seconds)}


def exact_search(vectors: np.ndarray, queries: np.ndarray, device: str) -> dict[str, Any]:
    """One query at a time: ``matrix @ q`` and ``topk``, on ``device``."""
    import torch

    with torch.inference_mode():
        matrix = torch.from_numpy(vectors).to(device)
        targets = [torch.from_numpy(q).to(device) for q in queries]
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        for q in targets[:20]:  # warm-up
            torch.topk(matrix @ q, TOP_K)
        sync()
        found, seconds = [], []
        cpu = cpu_snapshot()
        wall = time.perf_counter()
        for q in targets:
            t0 = time.perf_counter()
            indices = torch.topk(matrix @ q, TOP_K).indices.tolist()  # .tolist() waits for the device
            seconds.append(time.perf_counter() - t0)
            found.append(indices)
        other = other_cores(cpu, time.perf_counter() - wall)
        del matrix, targets
    return {"device": device, "found": found, "other_cores": other, **latency(seconds)}


def recall(found: Sequence[Sequence[int]], truth: Sequence[Sequence[int]]) -> float:
    return sum(len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)) / len(truth)


def retrieval(workdir: Path, n: int) -> dict[str, Any]:
    import torch

    vectors, queries = clustered_vectors(n, QUERIES)
    milvus = [milvus_search(workdir, vectors, queries, index) for index in INDEXES]
    exact = [exact_search(vectors, queries, "cpu")]
    if torch.cuda.is_available():
        exact.append(exact_search(vectors, queries, "cuda"))
    truth = exact[0]["found"]
    for m in milvus:
        m["recall_at_10"] = recall(m.pop("found"), truth)
    for e in exact:
        e["recall_at_10"] = recall(e.pop("found"), truth)  # 1.0 up to ties between equal scores
    return {"chunks": n, "centers": max(1, n // CLUSTER_SIZE), "queries": QUERIES, "top_k": TOP_K,
            "milvus": milvus, "exact": exact}


# -- 3. ingestion (and the embedder's latency for part 2, with the same embedder) ---------------------


async def embed_latency(embedder: Any, texts: Sequence[str], clients: int, duration_s: float) -> dict[str, Any]:
    """``clients`` tasks each embedding one text at a time, back to back, for ``duration_s``."""
    result = LoadResult()
    numbers = itertools.count()
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        while time.perf_counter() < deadline:
            text = texts[next(numbers) % len(texts)]
            t0 = time.perf_counter()
            await embedder.embed([text])
            result.latencies_s.append(time.perf_counter() - t0)
            result.requests += 1

    cpu = cpu_snapshot()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    result.wall_s = time.perf_counter() - started
    return {"config": f"embedder, {clients} clients", "clients": clients, **result.summary(),
            "other_cores": other_cores(cpu, result.wall_s)}


def corpus_search(store: VectorStore, vectors: np.ndarray) -> dict[str, float]:
    """Latency of ``VectorStore.search`` with the transformer's default top_k 4, one query at a time."""
    for vector in vectors[:5]:  # warm-up
        store.search(vector, 4)
    seconds = []
    for vector in vectors:
        t0 = time.perf_counter()
        store.search(vector, 4)
        seconds.append(time.perf_counter() - t0)
    return latency(seconds)


async def ingestion(db: Path, documents: list[Document], asked: list[str], duration_s: float) -> dict[str, Any]:
    """Raw batched embedding and ``ingest()`` of ``documents`` into ``db``; also the embedder's latency
    for one question at each client count (part 2)."""
    from transformers.utils import logging as hf_logging

    from transformers_pre.embedder import ClientEmbedder, embedder_client
    from transformers_pre.ingest.chunking import Chunker
    from transformers_pre.ingest.pipeline import ingest

    hf_logging.disable_progress_bar()
    chunker = Chunker.load(EMBEDDER)
    texts = [chunk.text for document in documents for chunk in chunker.chunks(document)]
    embedder = await ClientEmbedder(*embedder_client(EMBEDDER)).start()
    try:
        await embedder.embed(texts[:INGEST_BATCH])  # warm-up at the batch shape
        cpu = cpu_snapshot()
        started = time.perf_counter()
        for first in range(0, len(texts), INGEST_BATCH):
            await embedder.embed(texts[first:first + INGEST_BATCH])
        raw_s = time.perf_counter() - started
        raw = {"chunks": len(texts), "seconds": raw_s, "chunks_per_s": len(texts) / raw_s,
               "other_cores": other_cores(cpu, raw_s)}
        store = await asyncio.to_thread(VectorStore.connect, str(db), COLLECTION)
        try:
            await asyncio.to_thread(store.ensure_collection, embedder.dimension)
            cpu = cpu_snapshot()
            summary = await ingest(documents, store, embedder, chunker, batch_size=INGEST_BATCH, progress=False)
            ingested = {**summary.as_dict(), "chunks_per_s": summary.chunks_per_s,
                        "other_cores": other_cores(cpu, summary.seconds)}
            search = await asyncio.to_thread(corpus_search, store, await embedder.embed(asked))
        finally:
            await asyncio.to_thread(store.close)
        if summary.chunks != len(texts):
            raise RuntimeError(f"ingest wrote {summary.chunks} chunks, the chunker cut {len(texts)}")
        embed = {c: await embed_latency(embedder, asked, c, duration_s) for c in CLIENTS}
    finally:
        await embedder.close()
    words = [len(d.text.split()) for d in documents]
    return {"documents": len(documents), "words_min": min(words), "words_max": max(words),
            "chunk_tokens": chunker.chunk_tokens, "overlap_tokens": chunker.overlap_tokens,
            "batch_size": INGEST_BATCH, "raw": raw, "ingest": ingested,
            "ratio": ingested["chunks_per_s"] / raw["chunks_per_s"], "embed_latency": embed, "search": search,
            "passage_texts": texts[:4]}


# -- 2. chain overhead ------------------------------------------------------------------------------


def start_fake_predictor(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-c", FAKE_PREDICTOR, str(port)], stdout=log,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while http_status(url + "/", timeout=1.0) != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise RuntimeError(f"the fake predictor did not start; see {log_path}")
        time.sleep(0.05)
    return process, url


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def generate_body(passages: Sequence[str], question: str) -> dict[str, Any]:
    """What the generate step sends for a v1 predictor: the chat messages of 4 passages and the question."""
    from transformers_pre.steps.prompt import SYSTEM, TEMPLATE

    context = "\n".join(f"[{i}] {text[:1200]}" for i, text in enumerate(passages, start=1))
    user = TEMPLATE.format(context=context, question=question)
    return {"instances": [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]}],
            "parameters": {"max_new_tokens": 1, "temperature": 0.0}}


def load(label: str, url: str, payload: Any, clients: int, duration_s: float) -> dict[str, Any]:
    warm = asyncio.run(closed_loop(url, payload, clients=clients, per_client=2))
    if warm.errors:
        raise RuntimeError(f"{label}: warm-up failed: {warm.first_error}")
    cpu = cpu_snapshot()
    result = asyncio.run(closed_loop(url, payload, clients=clients, duration_s=duration_s))
    return {"config": f"{label}, {clients} clients", "clients": clients, **result.summary(),
            "other_cores": other_cores(cpu, result.wall_s)}


def chain(db: Path, asked: list[str], passages: list[str], duration_s: float) -> dict[str, Any]:
    LOGS.mkdir(parents=True, exist_ok=True)
    fake, fake_url = start_fake_predictor(LOGS / "rag-fake-predictor.log")
    transformer: PredictorProcess | None = None
    try:
        log_path = LOGS / "rag-transformer.log"
        log_path.unlink(missing_ok=True)
        host = fake_url.removeprefix("http://")
        args = ["--predictor_host", host, "--predictor_model", PREDICTOR_MODEL, "--milvus_uri", str(db),
                "--collection", COLLECTION, "--max_new_tokens", "1"]
        transformer = PredictorProcess(args, model_name="rag", module="transformers_pre", log_path=log_path).start()
        ready_s = transformer.wait_ready(300)
        rag_url = f"{transformer.url}/v1/models/rag:predict"

        def ask(i: int) -> dict[str, Any]:
            return {"instances": [{"question": asked[i % len(asked)], "parameters": {"max_new_tokens": 1}}]}

        import httpx

        [probe] = httpx.post(rag_url, json=ask(0), timeout=120).raise_for_status().json()["predictions"]
        if probe["answer"] != "ok [1]" or len(probe["sources"]) != 4 or probe["citations"] != [1]:
            raise RuntimeError(f"unexpected transformer answer: {str(probe)[:300]}")
        bodies = [generate_body(passages, q) for q in asked]
        predict_url = f"{fake_url}/v1/models/{PREDICTOR_MODEL}:predict"
        runs: dict[int, dict[str, dict[str, Any]]] = {}
        for clients in CLIENTS:
            runs[clients] = {
                "predictor": load("fake predictor direct", predict_url, lambda i: bodies[i % len(bodies)], clients,
                                  duration_s),
                "transformer": load("transformer", rag_url, ask, clients, duration_s),
            }
    finally:
        if transformer is not None:
            transformer.stop()
        stop_process(fake)
    return {"method": "fake predictor", "transformer_ready_s": ready_s, "probe": probe, "runs": runs,
            "duration_s": duration_s}


# -- report -------------------------------------------------------------------------------------------


def retrieval_sections(ret: dict[str, Any]) -> list[str]:
    exact_cpu = next(e for e in ret["exact"] if e["device"] == "cpu")
    rows = []
    for m in ret["milvus"]:
        ratio = m["p50_ms"] / exact_cpu["p50_ms"]
        rows.append([f"Milvus Lite {m['index']} {m['build_params'] or ''} {m['search_params'] or ''}".strip(),
                     m["p50_ms"], m["p99_ms"], m["recall_at_10"], f"{ratio:.2f}x",
                     f"{check(ratio, SEARCH_TARGET, at_most=True)}; recall >= {RECALL_TARGET:g}: "
                     f"{'met' if m['recall_at_10'] >= RECALL_TARGET else 'MISSED'}",
                     m["insert_s"], m["close_s"], m["reopen_load_s"], m["other_cores"]])
    rows += [[f"exact torch matmul ({e['device']})", e["p50_ms"], e["p99_ms"], e["recall_at_10"], "", "", "", "", "",
              e["other_cores"]] for e in ret["exact"]]
    retrieval_table = table(
        ["search", "p50 ms", "p99 ms", "recall@10", "p50 / exact cpu", "target", "insert s", "close s",
         "reopen + load s", "other cores"], rows)
    notes = (
        f"{ret['chunks']:,} chunks around {ret['centers']:,} centers, {QUERIES} single queries, top_k={TOP_K}, "
        f"one fresh Milvus Lite file per index. Insert = replace_documents in batches of {INSERT_BATCH:,}; close "
        f"waits for Milvus Lite's background index builds; "
        + "; ".join(f"{m['index']}: {m['rows']:,} rows counted, {m['insert_rows_per_s']:,.0f} rows/s"
                    for m in ret["milvus"]) + "."
    )
    return ["### 1. Retrieval", notes, retrieval_table]


def main() -> None:
    args = parse_args(__doc__, switches=[("--retrieval_only", "only part 1 (retrieval)")])
    n = 10_000 if args.quick else 100_000
    documents = corpus(40 if args.quick else 200)
    duration = args.duration or (2.0 if args.quick else 10.0)
    asked = questions(64)
    machine = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="kzero-bench-rag-"))
    try:
        ret = retrieval(workdir, n)
        if args.retrieval_only:
            busy = {f"milvus search {m['index']}": m["other_cores"] for m in ret["milvus"]}
            busy |= {f"exact {e['device']}": e["other_cores"] for e in ret["exact"]}
            report("RAG: retrieval", machine, [*retrieval_sections(ret), noise_note(busy)], "rag_retrieval",
                   {"quick": args.quick, "retrieval": ret,
                    "targets": {"search_over_exact": SEARCH_TARGET, "recall_at_10": RECALL_TARGET}})
            return
        ing = asyncio.run(ingestion(workdir / "corpus.db", documents, asked, duration))
        chn = chain(workdir / "corpus.db", asked, ing.pop("passage_texts"), duration)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    overhead: dict[int, float] = {}
    per_request: dict[int, float] = {}
    rows = []
    for clients in CLIENTS:
        run, embed = chn["runs"][clients], ing["embed_latency"][clients]
        parts = (run["transformer"], run["predictor"], embed)
        overhead[clients] = parts[0]["p50_ms"] - parts[1]["p50_ms"] - parts[2]["p50_ms"]
        per_request[clients] = 1e3 * (1 / parts[0]["requests_per_s"] - 1 / parts[1]["requests_per_s"]
                                      - 1 / parts[2]["requests_per_s"])
        met = "met" if overhead[clients] <= OVERHEAD_TARGET_MS else "MISSED"
        target = f"<= {OVERHEAD_TARGET_MS:g} ms: {met}" if clients == 1 else "(at 1 client only: queueing)"
        rows.append([clients, *(p["p50_ms"] for p in parts), overhead[clients], target,
                     *(p["requests_per_s"] for p in parts), per_request[clients], run["transformer"]["p99_ms"],
                     sum(p["errors"] for p in parts)])
    chain_table = table(
        ["clients", "transformer p50 ms", "fake predictor p50 ms", "embedder p50 ms", "overhead p50 ms", "target",
         "transformer req/s", "fake predictor req/s", "embedder req/s", "overhead ms/request from req/s",
         "transformer p99 ms", "errors"], rows)
    chain_notes = (
        "Method: FAKE predictor (a bare ASGI app on uvicorn answering every call instantly) behind the real "
        "transformer process with its in-process MiniLM embedder and Milvus Lite (the part-3 corpus, top_k 4). "
        "overhead p50 = transformer p50 - fake predictor p50 (called directly, prompt-sized body) - embedder p50 "
        "(one question, in this process, same client count). With 16 clients most of each latency is waiting "
        "behind the other requests, so the p50 difference mostly measures queueing; the throughput column "
        "(1/req/s of the transformer - 1/req/s of the fake predictor - 1/req/s of the embedder) is the extra "
        f"cost per request under saturation instead. {duration:g}s per measurement; transformer ready in "
        f"{chn['transformer_ready_s']:.1f}s. For scale: VectorStore.search (top_k 4) on this corpus in this "
        f"process takes {ing['search']['p50_ms']:.1f} ms p50 ({ing['search']['p99_ms']:.1f} ms p99), part of "
        "the overhead."
    )
    errors = [f"{r['config']} first error: {r['first_error']}" for run in chn["runs"].values()
              for r in run.values() if r["first_error"]]

    ingest_table = table(
        ["path", "chunks", "seconds", "chunks/s", "other cores"],
        [["raw ClientEmbedder.embed, batch 64", ing["raw"]["chunks"], ing["raw"]["seconds"],
          ing["raw"]["chunks_per_s"], ing["raw"]["other_cores"]],
         ["ingest()", ing["ingest"]["chunks"], ing["ingest"]["seconds"], ing["ingest"]["chunks_per_s"],
          ing["ingest"]["other_cores"]]],
    )
    ratio_table = table(["ratio", "value", "target"],
                        [["ingest / raw embedder", f"{ing['ratio']:.2f}x", check(ing["ratio"], INGEST_TARGET)]])
    ingest_notes = (f"{ing['documents']} documents of {ing['words_min']}-{ing['words_max']} words, chunks of "
                    f"<= {ing['chunk_tokens']} tokens overlapping {ing['overlap_tokens']}, batch {INGEST_BATCH}.")

    busy = {f"milvus search {m['index']}": m["other_cores"] for m in ret["milvus"]}
    busy |= {"raw embed": ing["raw"]["other_cores"],
            "ingest": ing["ingest"]["other_cores"]}
    busy |= {f"exact {e['device']}": e["other_cores"] for e in ret["exact"]}
    busy |= {r["config"]: r["other_cores"] for r in ing["embed_latency"].values()}
    busy |= {r["config"]: r["other_cores"] for run in chn["runs"].values() for r in run.values()}
    noise = noise_note(busy) + (" Part 2's transformer, fake predictor and Milvus Lite are children of this "
                                "process and not counted as other.")

    sections = [*retrieval_sections(ret),
                "### 2. Chain overhead", chain_notes, chain_table, *errors,
                "### 3. Ingestion", ingest_notes, ingest_table, ratio_table, noise]
    report("RAG: retrieval, chain overhead, ingestion", machine, sections, "rag",
           {"quick": args.quick, "retrieval": ret, "chain": chn, "ingestion": ing,
            "overhead_p50_ms": overhead, "overhead_ms_per_request_from_throughput": per_request,
            "targets": {"overhead_p50_ms": OVERHEAD_TARGET_MS, "ingest_over_raw": INGEST_TARGET},
            "corpus_sha256": hashlib.sha256("".join(d.text for d in documents).encode()).hexdigest()})


if __name__ == "__main__":
    main()
