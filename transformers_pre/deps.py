"""Build the chain's dependencies from the settings: embedder, vector store, predictor clients."""

from __future__ import annotations

import asyncio

from opentelemetry import trace

from serving.client import make_client
from serving.metrics import ServerMetrics
from serving.openai_client import OpenAIClient
from transformers_pre.config import TransformerConfig
from transformers_pre.embedder import ClientEmbedder, embedder_client
from transformers_pre.filters import FilterCompiler, ScopeRules
from transformers_pre.steps import ChainDeps
from transformers_pre.store import VectorStore


async def build_deps(config: TransformerConfig, tracer: trace.Tracer, metrics: ServerMetrics) -> ChainDeps:
    # Loading an in-process embedder and opening Milvus Lite block: keep the server's loop free.
    client, model = await asyncio.to_thread(
        embedder_client, config.embedder, config.embedder_protocol, config.request_timeout_s, tracer,
        config.predictor_api_key)
    embedder = await ClientEmbedder(client, model, config.retry, on_retry=lambda *_: metrics.retried(model)).start()
    store = await asyncio.to_thread(VectorStore.connect, config.milvus_uri, config.collection, config.index)
    target = config.predictor_host if config.predictor_protocol == "grpc-v2" else config.predictor_url
    predictor = make_client(config.predictor_protocol, target, config.request_timeout_s, tracer,
                            config.predictor_api_key)
    scope = ScopeRules(config.served_collections, FilterCompiler(config.filter_fields, config.allow_raw_filter))
    chat = OpenAIClient(config.predictor_url, config.request_timeout_s, tracer, config.predictor_api_key)
    return ChainDeps(config=config, embedder=embedder, store=store, scope=scope, predictor=predictor, tracer=tracer,
                     metrics=metrics, chat=chat)
