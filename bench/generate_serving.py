"""Generation serving: continuous batching vs the static engine vs batch size 1, open-loop.

Poisson arrivals at several request rates; each request streams one completion (OpenAI
``/completions``, ``stream_options.include_usage``) of a prompt of 16-512 tokens with ``max_tokens``
8-256 and ``ignore_eos``, so output lengths are fixed. The same seeded sequence of requests goes to
each server, one after the other: ``--engine continuous``, ``--engine static`` (batches of up to 16)
and ``--engine static --max_batch_size 1``. Per rate: completion tokens/s, TTFT p50/p99, time per
output token p50 (after the first), end to end p50/p99, and errors (503s past the queue bound).
Without CUDA the default is the CPU shape (prompts of 16-128 tokens, outputs of 8-64, rates 0.5-2 req/s):
the GPU shape's longest outputs at 2 req/s would queue for tens of minutes behind batch size 1 on two cores,
so batch size 1 runs only up to 2 req/s there, while the two batching engines go on to 8 req/s to saturate.
``--quick``: shorter prompts and outputs, fewer rates, shorter runs.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import openai
from common import (
    CACHE,
    MODEL_NAME,
    check,
    cpu_now,
    cpu_usage,
    machine_info,
    noise_note,
    parse_args,
    percentile,
    predictor,
    report,
    table,
)

MODEL_ID = "smollm2-135m-instruct"
MAX_BATCH = 16
WORDS = ("the", "data", "model", "server", "queue", "token", "batch", "event", "cache", "request", "reply", "time")
FULL = {"rates": (0.25, 0.5, 1.0, 2.0), "prompt": (16, 512), "output": (8, 256), "duration": 60.0}
# Batch size 1 saturates near 1 req/s on two cores: past 2 req/s its queue only grows (minutes of drain).
CPU = {"rates": (0.5, 1.0, 2.0, 4.0, 8.0), "prompt": (16, 128), "output": (8, 64), "duration": 40.0,
       "batch1_max_rate": 2.0}
QUICK = {"rates": (0.25, 1.0), "prompt": (16, 64), "output": (8, 32), "duration": 10.0}
TARGETS = {"throughput_at_saturation": 1.5, "ttft_p99_at_70pct": 1 / 3}


def server_args(config: str) -> list[str]:
    common = ["--task", "generate", "--model_id", MODEL_ID, "--cache_dir", str(CACHE / "shared"),
              "--max_new_tokens", "256", "--max_queue", "256"]
    if config == "continuous":
        return [*common, "--engine", "continuous", "--max_num_seqs", str(MAX_BATCH), "--kv_cache_memory_gb", "1",
                "--max_batch_tokens", "256"]
    size = MAX_BATCH if config == "static" else 1
    return [*common, "--engine", "static", "--max_batch_size", str(size), "--max_batch_latency_ms", "10"]


CONFIGS = ("continuous", "static", "batch-1")


@dataclass(frozen=True)
class Arrival:
    at_s: float
    prompt: str
    max_tokens: int


def workload(rate: float, duration_s: float, prompt: tuple[int, int], output: tuple[int, int],
             seed: int) -> list[Arrival]:
    """A seeded Poisson process: the same requests at the same offsets for every server."""
    rng = random.Random(seed)
    arrivals, t = [], rng.expovariate(rate)
    while t < duration_s:
        words = rng.randint(*prompt)  # one common word with a space is one token for SmolLM2's tokenizer
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        arrivals.append(Arrival(t, text, rng.randint(*output)))
        t += rng.expovariate(rate)
    return arrivals


@dataclass
class Outcome:
    ttft_s: list[float] = field(default_factory=list)
    tpot_s: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0
    first_error: str | None = None
    wall_s: float = 0.0


async def one(api: openai.AsyncOpenAI, arrival: Arrival, out: Outcome) -> None:
    sent = time.perf_counter()
    first: float | None = None
    tokens = 0
    try:
        stream = await api.completions.create(
            model=MODEL_NAME, prompt=arrival.prompt, max_tokens=arrival.max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text and first is None:
                first = time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    except openai.APIError as err:
        out.errors += 1
        out.first_error = out.first_error or f"{type(err).__name__}: {str(err)[:160]}"
        return
    done = time.perf_counter()
    out.tokens += tokens
    out.e2e_s.append(done - sent)
    if first is not None:
        out.ttft_s.append(first - sent)
        if tokens > 1:
            out.tpot_s.append((done - first) / (tokens - 1))


async def open_loop(url: str, arrivals: list[Arrival]) -> Outcome:
    out = Outcome()
    api = openai.AsyncOpenAI(base_url=f"{url}/openai/v1", api_key="none", timeout=1800, max_retries=0)
    start = time.perf_counter()

    async def at(arrival: Arrival) -> None:
        await asyncio.sleep(max(0.0, start + arrival.at_s - time.perf_counter()))
        await one(api, arrival, out)

    await asyncio.gather(*(at(a) for a in arrivals))
    out.wall_s = time.perf_counter() - start
    await api.close()
    return out


def summary(out: Outcome, requests: int) -> dict[str, Any]:
    ms = 1e3
    return {"requests": requests, "errors": out.errors, "tokens": out.tokens, "wall_s": out.wall_s,
            "tokens_per_s": out.tokens / out.wall_s if out.wall_s else math.nan,
            "ttft_p50_ms": percentile(out.ttft_s, 50) * ms, "ttft_p99_ms": percentile(out.ttft_s, 99) * ms,
            "tpot_p50_ms": percentile(out.tpot_s, 50) * ms,
            "e2e_p50_ms": percentile(out.e2e_s, 50) * ms, "e2e_p99_ms": percentile(out.e2e_s, 99) * ms,
            "first_error": out.first_error}


def run_config(config: str, plan: dict[float, list[Arrival]], max_rate: float) -> dict[float, dict[str, Any]]:
    results = {}
    with predictor(server_args(config), f"generate-serving-{config}") as (proc, _):
        pid = proc.process.pid if proc.process else None
        asyncio.run(open_loop(proc.url, workload(1.0, 2.0, (16, 32), (4, 8), seed=99)))  # warm the path
        for rate, arrivals in plan.items():
            if rate > max_rate:
                continue
            cpu = cpu_now(pid)
            out = asyncio.run(open_loop(proc.url, arrivals))
            results[rate] = {**summary(out, len(arrivals)), **cpu_usage(cpu, out.wall_s, pid)}
            print(f"{config} @ {rate}/s: {results[rate]}", flush=True)
    return results


def main() -> None:
    args = parse_args(__doc__)
    import torch

    shape = QUICK if args.quick else FULL if torch.cuda.is_available() else CPU
    duration = args.duration or shape["duration"]
    plan = {rate: workload(rate, duration, shape["prompt"], shape["output"], seed=int(rate * 1000))
            for rate in shape["rates"]}
    machine = machine_info()
    limit = {"batch-1": shape.get("batch1_max_rate", math.inf)}
    runs = {config: run_config(config, plan, limit.get(config, math.inf)) for config in CONFIGS}

    rows = []
    for rate in plan:
        for config in CONFIGS:
            if rate not in runs[config]:
                continue
            r = runs[config][rate]
            rows.append([f"{rate:g}", config, r["tokens_per_s"], r["ttft_p50_ms"], r["ttft_p99_ms"], r["tpot_p50_ms"],
                         r["e2e_p50_ms"], r["e2e_p99_ms"], f"{r['requests'] - r['errors']}/{r['requests']}",
                         f"{r['server_cores']:.2f} / {r['other_cores']:.2f}"])
    results = table(["req/s", "engine", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "e2e p50 ms",
                     "e2e p99 ms", "ok", "cores: server / other"], rows)

    # The static engine saturates where its tokens/s stops growing: take its best rate; 70% of its capacity
    # in requests/s is the rate of the plan nearest to it.
    static = runs["static"]
    saturating = max(plan, key=lambda rate: static[rate]["tokens_per_s"])
    per_request = sum(a.max_tokens for a in plan[saturating]) / max(len(plan[saturating]), 1)
    capacity = static[saturating]["tokens_per_s"] / per_request
    near_70 = min(plan, key=lambda rate: abs(rate - 0.7 * capacity))
    throughput = runs["continuous"][saturating]["tokens_per_s"] / static[saturating]["tokens_per_s"]
    ttft = runs["continuous"][near_70]["ttft_p99_ms"] / static[near_70]["ttft_p99_ms"]
    ratios = table(["ratio", "value", "target"], [
        [f"continuous / static tokens/s at {saturating:g} req/s (static's best)", f"{throughput:.2f}x",
         check(throughput, TARGETS["throughput_at_saturation"])],
        [f"continuous / static TTFT p99 at {near_70:g} req/s (~70% of static's {capacity:.2f} req/s)", f"{ttft:.2f}x",
         check(ttft, TARGETS["ttft_p99_at_70pct"], at_most=True)],
    ])
    notes = (f"Poisson arrivals for {duration:g}s per rate (requests in flight then finish and count), prompts of "
             f"{shape['prompt'][0]}-{shape['prompt'][1]} words (~tokens), max_tokens {shape['output'][0]}-"
             f"{shape['output'][1]} with ignore_eos, greedy, streamed. Static batches up to {MAX_BATCH}; continuous "
             f"runs up to {MAX_BATCH} sequences.")
    other = {f"{config} @ {rate:g}": r["other_cores"] for config in CONFIGS for rate, r in runs[config].items()}
    errors = [f"{c} @ {rate:g}: {r['first_error']}" for c in CONFIGS for rate, r in runs[c].items() if r["first_error"]]
    notes += "\n\n" + noise_note(other) + ("\n\nFirst errors: " + "; ".join(errors) if errors else "")
    report("Generation serving: continuous vs static vs batch size 1", machine, [notes, results, ratios],
           "generate_serving", {"shape": shape, "duration_s": duration, "runs": runs,
                                "ratios": {"throughput": throughput, "ttft_p99": ttft, "saturating_rate": saturating,
                                           "rate_near_70pct": near_70}})


if __name__ == "__main__":
    main()
