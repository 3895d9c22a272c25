"""Our client for calling a predictor (or transformer) over v1, v2 REST or gRPC v2.

KServe's own clients retry nothing by default (0.21's REST retries are silently 0) and forward
no trace context. Here every call is one attempt that classifies its failure as transient
(connection refused, timeout, 5xx, 429/503 with ``Retry-After``) or permanent (other 4xx,
INVALID_ARGUMENT, NOT_FOUND); ``serving.retry`` decides what to do about it. A refused API key
(401, UNAUTHENTICATED) is ``Unauthorized``, permanent: no request can pass until the key is fixed.
Whatever the protocol, callers speak v1 bodies: ``{"instances": [...], "parameters": {...}}`` in,
``{"predictions": [...]}`` out.

Every call is a CLIENT span whose context goes out as W3C headers (HTTP) or metadata (gRPC). Its
parent is the current span, or else the trace context in the ``headers`` argument, so a caller with
no span of its own (a worker holding only an event's ``traceparent``) still continues its trace.
A batched caller's per-instance contexts (``parameters.traceparents``, see ``serving.item_trace``)
go as JSON lists on v1 and as JSON text in string parameters on v2 and gRPC.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import SecretStr

from events.event import compact_json
from observability import semconv
from observability.propagation import extract, inject
from serving import item_trace
from serving.errors import ServingError

WireProtocol = Literal["v1", "v2", "grpc-v2"]  # how a client calls a predictor
FORWARDED_HEADERS = ("x-request-id",)
GRPC_SERVICE = "inference.GRPCInferenceService"
OPENAI_PREFIX = "/openai"  # where predictors and transformers serve OpenAI's /v1 routes


class CallFailed(ServingError):
    """One call to a predictor failed."""

    def __init__(self, message: str, *, status: int | str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = 1


class TransientCallError(CallFailed):
    """Worth retrying: the predictor is down, slow, overloaded or failing on its side."""

    def __init__(self, message: str, *, status: int | str | None = None, retry_after_s: float | None = None):
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s


class PermanentCallError(CallFailed, ValueError):
    """The request itself is wrong; retrying cannot help."""


class Unauthorized(PermanentCallError):
    """The predictor refused our API key (or its absence): no request can succeed until that is fixed."""


def refused_message(where: str, status: int | str, api_key: SecretStr | None) -> str:
    what = "the API key" if api_key is not None else "a request without an API key"
    return f"predictor at {where} refused {what} ({status})"


def bearer_headers(api_key: SecretStr | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key.get_secret_value()}"} if api_key is not None else {}


class PredictorClient(Protocol):
    async def predict(self, model: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        """One attempt; a v1 request body in, a v1 response body out."""
        ...

    async def openai(self, url: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        """One attempt at an OpenAI route (``url`` as ``/v1/embeddings``, served under ``/openai``):
        the OpenAI request body in, the OpenAI response body out."""
        ...

    async def close(self) -> None: ...


def forwarded(headers: Mapping[str, str] | None) -> dict[str, str]:
    """What goes on to the next hop besides the trace context, which the client span replaces."""
    if not headers:
        return {}
    lower = {k.lower(): v for k, v in headers.items()}
    return {k: lower[k] for k in FORWARDED_HEADERS if k in lower}


@contextmanager
def client_span(
    tracer: trace.Tracer, name: str, attributes: Mapping[str, Any], headers: Mapping[str, str] | None
) -> Iterator[tuple[trace.Span, dict[str, str]]]:
    """A CLIENT span for one outgoing call and the headers to send with it (its trace context and
    ``x-request-id``). A ``CallFailed`` or other error leaving the block marks the span failed."""
    parent = None if trace.get_current_span().get_span_context().is_valid else extract(headers)
    with tracer.start_as_current_span(name, context=parent, kind=SpanKind.CLIENT, attributes=attributes,
                                      record_exception=False, set_status_on_exception=False) as span:
        try:
            yield span, {**forwarded(headers), **inject()}
        except BaseException as err:
            mark_failed(span, err)
            raise


def mark_failed(span: trace.Span, err: BaseException) -> None:
    span.set_attribute(semconv.ERROR_TYPE, error_type(err))
    span.set_status(Status(StatusCode.ERROR, type(err).__name__))


def error_type(err: BaseException) -> str:
    """``error.type``: the status a call failed with, else the class of what broke it."""
    status = getattr(err, "status", None)
    if isinstance(status, int | str) and status not in ("timeout", "unreachable"):
        return str(status)
    cause = err.__cause__ or err
    return f"{type(cause).__module__}.{type(cause).__qualname__}"


def record_usage(span: trace.Span, usage: Mapping[str, Any]) -> None:
    """Token counts a predictor reported, as ``gen_ai.usage.*`` (counts only, never text)."""
    if isinstance(prompt := usage.get("prompt_tokens"), int):
        span.set_attribute(semconv.GEN_AI_INPUT_TOKENS, prompt)
    if isinstance(completion := usage.get("completion_tokens"), int):
        span.set_attribute(semconv.GEN_AI_OUTPUT_TOKENS, completion)


def http_attributes(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {semconv.HTTP_METHOD: "POST", semconv.URL_FULL: url, semconv.SERVER_ADDRESS: parts.hostname or "",
            semconv.SERVER_PORT: port}


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _error_text(text: str) -> str:
    try:
        error = json.loads(text).get("error", text)
    except (ValueError, AttributeError):
        return text[:500]
    return error.get("message", str(error)) if isinstance(error, dict) else str(error)


def transport_failure(err: httpx.TransportError) -> TransientCallError:
    """A call that got no answer: retry it."""
    if isinstance(err, httpx.TimeoutException):
        return TransientCallError(f"predictor timed out: {err!r}", status="timeout")
    return TransientCallError(f"predictor unreachable: {err!r}", status="unreachable")


def raise_for_status(
    status: int, headers: Mapping[str, str], text: str, where: str, api_key: SecretStr | None
) -> None:
    """Nothing for a 200; else the failure an HTTP answer means, transient or permanent."""
    if status == 200:
        return
    if status == 401:
        raise Unauthorized(refused_message(where, status, api_key), status=status)
    message = f"predictor answered {status}: {_error_text(text)}"
    if status in (408, 429) or status >= 500:
        raise TransientCallError(message, status=status, retry_after_s=_retry_after(headers.get("retry-after")))
    raise PermanentCallError(message, status=status)


class HttpClient:
    """One pooled httpx client per object: base URL, API key, per-step timeout, tracer."""

    def __init__(
        self, base_url: str, timeout_s: float, tracer: trace.Tracer | None = None, api_key: SecretStr | None = None
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._http = httpx.AsyncClient(base_url=self._base_url, timeout=timeout_s, headers=bearer_headers(api_key))
        self._tracer = tracer or trace.get_tracer(__name__)

    async def _post(self, route: str, model: str, body: Mapping[str, Any], headers: Mapping[str, str] | None) -> dict:
        """POST ``body`` to ``route`` (a template with ``{model_name}``) for ``model``."""
        return await self._send(route, route.format(model_name=model), body, headers)

    async def _send(self, route: str, path: str, body: Mapping[str, Any], headers: Mapping[str, str] | None) -> dict:
        with client_span(self._tracer, f"POST {route}", http_attributes(self._base_url + path), headers) as (
            span, outgoing
        ):
            try:
                response = await self._http.post(path, content=compact_json(body),
                                                 headers={**outgoing, "content-type": "application/json"})
            except httpx.TransportError as err:
                raise transport_failure(err) from err
            span.set_attribute(semconv.HTTP_STATUS, response.status_code)
            raise_for_status(response.status_code, response.headers, response.text, self._base_url, self._api_key)
            return orjson.loads(response.content)  # the stdlib parser took an eighth of the worker's samples

    async def openai(self, url: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        path = OPENAI_PREFIX + url
        return await self._send(path, path, body, headers)

    async def close(self) -> None:
        await self._http.aclose()


class V1Client(HttpClient):
    async def predict(self, model: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        return await self._post("/v1/models/{model_name}:predict", model, body, headers)


def v1_to_texts(body: Mapping[str, Any]) -> list[str]:
    """The strings a v2 ``text`` input carries for v1 instances (plain, ``text`` or ``prompt``)."""
    texts = []
    for i, instance in enumerate(body.get("instances") or []):
        if isinstance(instance, Mapping):
            instance = instance.get("text", instance.get("prompt"))
        if not isinstance(instance, str):
            raise PermanentCallError(f"instances[{i}]: the v2 protocol carries text instances only", status=400)
        texts.append(instance)
    return texts


def v2_outputs_to_predictions(outputs: list[tuple[str, np.ndarray]]) -> list[Any]:
    for name, values in outputs:
        if name == "embedding":
            return values.astype(float).tolist()
        if name == "text":
            return [{"text": v.decode() if isinstance(v, bytes) else str(v)} for v in values.reshape(-1).tolist()]
    raise TransientCallError(f"predictor returned no known output (got {[n for n, _ in outputs]})")


class V2Client(HttpClient):
    async def predict(self, model: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        texts = v1_to_texts(body)
        request = {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}],
            "parameters": item_trace.as_scalars(body.get("parameters") or {}),
        }
        response = await self._post("/v2/models/{model_name}/infer", model, request, headers)
        outputs = [(o["name"], np.asarray(o["data"]).reshape(o["shape"])) for o in response.get("outputs", [])]
        return {"predictions": v2_outputs_to_predictions(outputs)}


class GrpcV2Client:
    _TRANSIENT = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "ABORTED", "INTERNAL", "UNKNOWN")

    def __init__(
        self, target: str, timeout_s: float, tracer: trace.Tracer | None = None, api_key: SecretStr | None = None
    ) -> None:
        self._target = target
        self._api_key = api_key
        self._channel: Any = None
        self._stub: Any = None
        self._timeout_s = timeout_s
        self._tracer = tracer or trace.get_tracer(__name__)
        host, _, port = target.rpartition(":")
        self._attributes: dict[str, Any] = {
            semconv.RPC_SYSTEM: "grpc", semconv.RPC_SERVICE: GRPC_SERVICE, semconv.RPC_METHOD: "ModelInfer",
            semconv.SERVER_ADDRESS: host.strip("[]") or target,
        }
        if port.isdigit():
            self._attributes[semconv.SERVER_PORT] = int(port)

    def _connected(self) -> Any:
        """The stub, on a channel made at first use: a grpc.aio channel belongs to the event loop it is
        made on, and a client is often made before the loop that uses it runs (the worker's, in a thread)."""
        if self._stub is None:
            import grpc
            from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

            self._channel = grpc.aio.insecure_channel(self._target)
            self._stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def predict(self, model: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        import grpc
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

        texts = v1_to_texts(body)
        request = pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
            name="text", datatype="BYTES", shape=[len(texts)],
            contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in texts]))])
        for name, value in item_trace.as_scalars(body.get("parameters") or {}).items():
            request.parameters[name].CopyFrom(_grpc_parameter(name, value))
        with client_span(self._tracer, f"{GRPC_SERVICE}/ModelInfer", self._attributes, headers) as (span, outgoing):
            try:
                metadata = (*outgoing.items(), *bearer_headers(self._api_key).items())
                response = await self._connected().ModelInfer(request, timeout=self._timeout_s, metadata=metadata)
            except grpc.aio.AioRpcError as err:
                span.set_attribute(semconv.RPC_GRPC_STATUS, err.code().value[0])
                code = err.code().name
                if code == "UNAUTHENTICATED":
                    raise Unauthorized(refused_message(self._target, code, self._api_key), status=code) from err
                message = f"predictor answered {code}: {err.details()}"
                if code in self._TRANSIENT:
                    trailers = dict(err.trailing_metadata() or ())
                    retry_after = _retry_after(trailers.get("retry-after"))
                    raise TransientCallError(message, status=code, retry_after_s=retry_after) from err
                raise PermanentCallError(message, status=code) from err
            span.set_attribute(semconv.RPC_GRPC_STATUS, grpc.StatusCode.OK.value[0])
        from kserve.protocol.infer_type import InferResponse

        decoded = InferResponse.from_grpc(response)
        return {"predictions": v2_outputs_to_predictions([(o.name, o.as_numpy()) for o in decoded.outputs])}

    async def openai(self, url: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        raise PermanentCallError(f"{url}: OpenAI requests go over HTTP; this worker calls gRPC v2", status=400)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def _grpc_parameter(name: str, value: Any) -> Any:
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, str | float):  # InferParameter has no double; the server parses numeric strings
        return pb.InferParameter(string_param=str(value))
    raise PermanentCallError(f"parameters.{name}: gRPC v2 parameters must be scalars", status=400)


def make_client(
    protocol: WireProtocol, target: str, timeout_s: float = 60.0, tracer: trace.Tracer | None = None,
    api_key: SecretStr | None = None,
) -> PredictorClient:
    """``target`` is a base URL for v1/v2 (``http://host:8080``) and ``host:port`` for gRPC; ``api_key``
    goes as ``Authorization: Bearer`` (gRPC ``authorization`` metadata) on every call."""
    if protocol == "v1":
        return V1Client(target, timeout_s, tracer, api_key)
    if protocol == "v2":
        return V2Client(target, timeout_s, tracer, api_key)
    if protocol == "grpc-v2":
        return GrpcV2Client(target.removeprefix("grpc://"), timeout_s, tracer, api_key)
    raise ValueError(f"protocol {protocol!r}: expected v1, v2 or grpc-v2")
