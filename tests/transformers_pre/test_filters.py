"""The filter compiler and the search scope: allow-listed fields, typed and escaped values, served collections.

The escaping is also checked against a real Milvus Lite file: each awkward value finds exactly its
own document, and values written to break out of the string literal find nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from transformers_pre.__main__ import config_from_args
from transformers_pre.config import TransformerConfig
from transformers_pre.errors import BadRequest, CollectionNotServed
from transformers_pre.filters import FilterCompiler, ScopeRules, check_fields, from_text, parse_fields
from transformers_pre.store import Chunk, VectorStore

FIELDS: dict[str, Any] = {"doc_id": "str", "source": "str", "year": "int", "score": "float", "draft": "bool",
                          "tags": "list", "chunk_id": "int"}
COMPILER = FilterCompiler(FIELDS)


def cond(field: str, op: str, value: Any) -> dict[str, Any]:
    return {"field": field, "op": op, "value": value}


def rejected(spec: Any, compiler: FilterCompiler = COMPILER, where: str = "instances[0].filter") -> str:
    with pytest.raises(BadRequest) as caught:
        compiler.compile(spec, where)
    return str(caught.value)


@pytest.mark.parametrize(
    ("spec", "expression"),
    [
        (None, ""),
        ([], ""),
        (cond("doc_id", "eq", "keda"), 'doc_id == "keda"'),
        (cond("source", "ne", "a.md"), 'metadata["source"] != "a.md"'),
        (cond("chunk_id", "lt", 3), "chunk_id < 3"),
        (cond("year", "ge", 2020), 'metadata["year"] >= 2020'),
        (cond("score", "gt", 0.5), 'metadata["score"] > 0.5'),
        (cond("score", "le", 2), 'metadata["score"] <= 2'),
        (cond("draft", "eq", False), 'metadata["draft"] == false'),
        (cond("tags", "contains", "gpu"), 'json_contains(metadata["tags"], "gpu")'),
        (cond("doc_id", "in", ["a"]), 'doc_id == "a"'),
        (cond("year", "in", [1, 2]), '(metadata["year"] == 1 or metadata["year"] == 2)'),
        ([cond("doc_id", "eq", "a"), cond("year", "gt", 1)], '(doc_id == "a" and metadata["year"] > 1)'),
        ({"any": [cond("doc_id", "eq", "a"), [cond("year", "gt", 1), cond("draft", "eq", True)]]},
         '(doc_id == "a" or (metadata["year"] > 1 and metadata["draft"] == true))'),
    ],
)
def test_structured_filters_compile_to_milvus_expressions(spec: Any, expression: str) -> None:
    assert COMPILER.compile(spec) == expression


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ('say "hi"', r'"say \"hi\""'),
        ("C:\\dir\\", r'"C:\\dir\\"'),
        ('\\" or doc_id != "', r'"\\\" or doc_id != \""'),
        ("' or 1==1", "\"' or 1==1\""),
        ("tab\there", '"tab\there"'),
        ("ünïcødé 😀 文字", '"ünïcødé 😀 文字"'),
    ],
)
def test_string_values_are_escaped_literals(value: str, literal: str) -> None:
    assert COMPILER.compile(cond("doc_id", "eq", value)) == f"doc_id == {literal}"


def test_an_unknown_field_names_the_condition_and_the_allowed_fields() -> None:
    compiler = FilterCompiler({"doc_id": "str", "source": "str"})
    message = rejected([cond("doc_id", "eq", "a"), cond("text", "eq", "secret")], compiler)
    assert message == "instances[0].filter[1].field: 'text' is not a filterable field; allowed: doc_id, source"
    assert "not a filterable field" in rejected(cond(["doc_id"], "eq", "a"), compiler)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (cond("doc_id", "eq", 3), "instances[0].filter.value: expected a string, got an integer"),
        (cond("year", "eq", "2020"), "instances[0].filter.value: expected an integer, got a string"),
        (cond("year", "eq", 2020.5), "instances[0].filter.value: expected an integer, got a number"),
        (cond("year", "eq", True), "instances[0].filter.value: expected an integer, got a boolean"),
        (cond("year", "eq", 2**63), "instances[0].filter.value: outside the 64-bit integer range"),
        (cond("score", "lt", float("nan")), "instances[0].filter.value: must be a finite number"),
        (cond("score", "lt", None), "instances[0].filter.value: expected a number, got null"),
        (cond("draft", "eq", 1), "instances[0].filter.value: expected true or false, got an integer"),
        (cond("tags", "contains", ["a"]), "instances[0].filter.value: expected a string, got a list"),
        (cond("doc_id", "in", "a"), 'instances[0].filter.value: "in" takes a non-empty list of values, got a string'),
        (cond("doc_id", "in", []), 'instances[0].filter.value: "in" takes a non-empty list of values, got a list'),
        (cond("doc_id", "in", ["a", 2]), "instances[0].filter.value[1]: expected a string, got an integer"),
        (cond("doc_id", "in", ["a"] * 101), "instances[0].filter.value: 101 values exceed the limit of 100"),
        (cond("doc_id", "eq", "x" * 1025), "instances[0].filter.value: 1025 characters exceed the limit of 1024"),
        (cond("doc_id", "eq", "nul\x00"), "instances[0].filter.value: must not contain control characters"),
        (cond("doc_id", "eq", "line\nbreak"), "instances[0].filter.value: must not contain control characters"),
    ],
)
def test_values_are_type_checked(spec: Any, message: str) -> None:
    assert rejected(spec) == message


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (cond("doc_id", "like", "a%"), "instances[0].filter.op: 'like' is not an operator for the str field "
                                       "'doc_id'; use one of: eq, ne, in"),
        (cond("source", "lt", "b"), "instances[0].filter.op: 'lt' is not an operator"),
        (cond("draft", "in", [True]), "instances[0].filter.op: 'in' is not an operator for the bool field 'draft'; "
                                      "use one of: eq, ne"),
        (cond("tags", "eq", "gpu"), "instances[0].filter.op: 'eq' is not an operator for the list field 'tags'; "
                                    "use one of: contains"),
        (cond("doc_id", ["eq"], "a"), "instances[0].filter.op: ['eq'] is not an operator"),
    ],
)
def test_operators_must_fit_the_field_type(spec: Any, message: str) -> None:
    assert rejected(spec).startswith(message)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("doc_id != \"\"", "instances[0].filter: structured filters are required"),
        (42, "instances[0].filter: expected a condition"),
        ([cond("doc_id", "eq", "a"), "doc_id != ''"], "instances[0].filter[1]: expected a condition"),
        ({"topic": "kafka"}, "instances[0].filter.topic: unknown key"),
        ({"field": "doc_id", "op": "eq"}, "instances[0].filter.value: required"),
        ({"any": []}, "instances[0].filter.any: must not be empty"),
        ({"any": cond("doc_id", "eq", "a")}, "instances[0].filter.any: expected a list of filters, got an object"),
        ({"any": [cond("doc_id", "eq", "a")], "all": []}, 'instances[0].filter.all: unknown key next to "any"'),
        ([[]], "instances[0].filter[0]: must not be empty"),
    ],
)
def test_malformed_filters_name_the_part(spec: Any, message: str) -> None:
    assert rejected(spec).startswith(message)


def test_nesting_and_size_are_limited() -> None:
    leaf = cond("doc_id", "eq", "a")
    assert COMPILER.compile([{"any": [[{"any": [leaf]}]]}]) == 'doc_id == "a"'  # four levels: the limit
    assert rejected([{"any": [[{"any": [[leaf]]}]]}]) == (
        "instances[0].filter[0].any[0][0].any[0]: filters nest deeper than 4 levels")
    assert COMPILER.compile([leaf] * 32).count("doc_id") == 32
    assert rejected([[leaf] * 20, {"any": [leaf] * 13}]) == "instances[0].filter[1].any[12]: more than 32 conditions"


def test_raw_expressions_only_when_allowed() -> None:
    raw = FilterCompiler(FIELDS, allow_raw=True)
    assert raw.compile(' metadata["topic"] == "api" ') == 'metadata["topic"] == "api"'
    assert raw.compile(cond("doc_id", "eq", "a")) == 'doc_id == "a"'  # structured filters still work
    assert rejected("x" * 2001, raw) == "instances[0].filter: 2001 characters exceed the limit of 2000"
    assert "raw" not in rejected("doc_id != ''") and "expressions" in rejected("doc_id != ''")


def test_scope_serves_only_the_configured_collections() -> None:
    rules = ScopeRules(("a", "b"), COMPILER)
    scope = rules.resolve(cond("doc_id", "eq", "x"), None, "instances[3]")
    assert (scope.collection, scope.expression, scope.field) == ("a", 'doc_id == "x"', "instances[3].filter")
    assert rules.resolve(None, "b").collection == "b" and rules.resolve(None, "b").field == "filter"
    with pytest.raises(CollectionNotServed) as caught:
        rules.resolve(None, "secret")
    assert str(caught.value) == "collection 'secret' is not served; served: a, b"
    with pytest.raises(BadRequest, match=r"^parameters\.collection: expected a string, got an integer$"):
        rules.resolve(None, 7, "parameters")


def test_filters_sent_as_text() -> None:
    assert from_text('[{"field": "doc_id", "op": "eq", "value": "a"}]', "parameters.filter") == [
        cond("doc_id", "eq", "a")]
    assert from_text('doc_id == "a"', "parameters.filter") == 'doc_id == "a"'
    with pytest.raises(BadRequest, match=r"^parameters\.filter: not valid JSON"):
        from_text('{"field": ', "parameters.filter")


def test_field_settings() -> None:
    assert parse_fields(" doc_id, year:int ,tags:list,") == {"doc_id": "str", "year": "int", "tags": "list"}
    for fields, problem in [({"text": "str"}, "stored column"), ({"doc_id": "int"}, "is a str column"),
                            ({'a"]': "str"}, "letters, digits"), ({"x": "date"}, "not one of")]:
        with pytest.raises(ValueError, match=problem):
            check_fields(fields)
    config = config_from_args(["--predictor_host", "h:1", "--filter_fields", "doc_id,year:int", "--allow_raw_filter",
                               "--collections", "docs,faq"])
    assert config.filter_fields == {"doc_id": "str", "year": "int"} and config.allow_raw_filter
    assert config.collection == "docs" and config.served_collections == ("docs", "faq")
    default = config_from_args(["--predictor_host", "h:1"])
    assert default.served_collections == ("kzero",) and not default.allow_raw_filter
    assert set(default.filter_fields) == {"doc_id", "source", "format", "title"}
    with pytest.raises(ValidationError, match="not one of collections"):
        TransformerConfig(predictor_host="h:1", collection="kzero", collections=("docs",))
    with pytest.raises(ValidationError, match="stored column"):
        config_from_args(["--predictor_host", "h:1", "--filter_fields", "doc_id,text"])


AWKWARD = ["plain", 'say "hi"', "C:\\dir\\", "' or 1==1", 'x" or doc_id != "', "tab\tstop", "ünïcødé 😀"]


@pytest.fixture(scope="module")
def lite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VectorStore]:
    store = VectorStore.connect(str(tmp_path_factory.mktemp("filters") / "f.db"), "docs")
    store.ensure_collection(4)
    documents = [
        (value, f"h{i}", [Chunk(value, 0, f"text {i}", {"source": value, "year": 2000 + i, "tags": [value, "all"]})],
         np.eye(4, dtype=np.float32)[[i % 4]])
        for i, value in enumerate(AWKWARD)
    ]
    store.replace_documents(documents)
    store.load()
    yield store
    store.close()


def _found(store: VectorStore, spec: Any) -> list[str]:
    expression = COMPILER.compile(spec)
    return sorted(p.doc_id for p in store.search(np.ones(4, dtype=np.float32), 20, filter=expression))


@pytest.mark.parametrize("value", AWKWARD)
def test_each_awkward_value_finds_exactly_its_document_in_milvus_lite(lite: VectorStore, value: str) -> None:
    assert _found(lite, cond("doc_id", "eq", value)) == [value]
    assert _found(lite, cond("source", "eq", value)) == [value]
    assert _found(lite, cond("tags", "contains", value)) == [value]
    assert _found(lite, cond("source", "ne", value)) == sorted(set(AWKWARD) - {value})


def test_injection_attempts_find_nothing_in_milvus_lite(lite: VectorStore) -> None:
    for attempt in ['" or doc_id != "', "x\\\" or 1==1 or \"", "' or '1'=='1", 'plain" or "1"=="1']:
        assert _found(lite, cond("doc_id", "eq", attempt)) == []
        assert _found(lite, cond("source", "in", [attempt, "nothing"])) == []
    assert _found(lite, {"any": [cond("doc_id", "eq", "plain"), cond("year", "ge", 2005)]}) == sorted(
        ["plain", AWKWARD[5], AWKWARD[6]])


def test_the_store_writes_and_deletes_any_document_id(tmp_path: Path) -> None:
    """The store's own expressions (hash lookup, replace, delete) use the same literals: json.dumps' \\u fails."""
    store = VectorStore.connect(str(tmp_path / "ids.db"), "ids")
    try:
        store.ensure_collection(4)
        store.replace_documents([(v, "h", [Chunk(v, 0, "t")], np.eye(4, dtype=np.float32)[:1]) for v in AWKWARD])
        assert store.document_hashes(AWKWARD) == dict.fromkeys(AWKWARD, "h")
        assert store.delete_document("ünïcødé 😀") == 1
        assert set(store.document_hashes(AWKWARD)) == set(AWKWARD) - {"ünïcødé 😀"}
    finally:
        store.close()
