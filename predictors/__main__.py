"""``python -m predictors``: one KServe model server with one batched predictor."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError


class _AppendAdapter(argparse.Action):
    """``--lora NAME=PATH``, repeatable, into a tuple (the config's default is the empty tuple)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any,
                 option: str | None = None) -> None:
        name, sep, path = str(value).partition("=")
        if not sep or not name or not path:
            parser.error(f"{option} {value!r}: expected NAME=PATH (an adapter name and its directory)")
        setattr(namespace, self.dest, (*getattr(namespace, self.dest), (name, Path(path))))


def build_parser() -> argparse.ArgumentParser:
    from predictors.batcher import BatcherConfig
    from predictors.config import Dtype, EngineConfig, EngineKind, LimitsConfig, PredictorConfig, Task
    from serving.auth import add_api_keys_argument
    from serving.defaults import default_of, flag
    from serving.limits import add_limit_arguments

    def default(field: str) -> Any:
        return default_of(PredictorConfig, field)

    p = argparse.ArgumentParser(prog="python -m predictors", description=__doc__)
    p.add_argument("--model_name", default=default("model_name"), help="name on the endpoint paths")
    p.add_argument("--http_port", type=int, default=default("http_port"))
    p.add_argument("--grpc_port", type=int, default=default("grpc_port"))
    p.add_argument("--enable_grpc", type=flag, default=default("enable_grpc"))
    p.add_argument("--workers", type=int, default=default("workers"),
                   help="must be 1: scale with replicas (kserve#3662)")
    p.add_argument("--task", choices=get_args(Task), required=True)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_dir", type=Path, help="a local model directory")
    source.add_argument("--model_id", help="a packaged model: all-minilm-l6-v2, smollm2-135m-instruct")
    p.add_argument("--gguf_file", help="GGUF file inside --model_dir (converted once to a safetensors cache)")
    p.add_argument("--device", default=default("device"), help="auto | cpu | cuda[:N]")
    p.add_argument("--dtype", default=default("dtype"), choices=get_args(Dtype))
    p.add_argument("--cache_dir", type=Path, help="model cache (default $KZERO_CACHE_DIR or ~/.cache/kzero)")
    p.add_argument("--max_batch_size", type=int, default=default_of(BatcherConfig, "max_batch_size"))
    p.add_argument("--max_batch_latency_ms", type=float, default=default_of(BatcherConfig, "max_batch_latency_ms"))
    p.add_argument("--max_queue", type=int, default=default_of(BatcherConfig, "max_queue"),
                   help="items waiting before requests get 503")
    p.add_argument("--max_concurrent_batches", type=int,
                   help="batches computed at once (default: 2 for embed on a CPU with 2+ cores, else 1)")
    p.add_argument("--load_wait_s", type=float, default=default("load_wait_s"),
                   help="how long a request waits for a loading model")
    p.add_argument("--max_instances", type=int, default=default_of(LimitsConfig, "max_instances"))
    p.add_argument("--max_input_tokens", type=int, default=default_of(LimitsConfig, "max_input_tokens"))
    p.add_argument("--max_new_tokens", type=int, default=default_of(LimitsConfig, "max_new_tokens"))
    p.add_argument("--embed_graph", type=flag, default=default("embed_graph"),
                   help="embed on a CPU: run the encoder as a traced graph, checked against the eager model when "
                        "it loads (false: eager)")
    p.add_argument("--engine", choices=get_args(EngineKind),
                   help=f"generation engine: continuous batching (token-level) or static batches (default "
                        f"{default_of(EngineConfig, 'engine')}; static when --lora is given)")
    p.add_argument("--max_num_seqs", type=int, default=default_of(EngineConfig, "max_num_seqs"),
                   help="continuous: sequences decoding at once")
    p.add_argument("--kv_cache_memory_gb", type=float, default=default_of(EngineConfig, "kv_cache_memory_gb"),
                   help="continuous: memory of the paged KV cache")
    p.add_argument("--max_batch_tokens", type=int, default=default_of(EngineConfig, "max_batch_tokens"),
                   help="continuous: tokens per step (long prompts prefill in chunks of it)")
    p.add_argument("--kv_page_size", type=int, default=default_of(EngineConfig, "kv_page_size"))
    add_limit_arguments(p)
    add_api_keys_argument(p)
    p.add_argument("--enable_model_repository", action="store_true", default=default("enable_model_repository"),
                   help="serve the repository load/unload routes (behind the API keys)")
    p.add_argument("--lora", action=_AppendAdapter, default=default("lora"), metavar="NAME=PATH",
                   help="a peft LoRA adapter directory served beside the base model as NAME (repeatable; "
                        "generate, static engine)")
    return p


def config_from_args(argv: Sequence[str], env: dict[str, str]):  # -> PredictorConfig
    from predictors.batcher import BatcherConfig
    from predictors.config import EngineConfig, LimitsConfig, PredictorConfig
    from serving.auth import AuthConfig
    from serving.limits import limits_from_args

    args = build_parser().parse_args(argv)
    cache_dir = args.cache_dir or Path(env.get("KZERO_CACHE_DIR", Path.home() / ".cache" / "kzero"))
    return PredictorConfig(
        model_name=args.model_name,
        task=args.task,
        model_dir=args.model_dir,
        model_id=args.model_id,
        gguf_file=args.gguf_file,
        device=args.device,
        dtype=args.dtype,
        cache_dir=cache_dir,
        batcher=BatcherConfig(
            max_batch_size=args.max_batch_size,
            max_batch_latency_ms=args.max_batch_latency_ms,
            max_queue=args.max_queue,
            max_concurrent_batches=args.max_concurrent_batches,
        ),
        limits=LimitsConfig(
            max_instances=args.max_instances,
            max_input_tokens=args.max_input_tokens,
            max_new_tokens=args.max_new_tokens,
        ),
        generation=EngineConfig(
            **({"engine": args.engine} if args.engine else {}),  # unset: the default, or static for --lora
            max_num_seqs=args.max_num_seqs,
            kv_cache_memory_gb=args.kv_cache_memory_gb,
            max_batch_tokens=args.max_batch_tokens,
            kv_page_size=args.kv_page_size,
        ),
        embed_graph=args.embed_graph,
        request_limits=limits_from_args(args),
        load_wait_s=args.load_wait_s,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=args.enable_grpc,
        workers=args.workers,
        auth=AuthConfig.from_sources(env, args.api_keys_file),
        enable_model_repository=args.enable_model_repository,
        # Plain values, so a bad name is reported as ``lora.N.name``.
        lora=tuple({"name": name, "path": path} for name, path in args.lora),  # type: ignore[arg-type]
    )


def _seconds_since_process_start() -> float:
    """The kernel's start time of this process (clock ticks since boot) against the boot clock. Not
    psutil's ``create_time``: it adds the boot time, which ``/proc/stat`` gives in whole seconds, and
    was up to a second off."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, ``starttime``
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from predictors.engines.lora import check_adapter_dir
    from serving.auth import ApiKeys, AuthConfigError
    from serving.errors import InvalidInput

    try:
        config = config_from_args(sys.argv[1:] if argv is None else argv, dict(os.environ))
        api_keys = ApiKeys.from_config(config.auth)
        for adapter in config.lora:  # a malformed adapter stops the start, before the model loads
            check_adapter_dir(adapter.path, f"--lora {adapter.name}")
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "arguments"
        print(f"python -m predictors: invalid {where}: {first['msg']}", file=sys.stderr)
        return 2
    except (AuthConfigError, InvalidInput) as err:
        print(f"python -m predictors: {err}", file=sys.stderr)
        return 2

    from observability.logs import LogConfig
    from observability.telemetry import setup_telemetry
    from predictors.loading import load_task
    from predictors.metrics import PredictorMetrics
    from predictors.model import BatchedModel
    from predictors.routes import predictor_routers
    from serving.server import KzeroServer, serve

    import_s = _seconds_since_process_start()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:  # a bad KZERO_LOG_* or OTEL_* value (TelemetryConfigError is a ValueError) names the variable
        log_config = LogConfig.from_env(os.environ)
        telemetry = setup_telemetry(f"kzero-predictor-{config.model_name}", dict(os.environ))
    except ValueError as err:
        print(f"python -m predictors: {err}", file=sys.stderr)
        return 2
    metrics = PredictorMetrics(meter=telemetry.meter("kzero.predictors"))
    metrics.cold_start("import", import_s)
    tracer = telemetry.tracer("kzero.predictors")
    model = BatchedModel(
        config.model_name,
        lambda: load_task(config),
        config.batcher,
        load_wait_s=config.load_wait_s,
        retry_after_s=config.retry_after_s,
        tracer=tracer,
        metrics=metrics,
    )
    server = KzeroServer(model, metrics, predictor_routers(model, tracer, config.request_limits),
                         http_port=config.http_port, request_limits=config.request_limits,
                         grpc_port=config.grpc_port, enable_grpc=config.enable_grpc, tracer=tracer,
                         log_config=log_config, api_keys=api_keys,
                         enable_model_repository=config.enable_model_repository)
    logging.getLogger(__name__).info("process start to imports done: %.2fs", import_s)
    return serve(server, telemetry, "predictor")


if __name__ == "__main__":
    sys.exit(main())
