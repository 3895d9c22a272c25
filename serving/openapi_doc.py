"""The OpenAPI document (``/openapi.json``) describes the routes that actually serve each request.

kzero registers some routes ahead of KServe's for the same path and method (the v1 predict route
that answers CloudEvents, the v2 infer route); requests go to the first, but FastAPI's document
keeps the last, so it described KServe's shadowed handlers (no body for v1 predict). Clients and
the fuzz tests read the document, so the operations of kzero's routers replace those.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi


def document_served_routes(app: FastAPI, routers: list[APIRouter]) -> None:
    """Serve ``app``'s document with the operations of ``routers`` (registered first) in place of
    any they shadow."""
    generated = app.openapi

    def openapi() -> dict[str, Any]:
        document = generated()  # FastAPI's, cached until the routes change
        ours = get_openapi(title=app.title, version=app.version,
                           routes=[route for router in routers for route in router.routes])
        for path, operations in ours["paths"].items():
            document["paths"].setdefault(path, {}).update(operations)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(ours.get("components", {}).get("schemas", {}))
        return document

    app.openapi = openapi  # type: ignore[method-assign]
