"""The v2 protocol as Triton's clients speak it: the binary tensor extension on REST, raw tensors on gRPC.

KServe already parses binary bodies (``InferRequest.from_bytes``) and writes binary outputs
(``InferResponse.to_rest``); this module wires in what it lacks:

- A body without ``Inference-Header-Content-Length`` is all JSON (Triton's rule), whatever its
  Content-Type. tritonclient sends no Content-Type at all, and FastAPI parses only a JSON content
  type as JSON, so KServe's route took such a body for binary and asked for the header.
- A binary body's JSON header is validated before KServe slices it, so a malformed one is a 400
  naming the field rather than a ``KeyError``.
- Outputs carry numpy arrays, so gRPC answers ``raw_output_contents`` (all Triton's client reads)
  and REST answers binary when asked: ``parameters.binary_data_output``, or per requested output
  ``parameters.binary_data``, which overrides it as in Triton.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, RequestedOutput
from kserve.protocol.rest.v2_datamodels import InferenceRequest, RequestInput
from kserve.protocol.rest.v2_endpoints import V2Endpoints

from serving.errors import InvalidInput
from serving.validation import parse_json, parse_model, plain_parameters

HEADER_LENGTH = "inference-header-content-length"
# Request parameters that choose the wire format; a model never sees them.
WIRE_PARAMETERS = frozenset({"binary_data_output"})


class _BinaryInput(RequestInput):
    data: list[Any] | None = None  # absent when the tensor follows the JSON header


class _BinaryHeader(InferenceRequest):
    inputs: list[_BinaryInput]  # type: ignore[assignment]


def decode_body(body: bytes, header_length: str | None, model_name: str) -> InferRequest:
    """A v2 REST body, JSON only or a JSON header and tensor bytes, checked before any work is done."""
    request = _decode(body, header_length, model_name)
    output_choice(request)
    return request


def _decode(body: bytes, header_length: str | None, model_name: str) -> InferRequest:
    if header_length is None:
        return InferRequest.from_inference_request(parse_model(InferenceRequest, parse_json(body)), model_name)
    length = _json_length(header_length, len(body))
    header = parse_model(_BinaryHeader, parse_json(body[:length]))
    sizes = [_binary_size(i, tensor) for i, tensor in enumerate(header.inputs) if tensor.data is None]
    if sum(sizes) != len(body) - length:
        raise InvalidInput("inputs", f"binary_data_size adds up to {sum(sizes)} bytes, but "
                                     f"{len(body) - length} bytes follow the JSON header")
    try:
        return InferRequest.from_bytes(body, length, model_name)
    except (ValueError, struct.error) as err:  # tensor bytes that do not fit the datatype or shape
        raise InvalidInput("inputs", f"cannot read the binary tensor data: {err}") from err


def _json_length(value: str, body_length: int) -> int:
    length = int(value) if value.strip().isdigit() else -1
    if not 0 < length <= body_length:
        raise InvalidInput("Inference-Header-Content-Length",
                           f"expected the JSON header's length in bytes (1 to {body_length}), got {value!r}")
    return length


def _binary_size(index: int, tensor: _BinaryInput) -> int:
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        raise InvalidInput(f"inputs[{index}]", "needs 'data' or parameters.binary_data_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInput(f"inputs[{index}].parameters.binary_data_size", f"expected bytes >= 0, got {size!r}")
    return size


def v2_infer_router(dataplane: DataPlane) -> APIRouter:
    """``POST /v2/models/{m}/infer`` with Triton's body rules, handed on to KServe's handler."""
    endpoints = V2Endpoints(dataplane)
    router = APIRouter()

    async def infer(request: Request, response: Response, model_name: str) -> Any:
        decoded = decode_body(await request.body(), request.headers.get(HEADER_LENGTH), model_name)
        # KServe's dataplane passes an already decoded InferRequest straight to the model.
        return await endpoints.infer(request, response, model_name, decoded)  # type: ignore[arg-type]

    router.add_api_route("/v2/models/{model_name}/infer", infer, methods=["POST"], response_model=None)
    return router


def tensor(name: str, datatype: str, values: np.ndarray) -> InferOutput:
    """An output holding its numpy array; KServe encodes it when the response goes out."""
    return InferOutput(name=name, shape=list(values.shape), datatype=datatype, data=values)


def output_choice(request: InferRequest) -> tuple[bool, list[RequestedOutput] | None]:
    """(all outputs binary, the outputs asked for with their binary choice); gRPC is always raw."""
    if request.from_grpc:
        return False, None
    binary = _flag(request.parameters, "binary_data_output", "parameters")
    if not request.request_outputs:
        return binary, None
    # KServe reads an absent per-output binary_data as False; Triton falls back to binary_data_output.
    return binary, [
        RequestedOutput(o.name, {**(o.parameters or {}), "binary_data": _flag(
            o.parameters, "binary_data", f"outputs.{o.name}.parameters", default=binary)})
        for o in request.request_outputs
    ]


def v2_response(request: InferRequest, outputs: Sequence[InferOutput]) -> InferResponse:
    binary, requested = output_choice(request)
    return InferResponse(
        response_id=request.id or "", model_name=request.model_name, infer_outputs=list(outputs),
        from_grpc=request.from_grpc, use_binary_outputs=binary, requested_outputs=requested,
    )


def _flag(parameters: Any, name: str, where: str, default: bool = False) -> bool:
    value = (parameters or {}).get(name, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}.{name}", f"expected true or false, got {value!r}")
    return value


def model_parameters(request: InferRequest) -> dict[str, Any]:
    """The request's parameters meant for the model, as plain values."""
    return {k: v for k, v in plain_parameters(request.parameters).items() if k not in WIRE_PARAMETERS}
