"""EarlyLoad: the first load starts when it is made; readiness still waits for it to end. And the start-up
clock the ``import`` phase is read from."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from predictors.batcher import BatcherConfig
from predictors.loading import LoadReport
from predictors.metrics import PredictorMetrics
from predictors.model import BatchedModel
from predictors.preload import EarlyLoad
from tests.predictors.test_model import UpperTask


class CountingLoad:
    """Records the thread of each load; the first waits at ``gate`` and can be made to fail."""

    def __init__(self, fail_first: bool = False) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.threads: list[str] = []
        self._fail_first = fail_first

    def __call__(self) -> int:
        self.threads.append(threading.current_thread().name)
        self.started.set()
        if len(self.threads) == 1:
            assert self.gate.wait(10)
            if self._fail_first:
                raise OSError("model.safetensors: truncated")
        return len(self.threads)


def test_the_first_load_starts_on_its_own_thread_before_any_call_and_the_first_call_takes_its_result() -> None:
    load = CountingLoad()
    early = EarlyLoad(load, name="early")
    assert load.started.wait(10), "the load started without being called"
    load.gate.set()
    assert early() == 1
    assert load.threads == ["early"]


def test_a_later_call_a_reload_loads_anew_on_the_callers_thread() -> None:
    load = CountingLoad()
    load.gate.set()
    early = EarlyLoad(load, name="early")
    assert early() == 1
    assert early() == 2
    assert load.threads == ["early", threading.current_thread().name]


def test_a_failed_early_load_raises_at_the_first_call_and_the_next_call_loads_again() -> None:
    load = CountingLoad(fail_first=True)
    early = EarlyLoad(load)
    load.gate.set()
    with pytest.raises(OSError, match="truncated"):
        early()
    assert early() == 2


async def test_a_model_loading_early_is_not_ready_until_the_load_ends_and_requests_wait_for_it() -> None:
    task = UpperTask()
    started, gate = threading.Event(), threading.Event()

    def load() -> tuple[Any, LoadReport]:
        started.set()
        assert gate.wait(10)
        return task, LoadReport(path=Path("."), phases={"load": 0.01})

    early = EarlyLoad(load)
    assert started.wait(10), "loading before the model (and the server) exists"
    model = BatchedModel("upper", early, BatcherConfig(max_batch_size=4, max_batch_latency_ms=5), load_wait_s=30,
                         retry_after_s=3, tracer=TracerProvider().get_tracer("test"),
                         metrics=PredictorMetrics(CollectorRegistry()))
    loading = asyncio.ensure_future(model.load_in_background())
    waiting = asyncio.ensure_future(model.infer_items(["a"], {}))
    await asyncio.sleep(0.05)
    assert not model.ready and not waiting.done()
    gate.set()
    await loading
    assert model.ready and await waiting == ["A"]
    await model.close()


def test_the_start_up_clock_counts_from_the_process_start_not_from_a_rounded_boot_time() -> None:
    code = "from predictors.__main__ import _seconds_since_process_start as s; print(s())"
    spawned = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lived = time.monotonic() - spawned
    # The child cannot have lived longer than the parent saw it (plus one clock tick); a boot time
    # rounded to whole seconds (psutil's create_time) made it look up to a second older.
    assert 0 < float(done.stdout) <= lived + 0.01
