"""Calls through ``tritonclient.grpc`` in a child process, for tests.

Triton's protos (grpc_service.proto) and KServe's (grpc_predict_v2.proto) both define package
``inference``; protobuf refuses the second file in a process that loaded the first, and the test
process loads KServe's. Reads ``{"target": "host:port", "calls": [...]}`` on stdin and writes one
JSON result per call on stdout; an ``InferenceServerException`` is a result, not a crash.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException


def plain(values: np.ndarray) -> Any:
    """Nested lists for JSON; BYTES elements decoded (they are UTF-8 text here)."""
    if values.dtype != np.object_:
        return values.tolist()
    return np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v, otypes=[object])(values).tolist()


def infer(client: triton_grpc.InferenceServerClient, call: dict[str, Any]) -> dict[str, Any]:
    inputs = []
    for spec in call["inputs"]:
        tensor = triton_grpc.InferInput(spec["name"], [len(spec["values"])], spec["datatype"])
        if spec["datatype"] == "BYTES":
            tensor.set_data_from_numpy(np.array([v.encode() for v in spec["values"]], dtype=object))
        else:
            tensor.set_data_from_numpy(np.array(spec["values"], dtype=np.float32))
        inputs.append(tensor)
    result = client.infer(call["model"], inputs, request_id=call.get("request_id", ""),
                          parameters=call.get("parameters"))
    reply = result.get_response()
    return {
        "id": reply.id,
        "raw_output_contents": len(reply.raw_output_contents),
        "contents": [o.HasField("contents") for o in reply.outputs],
        "outputs": {o.name: plain(result.as_numpy(o.name)) for o in reply.outputs},
    }


def run(client: triton_grpc.InferenceServerClient, call: dict[str, Any]) -> dict[str, Any]:
    try:
        if call["op"] == "ready":
            return {"live": client.is_server_live(), "ready": client.is_server_ready(),
                    "model_ready": client.is_model_ready(call["model"])}
        if call["op"] == "metadata":
            return dict(client.get_model_metadata(call["model"], as_json=True))
        return infer(client, call)
    except InferenceServerException as err:
        return {"error": {"status": err.status(), "message": err.message()}}


def main() -> int:
    request = json.load(sys.stdin)
    client = triton_grpc.InferenceServerClient(request["target"])
    try:
        json.dump([run(client, call) for call in request["calls"]], sys.stdout)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
