"""Resolve a model source, convert GGUF once, load the task's engine and warm it up, timing each phase."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from predictors.config import PredictorConfig
from predictors.device import resolve_placement
from predictors.errors import ModelLoadError
from predictors.gguf_cache import ensure_safetensors
from predictors.tasks import TaskAdapter, task_loaders
from serving.packaged import resolve_packaged

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    path: Path
    from_cache: bool | None = None
    phases: dict[str, float] = field(default_factory=dict)


def source_of(config: PredictorConfig) -> tuple[Path, str | None]:
    if config.model_id is not None:
        return resolve_packaged(config.model_id).location()
    assert config.model_dir is not None
    if not config.model_dir.is_dir():
        raise ModelLoadError(f"model_dir {config.model_dir} is not a directory")
    return config.model_dir, config.gguf_file


def load_task(config: PredictorConfig) -> tuple[TaskAdapter[Any, Any], LoadReport]:
    """Blocking; run it off the event loop."""
    placement = resolve_placement(config.device, config.dtype)
    model_dir, gguf_file = source_of(config)
    report = LoadReport(path=model_dir)
    started = time.perf_counter()
    if gguf_file is not None:
        report.path, report.from_cache = ensure_safetensors(model_dir, gguf_file, config.cache_dir)
        report.phases["convert" if not report.from_cache else "cache_lookup"] = time.perf_counter() - started
    mark = time.perf_counter()
    load_task = task_loaders(config.generation, embed_graph=config.embed_graph)[config.task]
    task = load_task(report.path, placement, config.limits)
    report.phases["load"] = time.perf_counter() - mark
    if config.lora:  # the config allows adapters only with the static generate engine
        mark = time.perf_counter()
        for adapter in config.lora:
            task.engine.adapters.load(adapter.name, adapter.path)
        report.phases["adapters"] = time.perf_counter() - mark
    mark = time.perf_counter()
    task.engine.warmup()
    report.phases["warmup"] = time.perf_counter() - mark
    log.info(
        "model %s loaded from %s on %s/%s: %s",
        config.model_name, report.path, placement.device, str(placement.dtype).removeprefix("torch."),
        ", ".join(f"{k} {v:.2f}s" for k, v in report.phases.items()),
    )
    return task, report
