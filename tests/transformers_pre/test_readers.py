"""Reading text, Markdown and JSONL files into documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from transformers_pre.ingest.readers import Document, InvalidDocument, markdown_title, read_path, read_paths


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(*lines: object) -> str:
    return "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"


def test_a_directory_is_walked_sorted_with_relative_ids(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write(root / "b.txt", "plain text")
    write(root / "a.md", "```\n# not a title\n```\nintro\n\n## Scaling to zero ##\n\nbody")
    write(root / "guides" / "c.markdown", "no heading")
    write(root / ".hidden.md", "skipped")
    write(root / ".git" / "notes.txt", "skipped")
    documents = list(read_paths([root]))
    assert [d.doc_id for d in documents] == ["a.md", "b.txt", "guides/c.markdown"]
    a, b, c = documents
    assert a.text.endswith("body")
    assert a.metadata == {"source": (root / "a.md").as_posix(), "format": "md", "title": "Scaling to zero"}
    assert b == Document("b.txt", "plain text", {"source": (root / "b.txt").as_posix(), "format": "txt"})
    assert "title" not in c.metadata


def test_a_file_named_directly_is_identified_by_its_name(tmp_path: Path) -> None:
    path = write(tmp_path / "docs" / "guide.md", "\ufeff# Guide\ntext")  # a byte-order mark is dropped
    [document] = read_paths([path])
    assert document.doc_id == "guide.md" and document.text == "# Guide\ntext"
    [relative] = read_path(path, root=tmp_path)
    assert relative.doc_id == "docs/guide.md"


def test_jsonl_lines_are_documents(tmp_path: Path) -> None:
    path = write(tmp_path / "docs.jsonl", jsonl(
        {"id": "k1", "text": "Kafka keeps events in partitions.", "metadata": {"topic": "kafka", "source": "wiki"}},
        "",
        {"id": 7, "text": "Numbers are ids too."},
    ))
    first, second = read_paths([path])
    assert first == Document("k1", "Kafka keeps events in partitions.",
                             {"source": "wiki", "format": "jsonl", "topic": "kafka"})
    assert second.doc_id == "7" and second.metadata == {"source": path.as_posix(), "format": "jsonl"}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"id": "x", "text": "unterminated', "not valid JSON"),
        ('["id", "text"]', "expected an object"),
        ({"text": "no id"}, "'id' must be a non-empty string"),
        ({"id": "", "text": "empty id"}, "'id' must be a non-empty string"),
        ({"id": "x" * 600, "text": "long id"}, "'id' must be at most 512 bytes"),
        ({"id": "two\nlines", "text": "t"}, "'id' must not contain control characters other than tab"),
        ({"id": "x"}, "'text' must be a string"),
        ({"id": "x", "text": "t", "metadata": [1]}, "'metadata' must be an object"),
        ({"id": "x", "text": "t", "meta": {}}, "unknown keys \\['meta'\\]"),
    ],
)
def test_a_bad_jsonl_line_is_named_by_file_and_line(tmp_path: Path, line: object, problem: str) -> None:
    path = write(tmp_path / "bad.jsonl", jsonl({"id": "ok", "text": "fine"}, line))
    documents = read_paths([path])
    assert next(documents).doc_id == "ok"
    with pytest.raises(InvalidDocument, match=problem) as caught:
        next(documents)
    assert caught.value.field == f"{path}:2"
    assert str(caught.value).startswith(f"{path}:2: ")


def test_unknown_extensions_fail_before_any_document_is_read(tmp_path: Path) -> None:
    write(tmp_path / "a.md", "fine")
    write(tmp_path / "slides.pdf", b"%PDF")
    with pytest.raises(InvalidDocument, match=r"unknown file type '\.pdf'; expected one of \.jsonl, \.markdown"):
        next(read_paths([tmp_path]))
    with pytest.raises(InvalidDocument, match="unknown file type '\\(none\\)'"):
        next(read_paths([write(tmp_path / "Makefile", "all:")]))


def test_missing_paths_undecodable_files_and_duplicate_ids(tmp_path: Path) -> None:
    with pytest.raises(InvalidDocument, match="no such file or directory") as caught:
        list(read_paths([tmp_path / "missing"]))
    assert caught.value.field == str(tmp_path / "missing")
    with pytest.raises(InvalidDocument, match="not UTF-8 text"):
        list(read_paths([write(tmp_path / "latin1.txt", "caf\xe9".encode("latin-1"))]))
    one = write(tmp_path / "one" / "same.md", "first")
    two = write(tmp_path / "two" / "same.md", "second")
    with pytest.raises(InvalidDocument, match=f"document id 'same.md' is also in {one}"):
        list(read_paths([one, two]))


def test_markdown_title() -> None:
    assert markdown_title("text\n#   Spaced title   \n# second") == "Spaced title"
    assert markdown_title("#hashtag is not a heading\n~~~\n# code\n~~~") is None
