"""Body parsing: one orjson pass with a depth limit, and text that is not Unicode named by its field."""

from __future__ import annotations

import pytest

from predictors.openai_api import ChatBody
from serving.errors import InvalidInput
from serving.validation import documented_body, parse_json, read_json, utf8_size


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        (b'{"instances": ["ok", "\\ud800"]}', "instances[1]", "not valid Unicode text"),
        (b'{"instances": ["\xff\xfe"]}', "instances[0]", "not valid Unicode text"),
        (b'{"messages": [{"role": "user", "content": "a\\udc00b"}]}', "messages[0].content", "not valid Unicode"),
        (b'[{"data": {"instances": ["x"]}}, {"data": {"instances": ["\\ud83d"]}}]', "[1].data.instances[0]",
         "not valid Unicode"),
        (b'{"a\\ud800": 1}', "body", "not valid Unicode"),  # a bad key: its object is named
        (b"[" * 100_000 + b"]" * 100_000, "body", "depth limit exceeded"),
        (b'{"instances": [NaN]}', "body", "not valid JSON"),
        (b'{"temperature": 1e400}', "body", "not valid JSON"),
        (b"", "body", "not valid JSON"),
        (b'{"instances": [', "body", "not valid JSON"),
    ],
)
def test_malformed_bodies_are_invalid_input_naming_the_field(body: bytes, field: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_json(body)
    assert caught.value.field == field
    assert problem in caught.value.problem


def test_a_prefix_names_where_the_body_sits() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_json(b'{"instances": ["\\udfff"]}', "data")
    assert caught.value.field == "data.instances[0]"


def test_valid_json_parses_to_plain_values_large_integers_as_floats() -> None:
    assert parse_json(b'{"a": [1, 2.5, "\\u00e9\\ud83d\\ude00", null, true]}') == {"a": [1, 2.5, "é😀", None, True]}
    assert parse_json(b"1180591620717411303424") == float(2**70)  # beyond 64 bits: a float, checked by the models


async def test_read_json_parses_a_large_body_off_the_loop_with_the_same_errors() -> None:
    big = b'{"instances": ["' + b"x" * (1 << 20) + b'"]}'
    assert len((await read_json(big))["instances"][0]) == 1 << 20
    with pytest.raises(InvalidInput, match=r"instances\[1\]"):
        await read_json(b'{"instances": ["' + b"x" * (1 << 20) + b'", "\\ud800"]}')


def test_utf8_size_names_the_field_of_a_lone_surrogate_or_a_non_string() -> None:
    assert utf8_size("é", "f") == 2
    with pytest.raises(InvalidInput, match=r"^prompt: not valid Unicode text: lone surrogate at character 2$"):
        utf8_size("ab\ud800", "prompt")
    with pytest.raises(InvalidInput, match=r"^input\[0\]: expected a string, got int$"):
        utf8_size(3, "input[0]")


def test_documented_body_inlines_the_model_schema() -> None:
    schema = documented_body(ChatBody)["requestBody"]["content"]["application/json"]["schema"]
    assert "$defs" not in schema and "$ref" not in str(schema)
    message = schema["properties"]["messages"]["items"]
    assert set(message["properties"]["role"]["enum"]) >= {"user", "assistant"}
