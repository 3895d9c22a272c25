"""The routes of LoRA adapters: load and unload (KServe's repository routes), model metadata and readiness.

Adapters share the paths of models: ``POST /v2/repository/models/{adapter}/load`` with ``{"path": DIR}``,
``.../unload``, ``GET /v2/models/{adapter}`` and ``.../ready``. Each route here claims only the names
that are (or may become) adapters; any other name (the base model; every name while the model takes
no adapters: an embedder, the continuous engine, a model not loaded) falls through to the server's
own handling of the path (``serving.repository``, KServe's metadata), which comes after these routes.
The repository routes stay behind ``--enable_model_repository`` and the API keys (``serving.access``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import Match
from starlette.types import Scope

from predictors.config import ADAPTER_NAME
from serving.errors import InvalidInput
from serving.validation import documented_body, parse_model, read_json

if TYPE_CHECKING:
    from predictors.model import BatchedModel

Claims = Callable[[str], bool]


class AdapterLoad(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(min_length=1, description="a peft LoRA adapter directory on the server")


def _claiming(claims: Claims) -> type[APIRoute]:
    """A route class that matches only when ``claims`` takes the path's ``model_name``."""

    class ClaimedRoute(APIRoute):
        def matches(self, scope: Scope) -> tuple[Match, Scope]:
            match, child = super().matches(scope)
            if match is not Match.NONE and not claims(child.get("path_params", {}).get("model_name", "")):
                return Match.NONE, {}
            return match, child

    return ClaimedRoute


def adapter_router(model: BatchedModel) -> APIRouter:
    router = APIRouter(tags=["Adapters"])
    is_adapter: Claims = lambda name: name in model.adapter_names  # noqa: E731
    may_be_adapter: Claims = lambda name: name != model.name and model.takes_adapters  # noqa: E731

    def route(path: str, method: str, claims: Claims, body: dict[str, Any] | None = None,
              ) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
        def add(endpoint: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            router.add_api_route(path, endpoint, methods=[method], response_model=None,
                                 route_class_override=_claiming(claims), openapi_extra=body)
            return endpoint

        return add

    load_body = documented_body(AdapterLoad)
    load_body["requestBody"]["required"] = False  # the base model's load takes none

    @route("/v2/repository/models/{model_name}/load", "POST", may_be_adapter, load_body)
    async def load(request: Request, model_name: str) -> dict[str, Any]:
        """Load a LoRA adapter under ``model_name``; answers once requests can name it."""
        body = parse_model(AdapterLoad, await read_json(await request.body()))
        if len(model_name) > 128 or re.fullmatch(ADAPTER_NAME, model_name) is None:
            raise InvalidInput("model_name", f"{model_name!r} is not an adapter name (up to 128 letters, digits, "
                                             "'.', '_', '-'; a letter or digit first)")
        await model.load_adapter(model_name, Path(body.path))
        return {"name": model_name, "load": True}

    @route("/v2/repository/models/{model_name}/unload", "POST", may_be_adapter)
    async def unload(model_name: str) -> dict[str, Any]:
        """Queued requests of the adapter fail with 404 when their batch runs."""
        await model.unload_adapter(model_name)
        return {"name": model_name, "unload": True}

    @route("/v2/models/{model_name}", "GET", is_adapter)
    async def metadata(model_name: str) -> dict[str, Any]:
        inputs, outputs = model.task.tensor_metadata()
        return {"name": model_name, "versions": [], "platform": "kzero-lora", "inputs": inputs, "outputs": outputs,
                "parent": model.name}

    @route("/v2/models/{model_name}/ready", "GET", is_adapter)
    async def ready(model_name: str) -> dict[str, Any]:
        return {"name": model_name, "ready": model.ready}

    return router

