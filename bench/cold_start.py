"""Cold start of the generate predictor: process start until ``/v2/health/ready`` answers 200.

(i) the first start with an empty cache directory (the GGUF file is dequantized and saved as
safetensors), (ii) starts with that cache filled, and (iii) the floor: a fresh interpreter that only
imports torch, transformers and kserve and loads the cached ``model.safetensors``, timed from the
parent like the server starts. Cached starts and floor runs alternate so both see the same page cache.

``--baseline DIR`` also starts the server from another source tree (the code before a change, e.g.
``git archive COMMIT | tar -x -C DIR``) with the same cache, alternating with this tree's starts, so a
change's before and after come from one run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common import (
    CACHE,
    check,
    cpu_now,
    cpu_usage,
    machine_info,
    median,
    noise_note,
    parse_args,
    predictor,
    report,
    scrape_metrics,
    table,
)

MODEL_ID = "smollm2-135m-instruct"
CACHE_DIR = CACHE / "cold_start"  # emptied at every run
ARGS = ["--task", "generate", "--model_id", MODEL_ID, "--cache_dir", str(CACHE_DIR)]
TARGET = 1.25  # cached start / floor, at most (issue 16, CPU)
GAUGE = "kzero_cold_start_seconds"
PHASES = ("import", "convert", "cache_lookup", "load", "warmup")  # in the order they happen
FLOOR = "import sys, torch, transformers, kserve\nfrom safetensors.torch import load_file\nload_file(sys.argv[1])"


@dataclass
class Start:
    start: str
    ready_s: float
    phases: dict[str, float]
    """The ``kzero_cold_start_seconds`` gauges by phase."""
    other_cores: float
    """Average cores that other processes used meanwhile: noise."""

    def row(self, names: list[str]) -> list[object]:
        unaccounted = self.ready_s - sum(self.phases.values())
        return [self.start, self.ready_s, *(self.phases.get(n) for n in names), unaccounted, self.other_cores]


def server_start(label: str, tree: Path | None = None) -> Start:
    """One server start (from the source tree ``tree``, default this one) until ready, then its start-up gauges."""
    before = cpu_now(None)
    with predictor(ARGS, f"cold-{label}", cwd=tree) as (proc, ready_s):
        other = cpu_usage(before, ready_s, proc.process.pid if proc.process else None)["other_cores"]
        metrics = scrape_metrics(proc.url)
    phases = {key.split('phase="', 1)[1].rstrip('"}'): value for key, value in metrics.items()
              if key.startswith(GAUGE + "{")}
    return Start(label, ready_s, phases, other)


def cached_safetensors() -> Path:
    from predictors.gguf_cache import is_complete

    found = [p for p in sorted(CACHE_DIR.glob("gguf/*/model.safetensors")) if is_complete(p.parent)]
    if len(found) != 1:
        raise RuntimeError(f"expected one complete cache with model.safetensors under {CACHE_DIR}/gguf, got {found}")
    return found[0]


def floor_once(weights: Path) -> tuple[float, float]:
    """Seconds from spawning a fresh interpreter until it imported the stack and loaded the weights,
    and the average cores other processes used meanwhile."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    before, children = cpu_now(None), os.times()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", FLOOR, str(weights)], env=env, check=True)
    seconds = time.perf_counter() - started
    child = sum(os.times()[2:4]) - sum(children[2:4])
    return seconds, max(0.0, cpu_usage(before, seconds, None)["other_cores"] - child / seconds)


def main() -> None:
    args = parse_args(__doc__, load=False, paths=[("--baseline", "also start the server from this source tree "
                                                                  "(the code before a change), side by side")])
    repeats = args.repeats or (1 if args.quick else 3)
    machine = machine_info()
    shutil.rmtree(CACHE_DIR, ignore_errors=True)
    first = server_start("empty-cache")
    weights = cached_safetensors()
    cached: list[Start] = []
    baseline: list[Start] = []
    floor: list[float] = []
    floor_other: list[float] = []
    for i in range(repeats):
        cached.append(server_start(f"cached-{i + 1}"))
        if args.baseline:
            baseline.append(server_start(f"baseline-{i + 1}", args.baseline))
        seconds, other = floor_once(weights)
        floor.append(seconds)
        floor_other.append(other)

    cached_median, floor_median = median([s.ready_s for s in cached]), median(floor)
    ratio = cached_median / floor_median
    starts = [first, *cached, *baseline]
    seen = {name for s in starts for name in s.phases}
    names = [n for n in PHASES if n in seen] + sorted(seen - set(PHASES))
    median_phases = {n: median([s.phases[n] for s in cached if n in s.phases]) for n in names if n in cached[0].phases}
    starts_table = table(["start", "ready s", *(f"{n} s" for n in names), "not in a phase s", "other cores"],
                         [s.row(names) for s in starts])
    summary_rows = [["(i) first start, empty cache", first.ready_s, 1],
                    ["(ii) start with cache filled", cached_median, repeats],
                    ["(iii) floor: import torch+transformers+kserve, load_file", floor_median, repeats]]
    ratio_rows = [["cached start / floor", f"{ratio:.2f}x", check(ratio, TARGET, at_most=True)]]
    baseline_median = median([s.ready_s for s in baseline]) if baseline else None
    if baseline_median is not None:
        summary_rows.append([f"(ii) from the baseline tree {args.baseline}", baseline_median, repeats])
        ratio_rows.append(["baseline cached start / floor", f"{baseline_median / floor_median:.2f}x",
                           check(baseline_median / floor_median, TARGET, at_most=True)])
    summary_table = table(["measure", "seconds (median)", "runs"], summary_rows)
    ratio_table = table(["ratio", "value", "target"], ratio_rows)
    gauges_table = table([f"{GAUGE}{{phase}} (cached starts, median)", "seconds"],
                         [[n, v] for n, v in median_phases.items()])
    notes = (f"model {MODEL_ID}; weights {weights.relative_to(CACHE_DIR)} "
             f"({weights.stat().st_size / 2**20:,.0f} MiB); floor runs {[round(f, 2) for f in floor]} s "
             f"while other processes used {[round(o, 2) for o in floor_other]} cores\n\n")
    notes += noise_note({s.start: s.other_cores for s in starts}
                        | {f"floor-{i + 1}": o for i, o in enumerate(floor_other)})
    report("Cold start: generate predictor", machine,
           [notes, summary_table, ratio_table, starts_table, gauges_table], "cold_start",
           {"model_id": MODEL_ID, "repeats": repeats, "first": asdict(first), "cached": [asdict(s) for s in cached],
            "baseline_tree": str(args.baseline) if args.baseline else None,
            "baseline": [asdict(s) for s in baseline],
            "floor_s": floor, "floor_other_cores": floor_other,
            "medians": {"first_s": first.ready_s, "cached_s": cached_median, "floor_s": floor_median,
                        "baseline_s": baseline_median},
            "cached_phases_median": median_phases, "ratio_cached_over_floor": ratio, "target_at_most": TARGET})

if __name__ == "__main__":
    main()
