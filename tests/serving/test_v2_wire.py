"""The v2 wire rules Triton's clients rely on: body decoding and how outputs are encoded, without a server."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput

from serving.errors import InvalidInput
from serving.v2_wire import decode_body, model_parameters, tensor, v2_response

TEXT = {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}


def binary_body(values: np.ndarray, datatype: str, **parameters: Any) -> tuple[bytes, int]:
    """A binary-extension body as KServe's own client encodes one."""
    tensor_ = InferInput("text", list(values.shape), datatype)
    tensor_.set_data_from_numpy(values, binary_data=True)
    body, length = InferRequest(model_name="m", infer_inputs=[tensor_], parameters=parameters or None).to_rest()
    assert isinstance(body, bytes) and length is not None
    return body, length


def test_a_body_without_the_length_header_is_all_json() -> None:
    request = decode_body(json.dumps({"id": "r1", "inputs": [TEXT]}).encode(), None, "m")
    assert request.id == "r1" and request.model_name == "m"
    assert request.inputs[0].as_numpy().tolist() == ["a", "b"]


def test_binary_inputs_decode_to_the_values_sent() -> None:
    texts = np.array(["höhe", "", "kafka"], dtype=object)
    body, length = binary_body(texts, "BYTES")
    decoded = decode_body(body, str(length), "m").inputs[0].as_numpy()
    assert [v.decode() if isinstance(v, bytes) else v for v in decoded.tolist()] == texts.tolist()
    floats = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, length = binary_body(floats, "FP32")
    np.testing.assert_array_equal(decode_body(body, str(length), "m").inputs[0].as_numpy(), floats)


def _header(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


BIN = {"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}
PAYLOAD = struct.pack("<I", 2) + b"hi"


def framed(tensor_: dict[str, Any], payload: bytes = PAYLOAD) -> tuple[bytes, str]:
    """(body, Inference-Header-Content-Length) of one binary input."""
    header = _header([tensor_])
    return header + payload, str(len(header))


@pytest.mark.parametrize(
    ("body", "header", "field", "problem"),
    [
        (b"{not json", None, "body", "not valid JSON"),
        (_header([{"name": "text", "shape": [1], "data": ["a"]}]), None, "inputs[0].datatype", "Field required"),
        (_header([TEXT]), "x7", "Inference-Header-Content-Length", "got 'x7'"),
        (_header([TEXT]), "9999", "Inference-Header-Content-Length", "1 to"),
        (*framed({**BIN, "name": 3}), "inputs[0].name", ""),
        (*framed({**BIN, "parameters": {}}), "inputs[0]", "binary_data_size"),
        (*framed({**BIN, "parameters": {"binary_data_size": -6}}), "inputs[0].parameters.binary_data_size", "-6"),
        (*framed(BIN, PAYLOAD[:4]), "inputs", "6 bytes, but 4 bytes follow"),
        (*framed({**BIN, "datatype": "FP32"}), "inputs", "cannot read"),
        (_header([TEXT], parameters={"binary_data_output": "yes"}), None, "parameters.binary_data_output", "'yes'"),
        (_header([TEXT], outputs=[{"name": "embedding", "parameters": {"binary_data": 1}}]), None,
         "outputs.embedding.parameters.binary_data", "true or false"),
    ],
)
def test_a_malformed_body_names_the_field(body: bytes, header: str | None, field: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as err:
        decode_body(body, header, "m")
    assert err.value.field == field and problem in err.value.problem


def _request(parameters: dict[str, Any] | None = None, outputs: list[RequestedOutput] | None = None) -> InferRequest:
    return InferRequest(model_name="m", infer_inputs=[], request_id="r1", parameters=parameters,
                        request_outputs=outputs)


def _outputs() -> list[Any]:
    return [tensor("embedding", "FP32", np.array([[0.5, -1.25]], dtype=np.float32)),
            tensor("text", "BYTES", np.array(["hello"], dtype=object))]


def test_rest_answers_json_unless_binary_is_asked_for() -> None:
    body, length = v2_response(_request(), _outputs()).to_rest()
    assert length is None and isinstance(body, dict)
    assert [o["data"] for o in body["outputs"]] == [[0.5, -1.25], ["hello"]]

    body, length = v2_response(_request({"binary_data_output": True}), _outputs()).to_rest()
    assert isinstance(body, bytes) and length is not None
    assert body[length:] == np.array([0.5, -1.25], dtype="<f4").tobytes() + struct.pack("<I", 5) + b"hello"
    decoded = InferResponse.from_bytes(body, length)
    np.testing.assert_array_equal(decoded.outputs[0].as_numpy(), [[0.5, -1.25]])
    assert decoded.outputs[1].as_numpy().tolist() == ["hello"]


def test_a_requested_outputs_binary_data_overrides_binary_data_output() -> None:
    # "text" says nothing, so it follows binary_data_output; "embedding" asks for JSON.
    outputs = [RequestedOutput("embedding", {"binary_data": False}), RequestedOutput("text", {})]
    body, length = v2_response(_request({"binary_data_output": True}, outputs), _outputs()).to_rest()
    assert isinstance(body, bytes) and length is not None
    header = json.loads(body[:length])
    assert header["outputs"][0]["data"] == [0.5, -1.25]
    assert "data" not in header["outputs"][1] and body[length:] == struct.pack("<I", 5) + b"hello"


def test_grpc_answers_raw_output_contents_as_triton_does() -> None:
    request = _request()
    request.from_grpc = True
    reply = v2_response(request, _outputs()).to_grpc()
    assert all(not o.HasField("contents") for o in reply.outputs)
    embedding, text = reply.raw_output_contents
    np.testing.assert_array_equal(np.frombuffer(embedding, dtype="<f4"), [0.5, -1.25])
    assert text == struct.pack("<I", 5) + b"hello"  # 4-byte little-endian length, then the bytes


def test_model_parameters_leave_out_the_wire_format() -> None:
    request = _request({"binary_data_output": True, "max_new_tokens": 4})
    assert model_parameters(request) == {"max_new_tokens": 4}
