"""The batch API's pure parts: input file checks, output files that write one line per input line,
the store's atomic documents, completion windows. No broker, no server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eventing.batch_api.batches import window_seconds
from eventing.batch_api.input_file import read_input
from eventing.batch_api.output import BatchOutput
from eventing.batch_api.store import Store
from serving.errors import InvalidInput

TOPICS = {"minilm": "t-minilm"}


def _line(custom_id: str, **changes: object) -> str:
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
            "body": {"model": "minilm", "input": "text"}, **changes}
    return json.dumps(line)


def test_a_clean_file_gives_its_lines_with_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(_line("a") + "\n\n" + _line("b") + "\n")
    lines, errors = read_input(path, "/v1/embeddings", TOPICS, 10)
    assert errors == []
    assert [(line.number, line.custom_id, line.model) for line in lines] == [(1, "a", "minilm"), (3, "b", "minilm")]


def test_each_bad_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes("\n".join([
        _line("a"), "[1, 2]", _line("a"), _line("c", method="GET"), _line("d", body="text"),
        _line("e", body={"model": "minilm", "input": "x", "stream": True}), _line("f", body={"input": "x"}),
    ]).encode() + b"\n\xff\xfe\n")
    _, errors = read_input(path, "/v1/embeddings", TOPICS, 10)
    assert [(e["line"], e["code"], e["param"]) for e in errors] == [
        (2, "invalid_json_line", None), (3, "duplicate_custom_id", "custom_id"), (4, "invalid_request", "method"),
        (5, "invalid_request", "body"), (6, "invalid_request", "body.stream"), (7, "model_not_found", "body.model"),
        (8, "invalid_json_line", None),
    ]
    assert "line 1" in errors[1]["message"]  # where the custom_id was first used


def test_empty_and_too_long_files_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("\n")
    assert read_input(path, "/v1/embeddings", TOPICS, 10)[1][0]["code"] == "empty_file"
    path.write_text("".join(_line(str(i)) + "\n" for i in range(3)))
    assert read_input(path, "/v1/embeddings", TOPICS, 2)[1][0]["code"] == "too_many_requests"


def test_output_writes_one_line_per_custom_id_across_reopening(tmp_path: Path) -> None:
    out, err = tmp_path / "o.jsonl", tmp_path / "e.jsonl"
    output = BatchOutput(out, err)
    assert output.append({"custom_id": "a", "response": {}}, error=False)
    assert not output.append({"custom_id": "a", "response": {}}, error=False)
    assert output.append({"custom_id": "b", "error": {}}, error=True)
    assert not output.append({"custom_id": "b", "response": {}}, error=False)  # answered already, as an error
    output.close()
    with out.open("ab") as f:  # a crash in the middle of writing the next line
        f.write(b'{"custom_id": "c", "resp')
    again = BatchOutput(out, err)
    assert (again.completed, again.failed) == (1, 1)
    assert again.answered("a") and again.answered("b") and not again.answered("c")
    assert again.append({"custom_id": "c", "response": {}}, error=False)
    again.close()
    assert [json.loads(line)["custom_id"] for line in out.read_text().splitlines()] == ["a", "c"]


def test_store_keeps_objects_and_refuses_ids_that_are_paths(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save_batch({"id": "batch_1", "created_at": 5, "_created_ns": 1})
    store.save_batch({"id": "batch_2", "created_at": 5, "_created_ns": 2})
    assert [b["id"] for b in store.batches()] == ["batch_2", "batch_1"]
    assert store.batch("../batches/batch_1") is None and store.file("file-../../etc") is None
    assert not list(tmp_path.rglob(".*.tmp"))


@pytest.mark.parametrize(("window", "seconds"), [("24h", 86_400), ("90s", 90), ("10m", 600)])
def test_completion_windows(window: str, seconds: int) -> None:
    assert window_seconds(window) == seconds


@pytest.mark.parametrize("window", ["24", "0h", "1d", "", "h"])
def test_bad_completion_windows_name_the_field(window: str) -> None:
    with pytest.raises(InvalidInput, match="completion_window"):
        window_seconds(window)
