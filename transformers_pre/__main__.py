"""``python -m transformers_pre``: the RAG transformer as a KServe model server."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from pydantic import ValidationError

if TYPE_CHECKING:
    from transformers_pre.config import TransformerConfig


def build_parser() -> argparse.ArgumentParser:
    from serving.auth import add_api_keys_argument
    from serving.client import WireProtocol
    from serving.defaults import default_of, flag
    from serving.limits import add_limit_arguments
    from transformers_pre.config import TransformerConfig
    from transformers_pre.index import IndexConfig
    from transformers_pre.store import SearchMode

    def default(field: str) -> Any:
        return default_of(TransformerConfig, field)

    # A flag whose default is None leaves the setting to TransformerConfig (it derives it from others).
    p = argparse.ArgumentParser(prog="python -m transformers_pre", description=__doc__)
    p.add_argument("--model_name", default=default("model_name"))
    p.add_argument("--http_port", type=int, default=default("http_port"))
    p.add_argument("--grpc_port", type=int, default=default("grpc_port"))
    p.add_argument("--enable_grpc", type=flag, default=default("enable_grpc"))
    p.add_argument("--predictor_host", required=True, help="host:port of the generation predictor")
    p.add_argument("--predictor_protocol", default=default("predictor_protocol"), choices=get_args(WireProtocol))
    p.add_argument("--predictor_model", default=None, help="model name on the predictor (default: --model_name)")
    p.add_argument("--embedder", default=default("embedder"),
                   help="a packaged model id (in-process) or http://host:port#model of an embedding predictor")
    p.add_argument("--embedder_protocol", default=default("embedder_protocol"), choices=get_args(WireProtocol))
    p.add_argument("--milvus_uri", default=default("milvus_uri"), help="a Milvus Lite file or http://host:19530")
    p.add_argument("--collection", default=None,
                   help="searched when a request names none (default: the first of --collections, else kzero)")
    p.add_argument("--collections", default=None, help="comma-separated collections requests may name "
                                                     "(default: just --collection); others get 404")
    p.add_argument("--filter_fields", default=None,
                   help="comma-separated fields a filter may name, each NAME or NAME:str|int|float|bool|list "
                        "(default: doc_id,source,format,title)")
    p.add_argument("--allow_raw_filter", action="store_true",
                   help="also accept a raw Milvus expression as the filter (only for trusted callers)")
    p.add_argument("--top_k", type=int, default=default("top_k"))
    p.add_argument("--min_score", type=float, default=default("min_score"),
                   help="drop passages below this cosine similarity")
    p.add_argument("--search_mode", default=default("search_mode"), choices=get_args(SearchMode))
    p.add_argument("--nprobe", type=int, default=default_of(IndexConfig, "nprobe"),
                   help="cells an IVF_FLAT search scans; default: %(default)s")
    p.add_argument("--ef", type=int, default=default_of(IndexConfig, "ef"),
                   help="candidates an HNSW search keeps; default: %(default)s")
    p.add_argument("--max_new_tokens", type=int, default=default("max_new_tokens"))
    p.add_argument("--chain_config", type=Path, help="YAML: {steps: [{name, options}, ...]}")
    p.add_argument("--load_wait_s", type=float, default=default("load_wait_s"))
    # No --enable_model_repository: the transformer holds no weights to unload, its repository routes stay off.
    add_api_keys_argument(p)
    add_limit_arguments(p)
    return p


def config_from_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> TransformerConfig:
    """``env`` supplies KZERO_API_KEYS (the keys callers need) and KZERO_PREDICTOR_API_KEY (ours)."""
    from serving.auth import AuthConfig, predictor_api_key
    from serving.limits import limits_from_args
    from transformers_pre.config import ChainConfig, TransformerConfig
    from transformers_pre.filters import parse_fields
    from transformers_pre.index import IndexConfig

    args = build_parser().parse_args(argv)
    listed = None if args.collections is None else args.collections.split(",")
    collections = None if listed is None else tuple(c.strip() for c in listed if c.strip())
    fields = None if args.filter_fields is None else parse_fields(args.filter_fields)
    given = {"collection": args.collection, "collections": collections, "filter_fields": fields}
    defaulted = {k: v for k, v in given.items() if v is not None}
    return TransformerConfig(
        model_name=args.model_name, predictor_host=args.predictor_host, predictor_protocol=args.predictor_protocol,
        predictor_model=args.predictor_model or args.model_name, embedder=args.embedder,
        embedder_protocol=args.embedder_protocol, milvus_uri=args.milvus_uri,
        allow_raw_filter=args.allow_raw_filter, **defaulted,
        top_k=args.top_k, min_score=args.min_score, search_mode=args.search_mode, max_new_tokens=args.max_new_tokens,
        index=IndexConfig(nprobe=args.nprobe, ef=args.ef),
        chain=ChainConfig.from_yaml(args.chain_config) if args.chain_config else ChainConfig(),
        http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc, load_wait_s=args.load_wait_s,
        request_limits=limits_from_args(args),
        auth=AuthConfig.from_sources(env or {}, args.api_keys_file), predictor_api_key=predictor_api_key(env or {}),
    )


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        config = config_from_args(sys.argv[1:] if argv is None else argv, dict(os.environ))
        from serving.auth import ApiKeys

        api_keys = ApiKeys.from_config(config.auth)
    except (ValidationError, ValueError) as err:  # AuthConfigError too: it names the variable or file
        print(f"python -m transformers_pre: {err}", file=sys.stderr)
        return 2

    from fastapi import APIRouter
    from kserve.protocol.dataplane import DataPlane

    from observability.logs import LogConfig
    from observability.telemetry import setup_telemetry
    from serving.cloudevents_http import cloudevents_router, kserve_v1
    from serving.metrics import ServerMetrics
    from serving.server import KzeroServer, serve
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
    metrics = ServerMetrics(meter=telemetry.meter("kzero.transformers_pre"))
    model = RagModel(config, lambda: build_deps(config, tracer, metrics), tracer)

    def routers(dataplane: DataPlane) -> list[APIRouter]:
        return [rag_openai_router(model),
                cloudevents_router(model, kserve_v1(dataplane), tracer, config.request_limits)]

    server = KzeroServer(model, metrics, routers, http_port=config.http_port, grpc_port=config.grpc_port,
                         enable_grpc=config.enable_grpc, tracer=tracer, log_config=log_config, api_keys=api_keys,
                         request_limits=config.request_limits)
    return serve(server, telemetry, "transformer")


if __name__ == "__main__":
    sys.exit(main())
