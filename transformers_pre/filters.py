"""What a request may search: a served collection and a structured filter compiled to a Milvus expression.

A filter is a condition ``{"field", "op", "value"}``, a list of filters (all must hold) or
``{"any": [filters]}`` (one must hold). Fields come from an allow-list with a type; values are
type-checked and written as escaped literals (the store's ``string_literal``), so no value can
change the expression's shape; a value with a control character other than tab has no literal
Milvus matches and is refused. A raw expression string is refused unless the server was started with
``--allow_raw_filter``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from transformers_pre.errors import BadRequest, CollectionNotServed
from transformers_pre.store import CONTROL_CHARACTERS, FILTER_COLUMNS, UNFILTERABLE_COLUMNS, string_literal

FieldType = Literal["str", "int", "float", "bool", "list"]
FIELD_TYPES: tuple[str, ...] = get_args(FieldType)
# The metadata the ingestion writes (readers.py) and the document id column.
DEFAULT_FILTER_FIELDS: dict[str, FieldType] = {"doc_id": "str", "source": "str", "format": "str", "title": "str"}

_ORDERED = ("eq", "ne", "in", "lt", "le", "gt", "ge")
OPERATORS: dict[str, tuple[str, ...]] = {
    "str": ("eq", "ne", "in"), "int": _ORDERED, "float": _ORDERED, "bool": ("eq", "ne"), "list": ("contains",),
}
_COMPARISON = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_INT64 = (-(2**63), 2**63 - 1)
_CONDITION_KEYS = ("field", "op", "value")
_SHAPE = 'a condition {"field", "op", "value"}, a list of filters or {"any": [filters]}'


def parse_fields(text: str) -> dict[str, str]:
    """``"doc_id,source,year:int,tags:list"`` → ``{name: type}`` (type ``str`` when not given)."""
    fields: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if item:
            name, _, kind = item.partition(":")
            fields[name.strip()] = kind.strip() or "str"
    return fields


def check_fields(fields: Mapping[str, str]) -> None:
    """Reject names that are not plain identifiers, stored columns no filter may touch, or wrong column types."""
    for name, kind in fields.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"filter field {name!r}: expected a name of letters, digits and '_'")
        if name in UNFILTERABLE_COLUMNS:
            raise ValueError(f"filter field {name!r} is a stored column that cannot be filtered")
        if kind not in FIELD_TYPES:
            raise ValueError(f"filter field {name!r}: type {kind!r} is not one of {', '.join(FIELD_TYPES)}")
        if name in FILTER_COLUMNS and kind != FILTER_COLUMNS[name]:
            raise ValueError(f"filter field {name!r} is a {FILTER_COLUMNS[name]} column, not {kind}")


def from_text(text: str, where: str) -> Any:
    """A filter sent as text (a v2 or gRPC parameter): JSON when it starts like an object or a list, else raw."""
    if not text.lstrip().startswith(("{", "[")):
        return text
    try:
        return json.loads(text)
    except ValueError as err:
        raise BadRequest(where, f"not valid JSON: {err}") from err


@dataclass(frozen=True)
class FilterCompiler:
    fields: Mapping[str, FieldType]
    allow_raw: bool = False
    max_depth: int = 4  # nested lists and "any"s
    max_conditions: int = 32
    max_values: int = 100  # values of one "in"
    max_chars: int = 1024  # one string value
    max_raw_chars: int = 2000

    def compile(self, spec: Any, where: str = "filter") -> str:
        """The Milvus boolean expression for ``spec`` ('' for none); ``where`` names it in errors."""
        if spec is None or spec == []:
            return ""
        if isinstance(spec, str):
            return self._raw(spec, where)
        expression, _ = self._node(spec, where, 0, 0)
        return expression

    def _raw(self, text: str, where: str) -> str:
        if not self.allow_raw:
            raise BadRequest(where, f"structured filters are required ({_SHAPE}); this server does not accept "
                                    "filter expressions")
        if len(text) > self.max_raw_chars:
            raise BadRequest(where, f"{len(text)} characters exceed the limit of {self.max_raw_chars}")
        return text.strip()

    def _node(self, spec: Any, where: str, depth: int, count: int) -> tuple[str, int]:
        """``spec`` compiled, and how many conditions have been compiled so far (``count`` before it)."""
        if isinstance(spec, list):
            return self._group(spec, where, depth, count, "and")
        if not isinstance(spec, dict):
            raise BadRequest(where, f"expected {_SHAPE}, got {_type(spec)}")
        if "any" in spec:
            if unknown := sorted(set(spec) - {"any"}):
                raise BadRequest(f"{where}.{unknown[0][:40]}", 'unknown key next to "any"')
            if not isinstance(spec["any"], list):
                raise BadRequest(f"{where}.any", f"expected a list of filters, got {_type(spec['any'])}")
            return self._group(spec["any"], f"{where}.any", depth, count, "or")
        if count >= self.max_conditions:
            raise BadRequest(where, f"more than {self.max_conditions} conditions")
        return self._condition(spec, where), count + 1

    def _group(self, items: list[Any], where: str, depth: int, count: int, joiner: str) -> tuple[str, int]:
        if depth >= self.max_depth:
            raise BadRequest(where, f"filters nest deeper than {self.max_depth} levels")
        if not items:
            raise BadRequest(where, "must not be empty")
        parts = []
        for i, item in enumerate(items):
            part, count = self._node(item, f"{where}[{i}]", depth + 1, count)
            parts.append(part)
        return (parts[0] if len(parts) == 1 else "(" + f" {joiner} ".join(parts) + ")"), count

    def _condition(self, spec: dict[str, Any], where: str) -> str:
        if unknown := sorted(set(spec) - set(_CONDITION_KEYS)):
            raise BadRequest(f"{where}.{unknown[0][:40]}", f"unknown key; {_SHAPE}")
        if missing := [k for k in _CONDITION_KEYS if k not in spec]:
            raise BadRequest(f"{where}.{missing[0]}", "required")
        name, op, value = spec["field"], spec["op"], spec["value"]
        if not isinstance(name, str) or name not in self.fields:
            raise BadRequest(f"{where}.field", f"{_show(name)} is not a filterable field; "
                                               f"allowed: {', '.join(self.fields) or 'none'}")
        kind = self.fields[name]
        if op not in OPERATORS[kind]:
            raise BadRequest(f"{where}.op", f"{_show(op)} is not an operator for the {kind} field {name!r}; "
                                            f"use one of: {', '.join(OPERATORS[kind])}")
        target = name if name in FILTER_COLUMNS else f"metadata[{string_literal(name)}]"
        if op == "contains":
            return f"json_contains({target}, {self._literal('str', value, f'{where}.value')})"
        if op != "in":
            return f"{target} {_COMPARISON[op]} {self._literal(kind, value, f'{where}.value')}"
        if not isinstance(value, list) or not value:
            raise BadRequest(f"{where}.value", f'"in" takes a non-empty list of values, got {_type(value)}')
        if len(value) > self.max_values:
            raise BadRequest(f"{where}.value", f"{len(value)} values exceed the limit of {self.max_values}")
        # Milvus Lite has no "in" over JSON keys, so "in" is written as equalities for columns and keys alike.
        equal = [f"{target} == {self._literal(kind, v, f'{where}.value[{i}]')}" for i, v in enumerate(value)]
        return equal[0] if len(equal) == 1 else "(" + " or ".join(equal) + ")"

    def _literal(self, kind: str, value: Any, where: str) -> str:
        if kind in ("str", "list"):
            if not isinstance(value, str):
                raise BadRequest(where, f"expected a string, got {_type(value)}")
            if len(value) > self.max_chars:
                raise BadRequest(where, f"{len(value)} characters exceed the limit of {self.max_chars}")
            if CONTROL_CHARACTERS.search(value):
                raise BadRequest(where, "must not contain control characters")
            return string_literal(value)
        if kind == "bool":
            if not isinstance(value, bool):
                raise BadRequest(where, f"expected true or false, got {_type(value)}")
            return "true" if value else "false"
        if isinstance(value, int) and not isinstance(value, bool):
            if not _INT64[0] <= value <= _INT64[1]:
                raise BadRequest(where, "outside the 64-bit integer range")
            return str(value)
        if kind == "float" and isinstance(value, float):
            if not math.isfinite(value):
                raise BadRequest(where, "must be a finite number")
            return repr(value)
        raise BadRequest(where, f"expected {'an integer' if kind == 'int' else 'a number'}, got {_type(value)}")


def _type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    """A caller's value in an error message: quoted and cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class SearchScope:
    """One request's search: a served collection and an expression ('' for no filter)."""

    collection: str
    expression: str
    field: str  # where the filter is in the request, for an error the store reports later


@dataclass(frozen=True)
class ScopeRules:
    collections: Sequence[str]  # served; the first is the default
    compiler: FilterCompiler

    def resolve(self, filter_: Any, collection: Any, where: str = "") -> SearchScope:
        """The scope a request asks for; ``where`` prefixes field names in errors (``instances[0]``)."""
        prefix = f"{where}." if where else ""
        if collection is not None and not isinstance(collection, str):
            raise BadRequest(f"{prefix}collection", f"expected a string, got {_type(collection)}")
        name = collection or self.collections[0]
        if name not in self.collections:
            raise CollectionNotServed(name[:100], self.collections)
        return SearchScope(name, self.compiler.compile(filter_, f"{prefix}filter"), f"{prefix}filter")
