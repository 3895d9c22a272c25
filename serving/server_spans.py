"""SERVER spans for inference calls, over HTTP (ASGI middleware) and gRPC (server interceptor).

Each span continues the caller's W3C trace context and is current while the handler runs, so the
model's and the chain's spans are its children. Over HTTP the span ends when the last byte of the
response is sent, so a streamed (SSE) answer is inside it, not only its headers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from grpc_interceptor.server import AsyncServerInterceptor
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from observability import semconv
from observability.propagation import extract

INFERENCE_PREFIXES = ("/v1/models/", "/v2/models/", "/openai/v1/")
_UNTRACED_GRPC = ("ServerLive", "ServerReady", "ModelReady")  # probes
# The codes that are the server's fault (as 5xx are over HTTP); the rest fail the caller's span only.
_GRPC_SERVER_ERRORS = ("UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS")


def is_inference(method: str, path: str) -> bool:
    return method == "POST" and path.startswith(INFERENCE_PREFIXES)


class HttpServerSpans:
    """ASGI middleware: one SERVER span per inference request (probes and scrapes are not traced)."""

    def __init__(self, app: ASGIApp, tracer: trace.Tracer) -> None:
        self.app = app
        self._tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_inference(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        attributes = {semconv.HTTP_METHOD: method, semconv.URL_PATH: scope["path"]}
        with self._tracer.start_as_current_span(method, context=extract(headers), kind=SpanKind.SERVER,
                                                attributes=attributes, record_exception=False,
                                                set_status_on_exception=False) as span:

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute(semconv.HTTP_STATUS, status)
                    if status >= 500:
                        span.set_attribute(semconv.ERROR_TYPE, str(status))
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            except BaseException as err:
                span.set_attribute(semconv.ERROR_TYPE, type(err).__qualname__)
                span.set_status(Status(StatusCode.ERROR, type(err).__name__))
                raise
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.set_attribute(semconv.HTTP_ROUTE, route)
                    span.update_name(f"{method} {route}")


class GrpcServerSpans(AsyncServerInterceptor):
    """One SERVER span per gRPC call (health probes aside), parented to the call metadata's context."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    async def intercept(
        self, method: Callable[..., Awaitable[Any]], request_or_iterator: Any, context: Any, method_name: str
    ) -> Any:
        service, _, rpc = method_name.lstrip("/").rpartition("/")
        if rpc in _UNTRACED_GRPC:
            return await method(request_or_iterator, context)
        metadata = {item.key: item.value for item in context.invocation_metadata() or ()
                    if isinstance(item.value, str)}
        attributes = {semconv.RPC_SYSTEM: "grpc", semconv.RPC_SERVICE: service, semconv.RPC_METHOD: rpc}
        with self._tracer.start_as_current_span(f"{service}/{rpc}", context=extract(metadata),
                                                kind=SpanKind.SERVER, attributes=attributes,
                                                record_exception=False, set_status_on_exception=False) as span:
            try:
                response = await method(request_or_iterator, context)
            except BaseException as err:
                code = context.code()
                if code is not None:
                    span.set_attribute(semconv.RPC_GRPC_STATUS, code.value[0])
                if code is None or code.name in _GRPC_SERVER_ERRORS:
                    span.set_attribute(semconv.ERROR_TYPE, code.name if code is not None else type(err).__qualname__)
                    span.set_status(Status(StatusCode.ERROR))
                raise
            span.set_attribute(semconv.RPC_GRPC_STATUS, 0)
            return response
