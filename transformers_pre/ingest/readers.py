"""Documents from files: plain text, Markdown and JSONL (``{"id", "text", "metadata"}`` per line).

A text or Markdown file is one document whose id is its path relative to the directory it was found
under (forward slashes), or its file name when named directly. Every file is checked (exists, known
type) before the first document is read, so a typo fails the run before anything is written.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers_pre.errors import BadRequest
from transformers_pre.store import CONTROL_CHARACTERS

FORMATS = {".txt": "txt", ".md": "md", ".markdown": "md", ".jsonl": "jsonl"}
_HEADING = re.compile(r"#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*")
_FENCE = re.compile(r"(```|~~~)")
_JSONL_KEYS = {"id", "text", "metadata"}
MAX_ID_BYTES = 512  # the vector store's doc_id field


class InvalidDocument(BadRequest):
    """A path, file or line that cannot be read as documents; ``field`` is ``path`` or ``path:line``."""


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


def read_paths(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Document]:
    """The documents of files and directories (walked recursively, sorted, hidden entries skipped)."""
    files = [pair for path in paths for pair in _files(Path(path))]
    seen: dict[str, Path] = {}
    for file, root in files:
        for document in read_path(file, root):
            if document.doc_id in seen:
                raise InvalidDocument(str(file), f"document id {document.doc_id!r} is also in {seen[document.doc_id]}")
            seen[document.doc_id] = file
            yield document


def read_path(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> Iterator[Document]:
    """The documents of one file; ``root`` (default: the file's directory) anchors text/Markdown ids."""
    path = Path(path)
    kind = _format(path)
    if kind == "jsonl":
        yield from _read_jsonl(path)
        return
    text = _read_text(path)
    metadata: dict[str, Any] = {"source": path.as_posix(), "format": kind}
    if kind == "md" and (title := markdown_title(text)):
        metadata["title"] = title
    doc_id = path.relative_to(root if root is not None else path.parent).as_posix()
    if problem := id_problem(doc_id):
        raise InvalidDocument(str(path), f"document id {problem}")
    yield Document(doc_id, text, metadata)


def id_problem(doc_id: object) -> str | None:
    """Why ``doc_id`` cannot name a document, or None."""
    if not isinstance(doc_id, str) or not doc_id:
        return "must be a non-empty string"
    if len(doc_id.encode()) > MAX_ID_BYTES:
        return f"must be at most {MAX_ID_BYTES} bytes of UTF-8, got {len(doc_id.encode())}"
    if CONTROL_CHARACTERS.search(doc_id):  # a filter or a delete could never name it
        return "must not contain control characters other than tab"
    return None


def markdown_title(text: str) -> str | None:
    """The first ATX heading outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        stripped = line.strip()
        if _FENCE.match(stripped):
            fenced = not fenced
        elif not fenced and (match := _HEADING.fullmatch(stripped)):
            return match.group(1).strip()
    return None


def _files(path: Path) -> list[tuple[Path, Path]]:
    if path.is_dir():
        found = sorted(
            p for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        for file in found:
            _format(file)
        return [(file, path) for file in found]
    if not path.exists():
        raise InvalidDocument(str(path), "no such file or directory")
    _format(path)
    return [(path, path.parent)]


def _format(path: Path) -> str:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(FORMATS))
        raise InvalidDocument(str(path), f"unknown file type {path.suffix or '(none)'!r}; expected one of {known}")
    return kind


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InvalidDocument(str(path), f"not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise InvalidDocument(str(path), err.strerror or str(err)) from err


def _read_jsonl(path: Path) -> Iterator[Document]:
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if line.strip():
            yield _jsonl_document(line, path, f"{path}:{number}")


def _jsonl_document(line: str, path: Path, where: str) -> Document:
    try:
        obj = json.loads(line)
    except ValueError as err:
        raise InvalidDocument(where, f"not valid JSON: {err}") from err
    if not isinstance(obj, dict):
        raise InvalidDocument(where, f'expected an object {{"id", "text", "metadata"}}, got {type(obj).__name__}')
    if unknown := sorted(set(obj) - _JSONL_KEYS):
        raise InvalidDocument(where, f'unknown keys {unknown}; a line is {{"id", "text", "metadata"}}')
    doc_id, text, metadata = obj.get("id"), obj.get("text"), obj.get("metadata", {})
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if problem := id_problem(doc_id):
        raise InvalidDocument(where, f"'id' {problem}")
    if not isinstance(text, str):
        raise InvalidDocument(where, "'text' must be a string")
    if not isinstance(metadata, dict):
        raise InvalidDocument(where, "'metadata' must be an object")
    return Document(doc_id, text, {"source": path.as_posix(), "format": "jsonl", **metadata})
