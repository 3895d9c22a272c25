"""RAG answers: key-fact accuracy, citations that hold the fact, repetition, for each chain step added.

docs/corpus is ingested into a throwaway Milvus Lite file (``python -m transformers_pre.ingest``).
The generation predictor is the packaged SmolLM2-135M-Instruct, a real server process. The chain
runs in this process, built by ``build_deps``/``build_chain`` as the transformer builds it (in-process
MiniLM embedder, the same Milvus file), so the steps after generation can be varied on the same
generated answers: each generation variant (prompt, decoding, trim) runs once per question, 8
questions at a time (the predictor batches them; greedy decoding, so a rerun gives the same answers),
and each post-generation variant (no_repeat, cite, ground) runs on a copy of its contexts.

The questions are those of tests/transformers_pre/corpus.py plus the two demo questions whose
answers are in docs/corpus. The first generation variants use the 64 new tokens ``make demo`` gave
the transformer before issue 18 (the default of 256 only makes a looping answer longer, and runs past
the 120 s predictor timeout on a busy 2-core CPU). The last variants are the steps of
transformers_pre/chains/small_generator.yaml, the chain ``make demo`` runs now. Each answer is
scored against its question's key fact (``corpus.FACTS``: a phrase of the document, any of its
alternatives, case-insensitive):

- fact: the answer states the key fact;
- cited: it states it AND one of the passages it cites holds it (the target: >= 0.7);
- repeating: answers in which some 4-word sequence occurs more than once (target: none);
- top source: the top retrieved passage holds the fact (the ceiling of the extractive fallback).

The grounding scores (``ground`` step: word overlap with the cited passages, or the embedding
similarity of answer and passage) are compared on the answers before ``ground``: how well each
separates answers that are right (fact + cited) from the rest (AUC), and the accuracy the chain
reaches at each threshold if every answer under it is replaced by its top passage's sentence
(counted right when the top passage holds the fact).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import CACHE, ROOT, machine_info, predictor, report, table
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from serving.metrics import ServerMetrics
from tests.transformers_pre.corpus import QUESTIONS, holds
from transformers_pre.chain import Chain, build_chain
from transformers_pre.config import ChainConfig, TransformerConfig
from transformers_pre.context import RagContext, RagInstance
from transformers_pre.deps import build_deps
from transformers_pre.sentences import overlap, repeated_ngrams
from transformers_pre.steps import ChainDeps

EMBEDDER = "all-minilm-l6-v2"
GENERATOR = "smollm2-135m-instruct"
DEMO_QUESTIONS = [("How does kzero avoid paying for idle GPUs?", "scale-zero"),
                  ("What happens to a request that keeps failing?", "dlq")]
ASKED = [*QUESTIONS, *DEMO_QUESTIONS]
TARGET = 0.7
NGRAM = 4
GROUP = 8  # questions in flight at once

SMALL_CHAIN = ROOT / "transformers_pre" / "chains" / "small_generator.yaml"
# The default chain's prompt (the chain before issue 18), spelled out.
OLD_SYSTEM = ("You answer questions using only the numbered context passages. "
              "Cite the passages you use as [1], [2]. If the context does not contain the answer, say you do not know.")
OLD_TEMPLATE = "Context:\n{context}\n\nQuestion: {question}\nAnswer:"

Steps = list[str | dict[str, Any]]


def variants() -> list[tuple[str, Steps, list[tuple[str, Steps]]]]:
    """(generation label, steps up to generate, [(label, steps after generate), ...]): each row adds
    one measured step to the row before it."""
    small = ChainConfig.from_yaml(SMALL_CHAIN)
    head: Steps = ["validate", "embed_query", "retrieve"]
    old_prompt = {"name": "prompt", "options": {"system": OLD_SYSTEM, "template": OLD_TEMPLATE}}
    new_prompt = next(s.model_dump() for s in small.steps if s.name == "prompt")
    plain = {"name": "generate", "options": {"max_new_tokens": 64, "stop": []}}
    short = {"name": "generate", "options": {"max_new_tokens": 48, "stop": ["\n\n"]}}
    return [
        ("today", [*head, old_prompt, plain], [("today: the chain before issue 18", ["cite", "usage"])]),
        ("prompt", [*head, new_prompt, plain], [("+ passages-first short-answer prompt", ["cite", "usage"])]),
        ("decoding", [*head, new_prompt, short], [
            ("+ decoding: stop at a blank line, 48 tokens", ["cite", "usage"]),
            ("+ no_repeat (cut at the first repeated 4-gram)", ["no_repeat", "cite", "usage"])]),
        ("trim", [*head, "trim", new_prompt, short], [
            ("+ trim passages to the 2 nearest sentences", ["no_repeat", "cite", "usage"]),
            ("+ ground (overlap) with extractive fallback",
             ["no_repeat", "cite", {"name": "ground", "options": {"method": "overlap"}}, "usage"]),
            ("+ ground (embedding) with extractive fallback",
             ["no_repeat", "cite", {"name": "ground", "options": {"method": "embedding"}}, "usage"]),
            ("+ ground (embedding, threshold 0.9) with extractive fallback",
             ["no_repeat", "cite", {"name": "ground", "options": {"method": "embedding", "threshold": 0.9}},
              "usage"])]),
    ]


def chain_of(steps: Steps, deps: ChainDeps) -> Chain:
    specs = [{"name": s} if isinstance(s, str) else s for s in steps]
    return build_chain(ChainConfig.model_validate({"steps": specs}), deps)


def fresh(ctx: RagContext) -> RagContext:
    return dataclasses.replace(ctx, citations=list(ctx.citations), usage=dict(ctx.usage),
                               timings_ms=dict(ctx.timings_ms))


async def generate(chain: Chain, asked: list[tuple[str, str]]) -> tuple[list[RagContext], float]:
    contexts = [RagContext(RagInstance(question=q), f"instances[{i}]") for i, (q, _) in enumerate(asked)]
    started = time.perf_counter()
    for first in range(0, len(contexts), GROUP):
        await asyncio.gather(*(chain.run(c) for c in contexts[first:first + GROUP]))
    return contexts, time.perf_counter() - started


def score(label: str, contexts: list[RagContext], asked: list[tuple[str, str]]) -> dict[str, Any]:
    answers = []
    for (question, doc_id), ctx in zip(asked, contexts, strict=True):
        p = ctx.prediction()
        cited = [p["sources"][c - 1]["text"] for c in p["citations"]]
        fact = holds(p["answer"], doc_id)
        answers.append({
            "question": question, "doc_id": doc_id, "answer": p["answer"], "citations": p["citations"],
            "mode": p["mode"], "fact": fact, "cited": fact and any(holds(t, doc_id) for t in cited),
            "repeats": repeated_ngrams(p["answer"], NGRAM), "top_source": holds(p["sources"][0]["text"], doc_id),
            "completion_tokens": p["usage"].get("completion_tokens", 0), "sources": [s["text"] for s in p["sources"]],
        })
    n = len(answers)
    return {"label": label, "fact": sum(a["fact"] for a in answers) / n, "cited": sum(a["cited"] for a in answers) / n,
            "repeating": sum(a["repeats"] > 0 for a in answers),
            "extractive": sum(a["mode"] == "extractive" for a in answers),
            "top_source": sum(a["top_source"] for a in answers) / n,
            "completion_tokens": sum(a["completion_tokens"] for a in answers) / n, "answers": answers}


async def measure(db: Path, predictor_port: int, asked: list[tuple[str, str]],
                  only: set[str] | None) -> dict[str, Any]:
    config = TransformerConfig(predictor_host=f"127.0.0.1:{predictor_port}", predictor_model="model",
                               milvus_uri=str(db), collection="kzero", request_timeout_s=900)
    deps = await build_deps(config, trace.get_tracer(__name__), ServerMetrics(registry=CollectorRegistry()))
    runs, generations = [], {}
    try:
        for name, head, tails in variants():
            if only is not None and name not in only:
                continue
            contexts, seconds = await generate(chain_of(head, deps), asked)
            generations[name] = seconds
            for label, tail in tails:
                done = [fresh(c) for c in contexts]
                await asyncio.gather(*(chain_of(tail, deps).run(c) for c in done))
                runs.append({**score(label, done, asked), "generation": name, "seconds": seconds})
        before_ground = next((r for r in runs if r["label"].startswith("+ trim")), None)
        methods = await grounding(deps, before_ground["answers"]) if before_ground else {}
    finally:
        await deps.embedder.close()
        await asyncio.to_thread(deps.store.close)
    return {"runs": runs, "generation_seconds": generations, "grounding": methods}


def auc(scores: list[float], right: list[bool]) -> float:
    """P(a right answer scores above a wrong one), ties half."""
    pos = [s for s, r in zip(scores, right, strict=True) if r]
    neg = [s for s, r in zip(scores, right, strict=True) if not r]
    if not pos or not neg:
        return float("nan")
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


async def grounding(deps: ChainDeps, answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Both grounding scores for each answer (against its cited passages, or all when it cites none)."""
    scores: dict[str, list[float]] = {"overlap": [], "embedding": []}
    for a in answers:
        passages = [a["sources"][c - 1] for c in a["citations"]] or a["sources"]
        scores["overlap"].append(max(overlap(a["answer"], [p]) for p in passages))
        vectors = await deps.embedder.embed([a["answer"] or " ", *passages])
        scores["embedding"].append(float(max(vectors[1:] @ vectors[0])))
    right = [a["cited"] for a in answers]
    fallback = [a["top_source"] for a in answers]
    out: dict[str, Any] = {}
    for method, values in scores.items():
        sweep = {}
        for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            kept = [v >= t for v in values]
            sweep[t] = sum(r if k else f for r, k, f in zip(right, kept, fallback, strict=True)) / len(answers)
        out[method] = {"auc": auc(values, right), "scores": values, "accuracy_at": sweep}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every third question, for a smoke test")
    parser.add_argument("--only", help="comma-separated generation runs to measure (today,prompt,decoding,trim)")
    args = parser.parse_args()
    asked = ASKED[::3] if args.quick else ASKED
    only = set(args.only.split(",")) if args.only else None
    machine = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="kzero-bench-rag-answers-"))
    try:
        db = workdir / "corpus.db"
        subprocess.run([sys.executable, "-m", "transformers_pre.ingest", "--milvus_uri", str(db), "--collection",
                        "kzero", "--no_progress", str(ROOT / "docs" / "corpus")], check=True, capture_output=True)
        generator_args = ["--task", "generate", "--model_id", GENERATOR, "--cache_dir", str(CACHE / "shared")]
        with predictor(generator_args, "rag-answers-smol") as (generator, _):
            measured = asyncio.run(measure(db, generator.http_port, asked, only))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    runs, methods = measured["runs"], measured["grounding"]

    rows = [[r["label"], r["generation"], f"{r['fact']:.2f}", f"{r['cited']:.2f}",
             f"{r['repeating']}/{len(asked)}", f"{r['extractive']}/{len(asked)}", f"{r['top_source']:.2f}",
             f"{r['completion_tokens']:.0f}", f"{r['seconds']:.0f}"] for r in runs]
    variants_table = table(["chain", "generation run", "fact", "fact + cited source holds it", "repeating",
                            "extractive", "top source holds fact", "completion tokens/answer",
                            "generation seconds (all questions)"], rows)
    notes = (f"{len(asked)} questions (tests/transformers_pre/corpus.py + 2 demo questions), docs/corpus in Milvus "
             f"Lite, top_k 4, greedy decoding, SmolLM2-135M on {machine['cpu']}. Target: fact + cited >= {TARGET}, "
             f"no answer repeating a {NGRAM}-word sequence.")
    sections = ["### Key-fact accuracy per chain", notes, variants_table]
    if methods:
        thresholds = list(methods["overlap"]["accuracy_at"])
        sections += ["### Grounding check: which score (on the answers before ground)", table(
            ["method", "AUC", *(f"fact + cited @ {t:g}" for t in thresholds)],
            [[m, f"{v['auc']:.2f}", *(f"{a:.2f}" for a in v["accuracy_at"].values())] for m, v in methods.items()])]
        from transformers_pre.steps.ground import Ground

        last = next(r for r in runs if f"({Ground.method})" in r["label"])  # the default chain's ground method
        sections += [f"### Answers of: {last['label']}", table(
            ["question", "answer", "mode", "fact + cited"],
            [[a["question"], a["answer"].replace("\n", " ")[:160], a["mode"], a["cited"]] for a in last["answers"]])]
    report("RAG answers: key facts, citations, repetition", machine, sections, "rag_answers",
           {"quick": args.quick, "runs": runs, "grounding": methods})


if __name__ == "__main__":
    main()
