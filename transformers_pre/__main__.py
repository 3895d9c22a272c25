"""``python -m transformers_pre``: the RAG transformer as a KServe model server."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    from transformers_pre.config import TransformerConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m transformers_pre", description=__doc__)
    p.add_argument("--model_name", default="rag")
    p.add_argument("--http_port", type=int, default=8080)
    p.add_argument("--grpc_port", type=int, default=8081)
    p.add_argument("--enable_grpc", type=lambda v: v.lower() in ("1", "true", "yes"), default=True)
    p.add_argument("--predictor_host", required=True, help="host:port of the generation predictor")
    p.add_argument("--predictor_protocol", default="v1", choices=["v1", "v2", "grpc-v2"])
    p.add_argument("--predictor_model", default=None, help="model name on the predictor (default: --model_name)")
    p.add_argument("--embedder", default="all-minilm-l6-v2",
                   help="a packaged model id (in-process) or http://host:port#model of an embedding predictor")
    p.add_argument("--embedder_protocol", default="v1", choices=["v1", "v2", "grpc-v2"])
    p.add_argument("--milvus_uri", default="./data/kzero.db", help="a Milvus Lite file or http://host:19530")
    p.add_argument("--collection", default="kzero")
    p.add_argument("--top_k", type=int, default=4)
    p.add_argument("--min_score", type=float, default=None, help="drop passages below this cosine similarity")
    p.add_argument("--search_mode", default="dense", choices=["dense", "hybrid"])
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--chain_config", type=Path, help="YAML: {steps: [{name, options}, ...]}")
    p.add_argument("--load_wait_s", type=float, default=30.0)
    return p


def config_from_args(argv: Sequence[str]) -> TransformerConfig:
    from transformers_pre.config import ChainConfig, TransformerConfig

    args = build_parser().parse_args(argv)
    return TransformerConfig(
        model_name=args.model_name, predictor_host=args.predictor_host, predictor_protocol=args.predictor_protocol,
        predictor_model=args.predictor_model or args.model_name, embedder=args.embedder,
        embedder_protocol=args.embedder_protocol, milvus_uri=args.milvus_uri, collection=args.collection,
        top_k=args.top_k, min_score=args.min_score, search_mode=args.search_mode, max_new_tokens=args.max_new_tokens,
        chain=ChainConfig.from_yaml(args.chain_config) if args.chain_config else ChainConfig(),
        http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc, load_wait_s=args.load_wait_s,
    )


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        config = config_from_args(sys.argv[1:] if argv is None else argv)
    except (ValidationError, ValueError) as err:
        print(f"python -m transformers_pre: {err}", file=sys.stderr)
        return 2

    from fastapi import APIRouter
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.rest.v1_endpoints import V1Endpoints

    from observability.logs import LogConfig
    from observability.telemetry import setup_telemetry
    from predictors.cloudevents_http import cloudevents_router
    from predictors.metrics import PredictorMetrics
    from predictors.server import KzeroServer, serve
    from transformers_pre.deps import build_deps
    from transformers_pre.model import RagModel
    from transformers_pre.openai_api import rag_openai_router

    try:  # a bad KZERO_LOG_* or OTEL_* value (TelemetryConfigError is a ValueError) names the variable
        log_config = LogConfig.from_env(os.environ)
        telemetry = setup_telemetry(f"kzero-transformer-{config.model_name}", dict(os.environ))
    except ValueError as err:
        print(f"python -m transformers_pre: {err}", file=sys.stderr)
        return 2
    tracer = telemetry.tracer("kzero.transformers_pre")
    metrics = PredictorMetrics(meter=telemetry.meter("kzero.transformers_pre"))
    model = RagModel(config, lambda: build_deps(config, tracer, metrics), tracer)

    def routers(dataplane: DataPlane) -> list[APIRouter]:
        return [rag_openai_router(model, tracer), cloudevents_router(model, V1Endpoints(dataplane).predict, tracer)]

    server = KzeroServer(model, metrics, routers, http_port=config.http_port, grpc_port=config.grpc_port,
                         enable_grpc=config.enable_grpc, tracer=tracer, log_config=log_config)
    return serve(server, telemetry, "transformer")


if __name__ == "__main__":
    sys.exit(main())
