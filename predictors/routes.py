"""The predictor server's routes besides KServe's: OpenAI, CloudEvents on the v1 predict route, LoRA adapters."""

from __future__ import annotations

from opentelemetry import trace

from predictors.adapter_api import adapter_router
from predictors.model import BatchedModel
from predictors.openai_api import openai_router
from serving.cloudevents_http import cloudevents_router, kserve_v1
from serving.limits import RequestLimits
from serving.server import RoutersFor


def predictor_routers(
    model: BatchedModel, tracer: trace.Tracer | None = None, limits: RequestLimits | None = None
) -> RoutersFor:
    return lambda dataplane: [openai_router(model),
                              cloudevents_router(model, kserve_v1(dataplane), tracer, limits),
                              adapter_router(model)]
