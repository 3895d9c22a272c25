"""Generation throughput: adaptive batching vs one prompt per ``generate`` call.

16 closed-loop clients each post one prompt per request (greedy, 32 new tokens) to a server that
batches up to 16 prompts within 10 ms and to the same server with ``--max_batch_size 1``.
Throughput is completion tokens (from each response's ``usage``) per second of wall time.
"""

from __future__ import annotations

from typing import Any

from common import (
    CACHE,
    bench_server,
    check,
    load_headers,
    load_notes,
    load_row,
    machine_info,
    parse_args,
    post_json,
    report,
    table,
)

MODEL_ID = "smollm2-135m-instruct"
CLIENTS = 16
MAX_NEW_TOKENS = 32
CONFIGS = {"batched": 16, "unbatched": 1}  # --max_batch_size
TARGETS = {"cpu": 3.0, "gpu": 8.0}  # batched/unbatched tokens/s
TOPICS = ("kafka", "kserve", "batching", "tokenizers", "GPUs", "queues", "latency", "caching")


def server_args(max_batch_size: int) -> list[str]:
    return ["--task", "generate", "--model_id", MODEL_ID, "--cache_dir", str(CACHE / "shared"),
            "--max_batch_size", str(max_batch_size), "--max_batch_latency_ms", "10"]


def payload(i: int) -> dict[str, Any]:
    topic = TOPICS[i % len(TOPICS)]
    prompt = f"Request {i}: write two sentences about {topic} for a reader who knows {TOPICS[(i // 8) % 8]}."
    return {"instances": [{"prompt": prompt}], "parameters": {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 0}}


def completion_tokens(body: dict[str, Any]) -> int:
    return sum(int(p["usage"]["completion_tokens"]) for p in body["predictions"])


def probe(url: str) -> dict[str, Any]:
    """One request; returns its prediction as a sample of what the model says."""
    prediction = post_json(url, payload(0))["predictions"][0]
    if not isinstance(prediction.get("text"), str) or prediction["usage"]["completion_tokens"] < 1:
        raise RuntimeError(f"unexpected generate response: {str(prediction)[:200]}")
    return prediction


def main() -> None:
    args = parse_args(__doc__)
    duration = args.duration or (5.0 if args.quick else 30.0)
    machine = machine_info()
    runs = {
        label: bench_server(server_args(size), f"generate-{label}", payload, clients=CLIENTS, duration_s=duration,
                            warmup_clients=min(CLIENTS, size), units=completion_tokens, probe=probe)
        for label, size in CONFIGS.items()
    }
    batched, unbatched = runs["batched"], runs["unbatched"]
    ratio = batched["units_per_s"] / unbatched["units_per_s"]
    kind = "gpu" if machine["cuda_device"] else "cpu"

    server_table = table(
        ["config", "max_batch_size", *load_headers("tokens"), "tokens/request"],
        [[r["config"], size, *load_row(r), r["units"] / max(r["requests"], 1)]
         for size, r in zip(CONFIGS.values(), runs.values(), strict=True)],
    )
    ratio_table = table(["ratio", "value", f"target ({kind})"],
                        [["batched / unbatched tokens/s", f"{ratio:.2f}x", check(ratio, TARGETS[kind])]])
    sample = batched["probe"]
    notes = (f"{CLIENTS} clients, one prompt per request, max_new_tokens {MAX_NEW_TOKENS}, temperature 0, "
             f"{duration:g}s of load per config (in-flight requests then finish and count). "
             f"Sample completion ({sample['usage']['completion_tokens']} tokens, {sample['finish_reason']}): "
             f"{sample['text'].strip()[:120]!r}")
    notes += "\n\n" + load_notes(list(runs.values()))
    report("Generation: adaptive batching", machine, [notes, server_table, ratio_table], "generate_batching",
           {"clients": CLIENTS, "max_new_tokens": MAX_NEW_TOKENS, "duration_s": duration, "servers": runs,
            "ratio": ratio, "target": {"kind": kind, "batched_over_unbatched": TARGETS[kind]}})


if __name__ == "__main__":
    main()
