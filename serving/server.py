"""The KServe ModelServer with kzero's edges: honest readiness, error mapping, access, limits, metrics, spans.

KServe's own server registers a model only once it is ready and reports ``/v2/health/ready``
true regardless of the model; during a scale-from-zero it answers 400/503 without Retry-After
(kserve#2882). Here the model registers at once and loads in the background, readiness
follows the model, and inference requests wait for the load up to a deadline, then get 503
with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from grpc import aio
from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.errors import ModelNotReady, ServerNotLive, ServerNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import RESTServer
from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from observability.logs import LogConfig, setup_logging
from observability.telemetry import Telemetry
from serving.access import GrpcAccess, HttpAccess, describe
from serving.auth import ApiKeys
from serving.disconnect import CancelOnDisconnect
from serving.errors import InvalidInput, NotFound, ServingError, Unavailable
from serving.http_protocol import guarded_http_protocol
from serving.limits import RequestGuard, RequestLimits
from serving.metrics import ServerMetrics
from serving.openapi_doc import document_served_routes
from serving.readiness import ServedModel
from serving.repository import SingleModelRepository
from serving.server_spans import GrpcServerSpans, HttpServerSpans, is_inference
from serving.status import error_response, grpc_status, http_status
from serving.v2_wire import v2_infer_router
from serving.validation import field_path

log = logging.getLogger(__name__)

# Loggers that KServe and uvicorn configure with handlers of their own; ours format them alike.
ADOPTED_LOGGERS = ("kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access")


def _drop_not_ready_tracebacks(record: logging.LogRecord) -> bool:
    """A 503 from /v2/health/ready while the model loads is expected; KServe logs a traceback for each."""
    return not (record.exc_info and isinstance(record.exc_info[1], ServerNotReady | ModelNotReady | ServerNotLive))


class NotLive(ServerNotLive):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.reason = str(self)  # what KServe's gRPC error mapping reads


class ReadinessDataPlane(DataPlane):
    """Server readiness is the readiness of its models, for REST and gRPC alike; liveness is lost
    for good when a model cannot be loaded again (``mark_not_live``), so Kubernetes restarts the pod."""

    not_live_reason: str | None = None

    async def ready(self) -> bool:
        models = self.model_registry.get_models().values()
        return bool(models) and all(m.ready for m in models)

    async def live(self) -> dict[str, str]:  # type: ignore[override]
        if self.not_live_reason is not None:
            raise NotLive(self.not_live_reason)
        return await DataPlane.live()

    def mark_not_live(self, reason: str) -> None:
        self.not_live_reason = reason


class ServingErrorsInterceptor(ExceptionToStatusInterceptor):
    async def handle_exception(self, ex: Exception, request_or_iterator: Any, context: Any, method_name: str) -> None:
        if isinstance(ex, ServingError):
            if isinstance(ex, Unavailable):
                context.set_trailing_metadata((("retry-after", str(ex.retry_after_s)),))
            await context.abort(grpc_status(ex), str(ex))
        await super().handle_exception(ex, request_or_iterator, context, method_name)


class KzeroGRPCServer(GRPCServer):
    """KServe's gRPC server with kzero's error mapping in place of KServe's, and a span per call."""

    def __init__(self, *args: Any, tracer: trace.Tracer, access: GrpcAccess, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tracer = tracer
        self._access = access

    async def start(self, max_workers: int) -> None:
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            # Access first: a refused call holds nothing. The span interceptor then sees the status the
            # error mapping aborted with.
            interceptors=(self._access, GrpcServerSpans(self._tracer), ServingErrorsInterceptor()),
            options=[
                ("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                ("grpc.max_receive_message_length", self._kwargs.get("grpc_max_receive_message_length")),
            ],
        )
        servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        self._server.add_insecure_port(f"[::]:{self._port}")
        log.info("gRPC server listening on port %d", self._port)
        await self._server.start()
        await self._server.wait_for_termination()


def install_http(
    app: FastAPI, model: ServedModel, metrics: ServerMetrics, routers: list[APIRouter], tracer: trace.Tracer
) -> None:
    """Routes, error handlers and middleware added to KServe's app before it starts.

    Routes added here come before KServe's and so win for the same path (e.g. CloudEvents on the
    v1 predict route; other v1 requests are parsed there and handed on to KServe's handling).
    """

    async def predictor_error(_: Request, err: Exception) -> Response:
        assert isinstance(err, ServingError)
        if http_status(err) >= 500 and not isinstance(err, Unavailable):
            log.error("request failed: %s", err)
        return error_response(err)

    async def request_invalid(_: Request, err: Exception) -> Response:
        assert isinstance(err, RequestValidationError)
        first = err.errors()[0]
        # FastAPI reports the body union it tried (``body.InferenceRequest.inputs``); keep the field.
        loc = [p for p in first["loc"][1:] if p not in ("InferenceRequest", "bytes")]
        return error_response(InvalidInput(field_path("", tuple(loc)), first["msg"]))

    app.add_exception_handler(ServingError, predictor_error)
    app.add_exception_handler(RequestValidationError, request_invalid)
    for router in routers:
        app.include_router(router)

    def readiness_and_metrics(inner: ASGIApp) -> ASGIApp:
        # Plain ASGI: ``@app.middleware("http")`` adds a task and a memory stream to every request, which
        # py-spy showed among the event loop's costs under 64 embedding clients (bench/embed_batching.py).
        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return await inner(scope, receive, send)
            started = time.perf_counter()

            async def send_measured(message: Message) -> None:
                if message["type"] == "http.response.start":  # timed to the response's start, as before
                    template = getattr(scope.get("route"), "path", "unmatched")
                    metrics.request(template, scope["method"], message["status"], time.perf_counter() - started)
                await send(message)

            gated = await _gate(Request(scope))
            await (gated or inner)(scope, receive, send_measured)

        return handle

    app.add_middleware(readiness_and_metrics)  # type: ignore[arg-type]

    # Added last, so outermost: the span covers the load wait, the handler and the whole body.
    app.add_middleware(HttpServerSpans, tracer=tracer)
    # FastAPI's native tracing (0.13x+) would make a second SERVER span for the same request, and one
    # for every probe and scrape; KServe builds the app, so only its config dict can turn it off.
    # Its native metrics would duplicate ours (kzero_request_duration_seconds goes to OTLP as well) and
    # cost a meter-provider lookup per request.
    native = getattr(app, "_telemetry", None)
    if isinstance(native, dict):
        native["tracing"] = native["metrics"] = False

    async def _gate(request: Request) -> Response | None:
        """Hold inference requests while the model loads; 503 + Retry-After past the deadline (404 if unloaded)."""
        if model.ready or not is_inference(request.method, request.url.path):
            return None
        try:
            await model.wait_ready()
        except (Unavailable, NotFound) as err:
            return error_response(err)
        return None


class KzeroRESTServer(RESTServer):
    """KServe's REST server without its ``timing_asgi`` middleware: that logs each request's wall and CPU
    time to ``kserve.trace`` at INFO, which kzero silences, and reading the CPU time cost about a sixth of
    the event loop's samples under 64 embedding clients (py-spy, bench/embed_batching.py). Requests are
    timed by ``kzero_request_duration_seconds`` and the server span instead. (KServe's other middleware
    here, asgi-logger access logs, is only added for an ``access_log_format``, which kzero never sets.)"""

    def _add_middlewares(self, app: FastAPI) -> None:
        return None


RoutersFor = Callable[[DataPlane], list[APIRouter]]
"""The server's own routes, given KServe's data plane (its v1 handling is the CloudEvents route's fallback)."""


class KzeroServer(ModelServer):
    """KServe's ModelServer serving one model that loads in the background, with kzero's edges."""

    def __init__(
        self, model: ServedModel, metrics: ServerMetrics, routers: RoutersFor, *,
        http_port: int, grpc_port: int, enable_grpc: bool = True, tracer: trace.Tracer | None = None,
        log_config: LogConfig | None = None, api_keys: ApiKeys | None = None, enable_model_repository: bool = False,
        request_limits: RequestLimits | None = None,
    ) -> None:
        super().__init__(
            http_port=http_port,
            grpc_port=grpc_port,
            workers=1,
            enable_grpc=enable_grpc,
            enable_docs_url=False,
            enable_latency_logging=False,
        )
        self.dataplane = ReadinessDataPlane(model_registry=self.registered_models)
        self.model = model
        # Ours in place of KServe's (which cannot load a model back); off unless enabled.
        self.model_repository_extension = SingleModelRepository(  # type: ignore[assignment]
            model, enabled=enable_model_repository, not_live=self.dataplane.mark_not_live)  # type: ignore[arg-type]
        self._api_keys = api_keys
        self._enable_model_repository = enable_model_repository
        self.metrics = metrics
        self._routers = routers
        self._tracer = tracer or trace.get_tracer(__name__)
        self._request_limits = request_limits or RequestLimits()
        # KServe configures its loggers in ModelServer.__init__; adopt and quieten them only now.
        if log_config is not None:
            setup_logging(log_config, adopt=ADOPTED_LOGGERS)
        logging.getLogger("kserve.trace").setLevel(logging.WARNING)  # two lines per request
        logging.getLogger("kserve").addFilter(_drop_not_ready_tracebacks)

    def start(self, models: list[Any] | None = None) -> None:
        from kserve.model_server import app

        # Innermost: a handler whose client left is cancelled inside every other layer.
        app.add_middleware(CancelOnDisconnect)
        # Next, so metrics and spans see its 413/415/500, and it sees every route's exception.
        app.add_middleware(RequestGuard, max_request_bytes=self._request_limits.max_request_bytes)
        # Triton's body rules on the v2 infer route come before KServe's, for predictor and transformer.
        routers = [v2_infer_router(self.dataplane), *self._routers(self.dataplane)]
        install_http(app, self.model, self.metrics, routers, self._tracer)
        document_served_routes(app, routers)
        # Added last, so outermost: a refused request reads no body and waits for no model.
        app.add_middleware(HttpAccess, keys=self._api_keys, repository_enabled=self._enable_model_repository)
        log.log(logging.INFO if self._api_keys is not None else logging.WARNING, "%s",
                describe(self._api_keys, self._enable_model_repository))
        self.register_model(self.model)  # type: ignore[arg-type]
        self.servers.append(self.model.load_in_background())
        self._rest_server = KzeroRESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            grace_period=self.grace_period,
            timeout_keep_alive=self.timeout_keep_alive,
        )
        self._rest_server.config.http = guarded_http_protocol(self._request_limits)  # header deadline and size
        self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            self._grpc_server = KzeroGRPCServer(
                self.grpc_port,
                self.dataplane,
                self.model_repository_extension,
                kwargs={"grpc_max_send_message_length": 64 << 20,
                        "grpc_max_receive_message_length": self._request_limits.max_request_bytes},
                grace_period=self.grace_period,
                tracer=self._tracer,
                access=GrpcAccess(self._api_keys, self._enable_model_repository),
            )
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


def serve(server: KzeroServer, telemetry: Telemetry, role: str) -> int:
    """Run ``server`` until it stops; a model that cannot load must not look alive (exit 1)."""
    try:
        server.start()
    except Exception as err:
        log.error("%s stopped: %s", role, err, exc_info=err)
        return 1
    finally:
        telemetry.shutdown()
    return 0
