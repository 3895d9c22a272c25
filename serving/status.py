"""Errors to HTTP and gRPC codes, called only at the edges (handlers, interceptors, the OpenAI routes)."""

from __future__ import annotations

from http import HTTPStatus

from fastapi.responses import JSONResponse
from grpc import StatusCode

from serving.errors import InvalidInput, NotFound, Overloaded, ServingError, Unavailable


def http_status(err: ServingError) -> int:
    if isinstance(err, InvalidInput):
        return HTTPStatus.BAD_REQUEST
    if isinstance(err, NotFound):
        return HTTPStatus.NOT_FOUND
    if isinstance(err, Unavailable):
        return HTTPStatus.SERVICE_UNAVAILABLE
    return HTTPStatus.INTERNAL_SERVER_ERROR


def retry_headers(err: ServingError) -> dict[str, str] | None:
    return {"Retry-After": str(err.retry_after_s)} if isinstance(err, Unavailable) else None


def error_response(err: ServingError) -> JSONResponse:
    """kzero's error shape: ``{"error": "<field>: <problem>"}``, with Retry-After on a 503."""
    return JSONResponse({"error": str(err)}, status_code=http_status(err), headers=retry_headers(err))


def grpc_status(err: ServingError) -> StatusCode:
    if isinstance(err, InvalidInput):
        return StatusCode.INVALID_ARGUMENT
    if isinstance(err, NotFound):
        return StatusCode.NOT_FOUND
    if isinstance(err, Overloaded):
        return StatusCode.RESOURCE_EXHAUSTED
    if isinstance(err, Unavailable):
        return StatusCode.UNAVAILABLE
    return StatusCode.INTERNAL
