"""Our client for calling a predictor (or transformer) over v1, v2 REST or gRPC v2.

KServe's own clients retry nothing by default (0.21's REST retries are silently 0) and forward
no trace context. Here every call is one attempt that classifies its failure as transient
(connection refused, timeout, 5xx, 429/503 with ``Retry-After``) or permanent (other 4xx,
INVALID_ARGUMENT, NOT_FOUND); ``predictors.retry`` decides what to do about it. Whatever the
protocol, callers speak v1 bodies: ``{"instances": [...], "parameters": {...}}`` in,
``{"predictions": [...]}`` out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol

import httpx
import numpy as np

from predictors.errors import PredictorError

Protocol_ = Literal["v1", "v2", "grpc-v2"]
FORWARDED_HEADERS = ("traceparent", "tracestate", "baggage", "x-request-id")


class CallFailed(PredictorError):
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


class PredictorClient(Protocol):
    async def predict(self, model: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        """One attempt; a v1 request body in, a v1 response body out."""
        ...

    async def close(self) -> None: ...


def forwarded(headers: Mapping[str, str] | None) -> dict[str, str]:
    if not headers:
        return {}
    lower = {k.lower(): v for k, v in headers.items()}
    return {k: lower[k] for k in FORWARDED_HEADERS if k in lower}


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", response.text)
    except ValueError:
        return response.text[:500]
    return error.get("message", str(error)) if isinstance(error, dict) else str(error)


class _HttpClient:
    def __init__(self, base_url: str, timeout_s: float) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s)

    async def _post(self, path: str, body: Mapping[str, Any], headers: Mapping[str, str] | None) -> dict:
        try:
            response = await self._http.post(path, json=body, headers=forwarded(headers))
        except httpx.TimeoutException as err:
            raise TransientCallError(f"predictor timed out: {err!r}", status="timeout") from err
        except httpx.TransportError as err:
            raise TransientCallError(f"predictor unreachable: {err!r}", status="unreachable") from err
        status = response.status_code
        if status == 200:
            return response.json()
        message = f"predictor answered {status}: {_error_text(response)}"
        if status in (408, 429) or status >= 500:
            retry_after = _retry_after(response.headers.get("retry-after"))
            raise TransientCallError(message, status=status, retry_after_s=retry_after)
        raise PermanentCallError(message, status=status)

    async def close(self) -> None:
        await self._http.aclose()


class V1Client(_HttpClient):
    async def predict(self, model: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        return await self._post(f"/v1/models/{model}:predict", body, headers)


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


class V2Client(_HttpClient):
    async def predict(self, model: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        texts = v1_to_texts(body)
        request = {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}],
            "parameters": dict(body.get("parameters") or {}),
        }
        response = await self._post(f"/v2/models/{model}/infer", request, headers)
        outputs = [(o["name"], np.asarray(o["data"]).reshape(o["shape"])) for o in response.get("outputs", [])]
        return {"predictions": v2_outputs_to_predictions(outputs)}


class GrpcV2Client:
    _TRANSIENT = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "ABORTED", "INTERNAL", "UNKNOWN")

    def __init__(self, target: str, timeout_s: float) -> None:
        import grpc
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

        self._channel = grpc.aio.insecure_channel(target)
        self._stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._timeout_s = timeout_s

    async def predict(self, model: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        import grpc
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

        texts = v1_to_texts(body)
        request = pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
            name="text", datatype="BYTES", shape=[len(texts)],
            contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in texts]))])
        for name, value in (body.get("parameters") or {}).items():
            request.parameters[name].CopyFrom(_grpc_parameter(name, value))
        try:
            response = await self._stub.ModelInfer(
                request, timeout=self._timeout_s, metadata=tuple(forwarded(headers).items())
            )
        except grpc.aio.AioRpcError as err:
            code = err.code().name
            message = f"predictor answered {code}: {err.details()}"
            if code in self._TRANSIENT:
                trailers = dict(err.trailing_metadata() or ())
                retry_after = _retry_after(trailers.get("retry-after"))
                raise TransientCallError(message, status=code, retry_after_s=retry_after) from err
            raise PermanentCallError(message, status=code) from err
        from kserve.protocol.infer_type import InferResponse

        decoded = InferResponse.from_grpc(response)
        return {"predictions": v2_outputs_to_predictions([(o.name, o.as_numpy()) for o in decoded.outputs])}

    async def close(self) -> None:
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


def make_client(protocol: Protocol_, target: str, timeout_s: float = 60.0) -> PredictorClient:
    """``target`` is a base URL for v1/v2 (``http://host:8080``) and ``host:port`` for gRPC."""
    if protocol == "v1":
        return V1Client(target, timeout_s)
    if protocol == "v2":
        return V2Client(target, timeout_s)
    if protocol == "grpc-v2":
        return GrpcV2Client(target.removeprefix("grpc://"), timeout_s)
    raise ValueError(f"protocol {protocol!r}: expected v1, v2 or grpc-v2")
