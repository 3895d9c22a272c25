"""Who may call what on a kzero server, enforced at the edge: an ASGI middleware and a gRPC interceptor.

With API keys configured (``serving.auth``), every route but the probes and ``/metrics`` needs
``Authorization: Bearer <key>`` (gRPC: ``authorization`` metadata); the check is default-deny, so a
route added later is never open by accident. The model repository routes (load/unload) are refused
unless the server was started with ``--enable_model_repository``, and need a key like the rest.
A refusal's log line names the route and the reason, never the key.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from grpc import StatusCode
from grpc_interceptor.server import AsyncServerInterceptor
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.auth import API_KEYS_ENV, API_KEYS_FLAG, ApiKeys, refusal
from serving.repository import REPOSITORY_OFF

log = logging.getLogger(__name__)

# Open without a key: Kubernetes probes (KServe's "/" is a liveness alias) and the Prometheus scrape.
# Model readiness and metadata are not probes here (the manifests probe /v2/health/*): keyed.
OPEN_ROUTES = frozenset({("GET", "/v2/health/live"), ("GET", "/v2/health/ready"), ("GET", "/metrics"), ("GET", "/")})
OPEN_RPCS = frozenset({"ServerLive", "ServerReady"})
REPOSITORY_PREFIX = "/v2/repository"
REPOSITORY_RPCS = frozenset({"RepositoryModelLoad", "RepositoryModelUnload"})


def _unauthorized(path: str, problem: str, wrong_key: bool) -> JSONResponse:
    challenge = 'Bearer error="invalid_token"' if wrong_key else "Bearer"
    body: dict[str, Any]
    if path.startswith("/openai/"):  # OpenAI's shape, so its client raises AuthenticationError
        body = {"error": {"message": problem, "type": "invalid_request_error", "param": None,
                          "code": "invalid_api_key"}}
    else:
        body = {"error": problem}
    return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": challenge})


class HttpAccess:
    """ASGI middleware: 401 without an accepted key (off when ``keys`` is None), 404 on the
    repository routes unless enabled. Outermost, so a refused request holds nothing: no body read,
    no wait for a loading model."""

    def __init__(self, app: ASGIApp, keys: ApiKeys | None, repository_enabled: bool) -> None:
        self.app = app
        self._keys = keys
        self._repository_enabled = repository_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or (scope.get("method", "GET"), scope["path"]) in OPEN_ROUTES:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self._keys is not None:
            authorization = next((v.decode("latin-1") for k, v in scope.get("headers", ())
                                  if k == b"authorization"), None)
            problem = refusal(self._keys, authorization)
            if problem is not None:
                log.warning("401 %s %s: %s", scope.get("method", kind), path, problem)
                if kind == "websocket":  # none today; closing before accept answers 403
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await _unauthorized(path, problem, authorization is not None)(scope, receive, send)
                return
        if path.startswith(REPOSITORY_PREFIX) and not self._repository_enabled:
            await JSONResponse({"error": REPOSITORY_OFF}, status_code=404)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class GrpcAccess(AsyncServerInterceptor):
    """gRPC: UNAUTHENTICATED without an accepted key; UNIMPLEMENTED for the repository RPCs unless enabled."""

    def __init__(self, keys: ApiKeys | None, repository_enabled: bool) -> None:
        self._keys = keys
        self._repository_enabled = repository_enabled

    async def intercept(
        self, method: Callable[..., Awaitable[Any]], request_or_iterator: Any, context: Any, method_name: str
    ) -> Any:
        rpc = method_name.rpartition("/")[2]
        if rpc not in OPEN_RPCS:
            if self._keys is not None:
                authorization = next((m.value for m in context.invocation_metadata() or ()
                                      if m.key == "authorization" and isinstance(m.value, str)), None)
                problem = refusal(self._keys, authorization)
                if problem is not None:
                    log.warning("UNAUTHENTICATED %s: %s", method_name, problem)
                    await context.abort(StatusCode.UNAUTHENTICATED, problem)
            if rpc in REPOSITORY_RPCS and not self._repository_enabled:
                await context.abort(StatusCode.UNIMPLEMENTED, REPOSITORY_OFF)
        return await method(request_or_iterator, context)


def describe(keys: ApiKeys | None, repository_enabled: bool) -> str:
    """One line for the start-up log."""
    auth = (f"API keys required ({len(keys)} from {keys.source})" if keys is not None
            else f"authentication is OFF (neither {API_KEYS_ENV} nor {API_KEYS_FLAG} is set)")
    return f"{auth}; model repository API {'enabled' if repository_enabled else 'disabled'}"
