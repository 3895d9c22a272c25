"""Fuzzing the HTTP routes of an embed predictor, a generate predictor and the RAG transformer.

Two sources of input: schemathesis, generating valid and invalid requests from each server's own
OpenAPI document (``/openapi.json``: KServe turns off only the docs UI, and kzero's document
describes the routes that actually serve, see ``serving.openapi_doc``), and hand-written bodies
that parsers and tokenizers choke on. No input may get a 5xx other than a deliberate 503 with
``Retry-After``, and every bad request must leave its keep-alive connection usable.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisDeprecationWarning
from schemathesis.core import NotSet
from schemathesis.generation import GenerationMode

from events.event import REQUEST_TYPE
from serving.launch import PredictorProcess

pytestmark = pytest.mark.slow

SERVERS = ["embed_server", "generate_server", "rag_server"]
EXAMPLES_PER_OPERATION = 20  # valid and invalid requests together; fewer where the schema allows fewer
MAX_TOKENS = 2  # valid requests run the model; short generations keep the file's time bounded


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> PredictorProcess:
    return request.getfixturevalue(request.param)


def deliberate(response: httpx.Response) -> bool:
    """A 5xx the server means: shedding or not ready (503 + Retry-After), and KServe's 501 for a model
    version (kzero serves one unversioned model; KServe's handler for that error comes after ours)."""
    if response.status_code == 503:
        return "retry-after" in response.headers
    return response.status_code == 501 and "versioning not supported" in response.text


def _short(value: Any) -> Any:
    """A token count no larger than MAX_TOKENS; a value of the wrong type or below 1 stays, to be refused."""
    if value is None or (isinstance(value, int) and value > MAX_TOKENS):
        return MAX_TOKENS
    return value


def bounded(body: Any, model: str, generates: bool) -> Any:
    """A generated body aimed at the served model (a random name only meets the 404), with generation
    kept short. Token limits themselves are fuzzed by the hand-written bodies below."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if "model" in body:
        body["model"] = model
    if "prompt" in body or "messages" in body:
        body["max_tokens"] = _short(body.get("max_tokens"))
        if "messages" in body:
            body["max_completion_tokens"] = _short(body.get("max_completion_tokens"))
    elif generates and ("instances" in body or "inputs" in body):
        parameters = body.get("parameters", {})
        if isinstance(parameters, dict):
            body["parameters"] = {**parameters, "max_new_tokens": _short(parameters.get("max_new_tokens"))}
    return body


def test_schema_fuzzing_finds_no_server_errors(server: PredictorProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    generates = server.model_name == "smol"
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.path == "/v1/models/{model_name}:predict" and op.body for op in operations), "v1 body undocumented"
    for operation in operations:
        path_parameters = {"model_name": server.model_name} if "{model_name}" in operation.path else None
        cases = st.one_of(*(operation.as_strategy(mode, path_parameters=path_parameters)
                            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)))

        # Deterministic, and no shrinking: every failure is collected and reported, not the first minimised.
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=cases)
        def probe(case: Any) -> None:
            if not isinstance(case.body, NotSet):
                case.body = bounded(case.body, server.model_name, generates)
            response = case.call(base_url=server.url, timeout=120)
            statuses[response.status_code] += 1
            if response.status_code >= 500 and not deliberate(response):
                failures.append(f"{case.method} {case.formatted_path} {response.status_code} {response.text[:200]} "
                                f"body={json.dumps(case.body, default=repr)[:300]}")

        with warnings.catch_warnings():
            # Hypothesis warns when the random module's state moves while it draws a case; another thread
            # of this process can do that (an OTLP exporter left by an earlier test retries with jitter),
            # and the warnings-as-errors setting would turn it into a flaky failure of the draw.
            warnings.simplefilter("ignore", HypothesisDeprecationWarning)
            probe()
    assert not failures, f"{len(failures)} server errors:\n" + "\n".join(failures[:20])
    # Requests were sent, some refused and some reaching the model rather than all stopping at validation.
    assert statuses.total() >= len(operations) and statuses[200] > 0 and statuses[400] > 0, statuses


# --- hand-written bodies ---------------------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000
# Raw JSON put where a request carries text: what parsers, models and tokenizers choke on.
TEXTS = {
    "lone surrogate": b'"\\ud800"',
    "low surrogate first": b'"a\\udc00b"',
    "invalid UTF-8": b'"\xff\xfe"',
    "overlong UTF-8": b'"\xc0\xaf"',
    "deep nesting": DEEP,
    "huge number": b"1e400",
    "NaN": b"NaN",
    "2**70": str(2**70).encode(),
    "object": b'{"a": {"b": []}}',
    "null": b"null",
    "huge string": b'"' + b"x " * (128 << 10) + b'"',  # over every token and character limit
}
# Odd but valid text: any answer but a 5xx.
VALID_TEXTS = {
    "NUL and controls": b'"\\u0000\\u0001\\u001f x"',
    "astral and combining": b'"\\ud83d\\ude00 e\\u0301 \\u202e"',
}
# Whole bodies, on every route.
BODIES = {
    "empty": b"",
    "deep nesting": DEEP,
    "truncated": b'{"instances": [',
    "a list": b"[]",
    "a string": b'"text"',
    "a number": b"1e400",
    "invalid UTF-8": b"\xff\xfe\xfd",
}
CONTENT_TYPES = ["text/plain", "application/xml", "multipart/form-data; boundary=x",
                 "application/x-www-form-urlencoded"]


def event(data: bytes) -> bytes:
    return b'{"specversion": "1.0", "id": "e1", "source": "/fuzz", "type": "%s", "data": %s}' % (
        REQUEST_TYPE.encode(), data)


def routes(fixture: str, model: str) -> list[tuple[str, str, dict[str, str], bytes]]:
    """(route, path, headers, body template) for one server; ``@`` in a template is where text goes."""
    json_type = {"content-type": "application/json"}
    v1 = f"/v1/models/{model}:predict"
    # Short generations where text turns out to be valid.
    short = b', "parameters": {"max_new_tokens": 2}' if fixture == "generate_server" else b""
    instance = b'{"question": @, "parameters": {"max_new_tokens": 2}}' if fixture == "rag_server" else b"@"
    v1_body = b'{"instances": [%s]%s}' % (instance, short)
    found = [
        ("v1", v1, json_type, v1_body),
        ("v2", f"/v2/models/{model}/infer", json_type,
         b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [@]}]%s}' % short),
        ("cloudevent structured", v1, {"content-type": "application/cloudevents+json"}, event(v1_body)),
        ("cloudevent binary", v1, {"content-type": "application/json", "ce-specversion": "1.0", "ce-id": "e1",
                                   "ce-source": "/fuzz", "ce-type": REQUEST_TYPE}, v1_body),
        ("cloudevent batch", v1, {"content-type": "application/cloudevents-batch+json"}, b"[%s]" % event(v1_body)),
    ]
    chat = b'{"model": "%s", "max_tokens": 2, "messages": [{"role": "user", "content": @}]}' % model.encode()
    if fixture == "embed_server":
        found.append(("openai embeddings", "/openai/v1/embeddings", json_type,
                      b'{"model": "%s", "input": [@]}' % model.encode()))
    if fixture == "generate_server":
        found.append(("openai completions", "/openai/v1/completions", json_type,
                      b'{"model": "%s", "max_tokens": 2, "prompt": @}' % model.encode()))
    if fixture != "embed_server":
        found.append(("openai chat", "/openai/v1/chat/completions", json_type, chat))
    return found


def numbers(fixture: str, model: str) -> list[tuple[str, str, bytes]]:
    """Numbers no parameter can take, in parameters that take numbers."""
    m = model.encode()
    found = [("v2 shape", f"/v2/models/{model}/infer",
              b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [%d], "data": ["a"]}]}' % 2**70)]
    if fixture == "generate_server":
        found += [
            ("v1 max_new_tokens", f"/v1/models/{model}:predict",
             b'{"instances": ["a"], "parameters": {"max_new_tokens": %d}}' % 2**70),
            ("v1 seed", f"/v1/models/{model}:predict", b'{"instances": ["a"], "parameters": {"seed": -%d}}' % 2**70),
            ("completions max_tokens", "/openai/v1/completions",
             b'{"model": "%s", "prompt": "a", "max_tokens": %d}' % (m, 2**70)),
            ("completions temperature", "/openai/v1/completions",
             b'{"model": "%s", "prompt": "a", "temperature": 1e308, "top_p": 5e-324}' % m),
        ]
    if fixture != "embed_server":
        found.append(("chat max_completion_tokens", "/openai/v1/chat/completions",
                      b'{"model": "%s", "max_completion_tokens": %d, "messages": [{"role": "user", "content": "a"}]}'
                      % (m, 2**70)))
    if fixture == "rag_server":
        found.append(("rag top_k", f"/v1/models/{model}:predict",
                      b'{"instances": [{"question": "a", "top_k": %d}]}' % 2**70))
    return found


Request = tuple[str, str, dict[str, str], bytes, bool]
"""name, path, headers, body, and whether it must fail (a 4xx naming the problem)."""


def requests_for(fixture: str, model: str) -> Iterator[Request]:
    for route, path, headers, template in routes(fixture, model):
        for name, text in TEXTS.items():
            yield f"{route}: {name}", path, headers, template.replace(b"@", text), True
        for name, text in VALID_TEXTS.items():
            yield f"{route}: {name}", path, headers, template.replace(b"@", text), False
        for name, body in BODIES.items():
            yield f"{route}: body {name}", path, headers, body, True
        if "ce-specversion" not in headers:  # a binary event's content type is its data's
            for content_type in CONTENT_TYPES:
                body = template.replace(b"@", b'"a"')
                yield f"{route}: {content_type}", path, {"content-type": content_type}, body, True
    for name, path, body in numbers(fixture, model):
        yield name, path, {"content-type": "application/json"}, body, True


def test_bad_bodies_are_4xx_naming_the_problem_and_keep_the_connection(server: PredictorProcess, request: Any) -> None:
    fixture = request.node.callspec.params["server"]
    good = f"/v2/models/{server.model_name}/ready"
    failures: list[str] = []
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for name, path, headers, body, must_fail in requests_for(fixture, server.model_name):
            response = client.post(path, content=body, headers=headers)
            problem = _problem(response) if must_fail else _server_error(response)
            if problem:
                failures.append(f"{name}: {problem}")
                continue
            after = client.get(good)
            if after.status_code != 200:
                failures.append(f"{name}: the next request got {after.status_code}")
            elif response.headers.get("connection") != "close" and _port(after) != _port(response):
                failures.append(f"{name}: the connection was dropped after {response.status_code}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)


def _problem(response: httpx.Response) -> str | None:
    """Why a response to a bad request is wrong: not a 4xx, or not an error naming what is wrong.

    A CloudEvents batch answers 200 with an error event in place of each bad event.
    """
    if response.status_code == 200 and response.headers.get("content-type", "").startswith(
            "application/cloudevents-batch+json"):
        replies = response.json()
        errors = [r.get("data", {}).get("error", {}) for r in replies if r.get("type", "").endswith(".error")]
        return None if len(errors) == len(replies) and all(e.get("message") for e in errors) else "not all errors"
    if not 400 <= response.status_code < 500:
        return f"{response.status_code} {response.text[:300]}"
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} without an error body: {response.text[:300]}"
    message = error.get("message") if isinstance(error, dict) else error
    return None if isinstance(message, str) and ": " in message else f"error names nothing: {error!r}"


def _server_error(response: httpx.Response) -> str | None:
    return f"{response.status_code} {response.text[:300]}" if response.status_code >= 500 else None


def _port(response: httpx.Response) -> int:
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])
