"""Embedding throughput: adaptive batching vs one text per forward pass vs the raw in-process model limit.

64 closed-loop clients each post one short text per request to (a) a server batching up to 64 texts
within 5 ms and (b) the same server with ``--max_batch_size 1``. Then, with no server running, (c)
``EmbedEngine.run_batch`` is timed in this process over several batch sizes; its best texts/s is the
ceiling that the batched server is compared against.

``--baseline DIR`` also runs both server configs from another source tree (``git archive`` of the code
before a change), each right after the same config from this tree, so before and after come from one run.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from common import (
    bench_server,
    check,
    cpu_now,
    cpu_usage,
    load_headers,
    load_notes,
    load_row,
    machine_info,
    parse_args,
    post_json,
    report,
    table,
)

MODEL_ID = "all-minilm-l6-v2"
TEXT = "sentence number {i} about kafka and kserve"
CLIENTS = 64
RAW_BATCH_SIZES = (1, 8, 16, 32, 64, 128)
CONFIGS = {"batched": 64, "unbatched": 1}  # --max_batch_size
TARGETS = {"cpu": (4.0, 0.6), "gpu": (10.0, 0.6)}  # batched/unbatched, batched/raw (issue 16)


def server_args(max_batch_size: int) -> list[str]:
    return ["--task", "embed", "--model_id", MODEL_ID, "--max_batch_size", str(max_batch_size),
            "--max_batch_latency_ms", "5"]


def payload(i: int) -> dict[str, Any]:
    return {"instances": [TEXT.format(i=i)]}


def probe(url: str) -> int:
    """Two texts in one request come back as two vectors; returns the embedding dimension."""
    body = post_json(url, {"instances": [TEXT.format(i=0), TEXT.format(i=1)]})
    vectors = body["predictions"]
    if len(vectors) != 2 or not all(isinstance(x, float) for x in vectors[0]):
        raise RuntimeError(f"unexpected embed response: {str(body)[:200]}")
    return len(vectors[0])


def raw_limit(seconds_per_size: float) -> list[dict[str, Any]]:
    """texts/s of ``EmbedEngine.run_batch`` in this process, per batch size: one batch at a time on all
    threads, and (on a CPU with 2+ cores) the server's layout too, two batches side by side on half the
    threads each; where the engine runs a traced encoder, the eager engine too. The limit is the best row."""
    import threading

    import torch
    from transformers.utils import logging as hf_logging

    from predictors.device import resolve_placement
    from predictors.engines.embed import EmbedEngine
    from serving.packaged import resolve_packaged

    hf_logging.disable_progress_bar()
    placement = resolve_placement("auto", "auto")
    path = resolve_packaged(MODEL_ID).location()[0]
    engine = EmbedEngine.load(path, placement)
    engines = [engine, EmbedEngine.load(path, placement, graph=False)] if engine.graph else [engine]
    threads = torch.get_num_threads()
    layouts = [1, 2] if engine.parallel_batches > 1 else [1]
    rows = []
    for engine, side_by_side in itertools.product(engines, layouts):
        engine.warmup()
        torch.set_num_threads(max(1, threads // side_by_side))
        for size in RAW_BATCH_SIZES:
            engine.run_batch([TEXT.format(i=i) for i in range(size)])  # warm this shape
            counts = [0] * side_by_side
            started, cpu = time.perf_counter(), cpu_now(None)

            def loop(k: int, size: int = size, started: float = started, counts: list[int] = counts,
                     engine: EmbedEngine = engine) -> None:
                while time.perf_counter() - started < seconds_per_size or counts[k] < 3:
                    first = (counts[k] * len(counts) + k) * size
                    engine.run_batch([TEXT.format(i=first + i) for i in range(size)])
                    counts[k] += 1

            workers = [threading.Thread(target=loop, args=(k,)) for k in range(side_by_side)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            elapsed = time.perf_counter() - started
            batches = sum(counts)
            rows.append({"encoder": "graph" if engine.graph else "eager", "batch_size": size,
                         "side_by_side": side_by_side, "torch_threads": torch.get_num_threads(),
                         "batches": batches, "seconds": elapsed, "texts_per_s": batches * size / elapsed,
                         "ms_per_batch": elapsed / batches * side_by_side * 1e3,
                         "other_cores": cpu_usage(cpu, elapsed, None)["other_cores"]})
    torch.set_num_threads(threads)
    return rows


def cpu_ceiling(batched: dict[str, Any], best_raw: dict[str, Any], cores: int) -> float:
    """The most the batched server could reach, as a fraction of the raw limit, if every core were busy and
    each text cost only the raw model's CPU plus what this run measured per request for the server's
    event loop and the load generator (both on these cores): cores / (model + loop + client) CPU-s per text."""
    per_request = (batched["loop_cores"] + batched["client_cores"]) / batched["requests_per_s"]
    model = cores / best_raw["texts_per_s"]  # the raw limit keeps every core busy
    return cores / (model + per_request) / best_raw["texts_per_s"]


def main() -> None:
    args = parse_args(__doc__, paths=[("--baseline", "also run both servers from this source tree")])
    duration = args.duration or (3.0 if args.quick else 20.0)
    raw_seconds = 0.5 if args.quick else 2.0
    machine = machine_info()
    trees = {"": None, " (baseline)": args.baseline} if args.baseline else {"": None}
    runs = {
        label + suffix: bench_server(server_args(size), f"embed-{label}{suffix and '-baseline'}", payload,
                                     clients=CLIENTS, duration_s=duration, warmup_clients=CLIENTS, probe=probe,
                                     cwd=tree)
        for label, size in CONFIGS.items() for suffix, tree in trees.items()
    }
    raw = raw_limit(raw_seconds)  # after the servers stopped, so nothing competes for the cores
    best_raw = max(raw, key=lambda r: r["texts_per_s"])
    kind = "gpu" if machine["cuda_device"] else "cpu"
    target_unbatched, target_raw = TARGETS[kind]
    ratios, ratio_rows = {}, []
    for suffix in trees:
        batched, unbatched = runs["batched" + suffix], runs["unbatched" + suffix]
        vs_unbatched = batched["requests_per_s"] / unbatched["requests_per_s"]
        vs_raw = batched["requests_per_s"] / best_raw["texts_per_s"]
        tree_ratios = ratios[suffix.strip(" ()") or "this tree"] = {"batched_over_unbatched": vs_unbatched,
                                                                    "batched_over_raw": vs_raw}
        ratio_rows += [[f"batched / unbatched{suffix}", f"{vs_unbatched:.2f}x", check(vs_unbatched, target_unbatched)],
                       [f"batched / raw limit{suffix}", f"{vs_raw:.2f}x", check(vs_raw, target_raw)]]
        if kind == "cpu":
            ceiling = cpu_ceiling(batched, best_raw, machine["cores"])
            tree_ratios["cpu_ceiling_over_raw"] = ceiling
            ratio_rows.append([f"ceiling of batched / raw limit{suffix} (see the notes)", f"{ceiling:.2f}x", ""])

    sizes = {label + suffix: size for label, size in CONFIGS.items() for suffix in trees}
    server_table = table(
        ["config", "max_batch_size", *load_headers("texts")],
        [[r["config"], sizes[label], *load_row(r)] for label, r in runs.items()],
    )
    raw_table = table(["encoder", "raw batch size", "batches side by side", "torch threads each", "texts/s",
                       "ms/batch", "other cores"],
                      [[r["encoder"], r["batch_size"], r["side_by_side"], r["torch_threads"], r["texts_per_s"],
                        r["ms_per_batch"], r["other_cores"]] for r in raw])
    ratio_table = table(["ratio", "value", f"target ({kind})"], ratio_rows)
    notes = (f"{CLIENTS} clients, one text per request, {duration:g}s per server config; embedding dim "
             f"{runs['batched']['probe']}; raw limit = best of batch sizes {list(RAW_BATCH_SIZES)}, "
             f"one batch at a time or side by side, traced or eager encoder ({best_raw['texts_per_s']:,.0f} "
             f"texts/s at {best_raw['batch_size']}, {best_raw['side_by_side']} at a time, {best_raw['encoder']})")
    raw_busy = {f"raw {r['encoder']} batch {r['batch_size']} x{r['side_by_side']}": r["other_cores"] for r in raw}
    notes += "\n\n" + load_notes(list(runs.values()), raw_busy)
    notes += ("\n\nThe ceiling row: if every core were busy and each text cost only the raw model's CPU plus the "
              "event loop's and the load generator's CPU per request measured in the batched run, the batched "
              "server would reach that fraction of the raw limit.")
    report("Embedding: adaptive batching", machine, [notes, server_table, raw_table, ratio_table], "embed_batching",
           {"clients": CLIENTS, "duration_s": duration, "servers": runs, "raw": raw, "raw_best": best_raw,
            "baseline_tree": str(args.baseline) if args.baseline else None, "ratios": ratios,
            "targets": {"kind": kind, "batched_over_unbatched": target_unbatched, "batched_over_raw": target_raw}})


if __name__ == "__main__":
    main()
