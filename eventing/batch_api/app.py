"""The HTTP edge of the batch API: OpenAI's ``/v1/files`` and ``/v1/batches`` routes, as its client calls them.

Routes are plain functions (FastAPI runs them on its thread pool: they read and write files); every
``ServingError`` becomes OpenAI's error shape here, and only here. API keys are checked by the same
middleware as the servers' (``serving.access``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp

from eventing.batch_api.batches import Batches
from eventing.batch_api.config import BatchApiConfig
from eventing.batch_api.errors import FileTooLarge, WrongState
from eventing.batch_api.store import Store, new_id, public
from serving.access import HttpAccess
from serving.auth import ApiKeys
from serving.errors import InvalidInput, NotFound, ServingError
from serving.openai_wire import openai_error
from serving.validation import read_json

PURPOSES = ("batch",)
_COPY_CHUNK = 1 << 20
_FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the purpose field around the file's bytes


def _error(err: ServingError) -> JSONResponse:
    if isinstance(err, FileTooLarge | WrongState):
        status = 413 if isinstance(err, FileTooLarge) else 409
        return JSONResponse({"error": {"message": str(err), "type": "invalid_request_error", "param": err.field,
                                       "code": None}}, status_code=status)
    return openai_error(err)


def _invalid(err: RequestValidationError) -> InvalidInput:
    """FastAPI's 422 for a missing or mistyped form field or parameter, as a 400 naming it."""
    first = err.errors()[0] if err.errors() else {"loc": ("body",), "msg": "invalid"}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    return InvalidInput(".".join(loc) or "body", str(first.get("msg", "invalid")).lower())


def _page(objects: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": objects, "has_more": has_more,
            "first_id": objects[0]["id"] if objects else None, "last_id": objects[-1]["id"] if objects else None}


def _limit(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError as err:
        raise InvalidInput("limit", f"must be an integer, got {value!r}") from err


def create_app(
    config: BatchApiConfig, store: Store, batches: Batches, *, keys: ApiKeys | None = None,
    registry: CollectorRegistry | None = None,
) -> ASGIApp:
    app = FastAPI(title="kzero batch API", openapi_url=None, docs_url=None, redoc_url=None)
    app.add_exception_handler(ServingError, lambda _, err: _error(err))  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, lambda _, err: _error(_invalid(err)))  # type: ignore[arg-type]

    @app.middleware("http")
    async def refuse_oversized(request: Request, call_next: Any) -> Response:
        """413 before the body is read, when its declared length already says it is too large."""
        length = request.headers.get("content-length", "")
        if request.url.path == "/v1/files" and length.isdigit() and \
                int(length) > config.max_file_bytes + _FORM_OVERHEAD:
            return _error(FileTooLarge(config.max_file_bytes))
        return await call_next(request)

    @app.get("/v2/health/live")
    @app.get("/v2/health/ready")
    def health() -> dict[str, bool]:
        return {"live": True}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry) if registry is not None else b"", media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/files")
    def upload(file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]) -> dict[str, Any]:
        if purpose not in PURPOSES:
            raise InvalidInput("purpose", f"must be one of {', '.join(PURPOSES)}, got {purpose!r}")
        target = store.upload_path()
        size = 0
        try:
            with target.open("wb") as out:
                while chunk := file.file.read(_COPY_CHUNK):
                    size += len(chunk)
                    if size > config.max_file_bytes:
                        raise FileTooLarge(config.max_file_bytes)
                    out.write(chunk)
            meta = {"id": new_id("file"), "object": "file", "bytes": size, "created_at": int(time.time()),
                    "filename": (file.filename or "upload.jsonl")[:255], "purpose": purpose, "status": "processed",
                    "expires_at": None, "status_details": None, "_created_ns": time.time_ns()}
            return public(store.add_file(meta, target))
        finally:
            target.unlink(missing_ok=True)

    @app.get("/v1/files")
    def list_files(purpose: str | None = None, limit: str | None = None, after: str | None = None) -> dict[str, Any]:
        files = [f for f in store.files() if purpose is None or f.get("purpose") == purpose]
        if after is not None:
            ids = [f["id"] for f in files]
            if after not in ids:
                raise InvalidInput("after", f"no file {after!r}")
            files = files[ids.index(after) + 1:]
        n = _limit(limit, 10_000)
        if n < 1:
            raise InvalidInput("limit", f"must be at least 1, got {n}")
        return _page([public(f) for f in files[:n]], len(files) > n)

    def _file(file_id: str) -> dict[str, Any]:
        meta = store.file(file_id)
        if meta is None:
            raise NotFound(f"file_id: no file {file_id!r}")
        return meta

    @app.get("/v1/files/{file_id}")
    def get_file(file_id: str) -> dict[str, Any]:
        return public(_file(file_id))

    @app.get("/v1/files/{file_id}/content")
    def file_content(file_id: str) -> FileResponse:
        _file(file_id)
        return FileResponse(store.content_path(file_id), media_type="application/jsonl")

    @app.delete("/v1/files/{file_id}")
    def delete_file(file_id: str) -> dict[str, Any]:
        _file(file_id)
        if (batch_id := batches.in_use(file_id)) is not None:
            raise WrongState("file_id", f"file {file_id!r} is the input of batch {batch_id}, which has not ended")
        store.delete_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    @app.post("/v1/batches")
    async def create_batch(request: Request) -> dict[str, Any]:
        body = await read_json(await request.body())
        if not isinstance(body, dict):
            raise InvalidInput("body", "must be a JSON object")
        return await asyncio.to_thread(batches.create, body.get("input_file_id"), body.get("endpoint"),
                                       body.get("completion_window"), body.get("metadata"))

    @app.get("/v1/batches/{batch_id}")
    def get_batch(batch_id: str) -> dict[str, Any]:
        return batches.get(batch_id)

    @app.get("/v1/batches")
    def list_batches(after: str | None = None, limit: str | None = None) -> dict[str, Any]:
        data, has_more = batches.list(after, _limit(limit, 20))
        return _page(data, has_more)

    @app.post("/v1/batches/{batch_id}/cancel")
    def cancel_batch(batch_id: str) -> dict[str, Any]:
        return batches.cancel(batch_id)

    return HttpAccess(app, keys, repository_enabled=False)
