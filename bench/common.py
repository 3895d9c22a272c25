"""Shared benchmark helpers: machine info, percentiles, results, servers and a closed-loop load generator."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import math
import os
import platform
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CACHE = RESULTS / "cache"
LOGS = RESULTS / "logs"
MODEL_NAME = "model"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/, not the repo root, on sys.path
    sys.path.insert(0, str(ROOT))

from serving.launch import PredictorProcess  # noqa: E402

Payload = Callable[[int], dict[str, Any]]
Units = Callable[[dict[str, Any]], int]


def parse_args(
    description: str | None, *, load: bool = True, switches: Sequence[tuple[str, str]] = (),
    paths: Sequence[tuple[str, str]] = (),
) -> argparse.Namespace:
    """The common flags, and a bench's own on/off ``switches`` and optional ``paths`` as (flag, help) pairs."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    for flag, help_text in switches:
        p.add_argument(flag, action="store_true", help=help_text)
    for flag, help_text in paths:
        p.add_argument(flag, type=Path, metavar="DIR", help=help_text)
    if load:
        p.add_argument("--duration", type=float, help="seconds of load per configuration (overrides the default)")
    else:
        p.add_argument("--repeats", type=int, help="repetitions (overrides the default)")
    return p.parse_args()


def machine_info() -> dict[str, Any]:
    import torch

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda_device": cuda, "python": platform.python_version()}


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return "n/a" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    stamped = {"benchmark": name, "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **data}
    path.write_text(json.dumps(stamped, indent=2, default=str) + "\n")
    return path


def report(title: str, machine: dict[str, Any], sections: Sequence[str], name: str, data: dict[str, Any]) -> None:
    """Print the markdown report and write ``bench/results/<name>.json``."""
    print(f"## {title}\n\n{table(['machine', 'value'], list(machine.items()))}\n")
    for section in sections:
        print(section + "\n")
    print(f"results: {write_results(name, {'machine': machine, **data}).relative_to(ROOT)}")


def check(value: float, target: float, *, at_most: bool = False) -> str:
    met = value <= target if at_most else value >= target
    return f"{'<=' if at_most else '>='} {target:g}x: {'met' if met else 'MISSED'}"


def scrape_metrics(url: str) -> dict[str, float]:
    """``{url}/metrics`` as ``{'name{label="v"}': value}`` for every sample."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


@contextmanager
def predictor(args: Sequence[str], log_name: str, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Iterator[tuple[PredictorProcess, float]]:
    """A running predictor server (from the source tree ``cwd``, default this one) and its seconds from
    process start to ready; stopped on exit."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{log_name}.log"
    log_path.unlink(missing_ok=True)
    proc = PredictorProcess(list(args), model_name=MODEL_NAME, log_path=log_path, env=dict(env or {}), cwd=cwd).start()
    try:
        yield proc, proc.wait_ready()
    finally:
        proc.stop()


def post_json(url: str, body: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    response = httpx.post(url, json=body, timeout=timeout)
    response.raise_for_status()
    return response.json()


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    units: int = 0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    first_error: str | None = None

    def summary(self) -> dict[str, Any]:
        wall = self.wall_s or math.nan
        return {"requests": self.requests, "errors": self.errors, "units": self.units, "wall_s": self.wall_s,
                "requests_per_s": self.requests / wall, "units_per_s": self.units / wall,
                "p50_ms": percentile(self.latencies_s, 50) * 1e3, "p99_ms": percentile(self.latencies_s, 99) * 1e3,
                "first_error": self.first_error}


async def closed_loop(
    url: str, payload: Payload, *, clients: int, duration_s: float | None = None, per_client: int | None = None,
    units: Units | None = None, timeout_s: float = 600.0,
) -> LoadResult:
    """``clients`` workers each post back-to-back until ``duration_s`` passed or ``per_client`` were sent.

    Requests in flight at the deadline finish and count; wall time runs to the last answer.
    ``units`` maps a response body to work done (default: 1 per request, and the body is not parsed).
    Each worker has its own one-connection ``AsyncClient``: one shared pool of 64 connections costs
    httpx ~7 ms of CPU per request (vs ~0.6 ms), which made the load generator the bottleneck.
    """
    if duration_s is None and per_client is None:
        raise ValueError("give duration_s or per_client")
    result = LoadResult()
    numbers = itertools.count()
    headers = {"content-type": "application/json"}
    tls = ssl.create_default_context()  # built once: each client loading the CA bundle costs ~20 ms of CPU
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    pool = [httpx.AsyncClient(limits=limits, timeout=timeout_s, verify=tls) for _ in range(clients)]
    start = time.perf_counter()
    deadline = start + duration_s if duration_s is not None else math.inf

    async def worker(client: httpx.AsyncClient) -> None:
        sent = 0
        async with client:
            while (per_client is None or sent < per_client) and time.perf_counter() < deadline:
                sent += 1
                body = json.dumps(payload(next(numbers))).encode()
                t0 = time.perf_counter()
                try:
                    response = await client.post(url, content=body, headers=headers)
                except httpx.HTTPError as err:  # the server is gone or stuck: stop this worker
                    result.errors += 1
                    result.first_error = result.first_error or f"{type(err).__name__}: {err}"
                    return
                if response.status_code != 200:
                    result.errors += 1
                    result.first_error = result.first_error or f"HTTP {response.status_code}: {response.text[:200]}"
                    continue
                result.latencies_s.append(time.perf_counter() - t0)
                result.requests += 1
                result.units += units(response.json()) if units else 1

    await asyncio.gather(*(worker(client) for client in pool))
    result.wall_s = time.perf_counter() - start
    return result


def cpu_now(pid: int | None) -> tuple[float, float, float, float]:
    """(machine busy CPU-s over all cores, CPU-s of ``pid``, CPU-s of this process, CPU-s of ``pid``'s main
    thread: a server's event loop)."""
    import psutil

    t = psutil.cpu_times()
    machine = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    child, main_thread = 0.0, 0.0
    if pid:
        process = psutil.Process(pid)
        child = sum(process.cpu_times()[:2])
        main_thread = next((th.user_time + th.system_time for th in process.threads() if th.id == pid), 0.0)
    return machine, child, time.process_time(), main_thread


def cpu_usage(start: tuple[float, float, float, float], wall_s: float, pid: int | None) -> dict[str, float]:
    """Average cores used during ``wall_s`` by the server (``loop_cores``: its main thread), this load
    generator and everything else."""
    machine, server, client, loop = (b - a for a, b in zip(start, cpu_now(pid), strict=True))
    return {"server_cores": server / wall_s, "client_cores": client / wall_s,
            "other_cores": max(0.0, machine - server - client) / wall_s, "loop_cores": loop / wall_s}


def noise_note(other_cores: dict[str, float], limit: float = 0.25) -> str:
    """A warning naming the measurements during which other processes used more than ``limit`` cores."""
    busy = [f"{v:.2f} cores during {k}" for k, v in other_cores.items() if v > limit]
    if not busy:
        return f"Other processes used under {limit:g} cores during every measurement."
    return f"**WARNING: the machine was shared: other processes used {', '.join(busy)}; do not trust those numbers.**"


def load_notes(runs: Sequence[dict[str, Any]], other_cores: dict[str, float] | None = None) -> str:
    """The noise warning (over ``bench_server`` results and ``other_cores``) and each run's first error."""
    lines = [noise_note({r["config"]: r["other_cores"] for r in runs} | (other_cores or {}))]
    return "\n\n".join(lines + [f"{r['config']} first error: {r['first_error']}" for r in runs if r["first_error"]])


def mean_batch(before: dict[str, float], after: dict[str, float]) -> float:
    """Mean ``kzero_batch_size`` between two scrapes."""
    count, total = (after.get(k, 0.0) - before.get(k, 0.0)
                    for k in (f'kzero_batch_size_{s}{{model="{MODEL_NAME}"}}' for s in ("count", "sum")))
    return total / count if count else math.nan


def load_headers(unit: str) -> list[str]:
    return [f"{unit}/s", "p50 ms", "p99 ms", "mean batch", "requests", "errors",
            "cores: server (its event loop) / client / other"]


def load_row(r: dict[str, Any]) -> list[Any]:
    """The cells under ``load_headers`` for one ``bench_server`` result."""
    cores = f"{r['server_cores']:.2f} ({r['loop_cores']:.2f}) / {r['client_cores']:.2f} / {r['other_cores']:.2f}"
    return [r["units_per_s"], r["p50_ms"], r["p99_ms"], r["mean_batch"], r["requests"], r["errors"], cores]


def bench_server(
    args: Sequence[str], label: str, payload: Payload, *, clients: int, duration_s: float,
    warmup_clients: int, units: Units | None = None, probe: Callable[[str], Any] | None = None,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """Start a server, ``probe(its predict URL)`` it, warm it with one round of ``warmup_clients`` requests,
    load it, stop it."""
    with predictor(args, label, cwd=cwd) as (proc, ready_s):
        url = f"{proc.url}/v1/models/{MODEL_NAME}:predict"
        probed = probe(url) if probe else None
        warm = asyncio.run(closed_loop(url, payload, clients=warmup_clients, per_client=1, units=units))
        if warm.errors:
            raise RuntimeError(f"{label}: warm-up failed: {warm.first_error}; see {proc.log_path}")
        before, pid = scrape_metrics(proc.url), proc.process.pid if proc.process else None
        cpu = cpu_now(pid)
        result = asyncio.run(closed_loop(url, payload, clients=clients, duration_s=duration_s, units=units))
        cpu_used = cpu_usage(cpu, result.wall_s, pid)
        after = scrape_metrics(proc.url)
    return {"config": label, "args": list(args), "ready_s": ready_s, "clients": clients,
            "duration_s": duration_s, "mean_batch": mean_batch(before, after), "probe": probed,
            **cpu_used, **result.summary()}
