"""Durable state of the batch API in its data directory: file objects and their bytes, batch objects.

Every object is one JSON document replaced atomically (written aside, fsynced, renamed), so a process
killed at any moment leaves either the old or the new version. Ids are generated here and are the
only user-visible names that become paths (after a pattern check): user input never reaches a path.
Keys starting with ``_`` are kzero's own bookkeeping and never served.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

_ID = re.compile(r"(file|batch)[-_][A-Za-z0-9_-]{1,80}")


def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}" if kind == "file" else f"batch_{uuid.uuid4().hex}"


def valid_id(value: str) -> bool:
    return bool(_ID.fullmatch(value))


def public(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def write_atomically(path: Path, payload: bytes) -> None:
    aside = path.with_name(f".{path.name}.tmp")
    with aside.open("wb") as out:
        out.write(payload)
        out.flush()
        os.fsync(out.fileno())
    os.replace(aside, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files_dir = root / "files"
        self.batches_dir = root / "batches"
        for directory in (self.files_dir, self.batches_dir):
            directory.mkdir(parents=True, exist_ok=True)

    # -- files ---------------------------------------------------------------------------------

    def content_path(self, file_id: str) -> Path:
        """Where an uploaded file's bytes are (a batch's output files live with the batch)."""
        meta = self.file(file_id)
        if meta is not None and meta.get("_path"):
            return self.root / meta["_path"]
        return self.files_dir / f"{file_id}.data"

    def upload_path(self) -> Path:
        """A fresh path to stream an upload into before ``add_file`` adopts it."""
        return self.files_dir / f".upload-{uuid.uuid4().hex}"

    def add_file(self, meta: dict[str, Any], upload: Path | None = None) -> dict[str, Any]:
        """Record a file object; ``upload`` (fsynced here) becomes its content."""
        if upload is not None:
            with upload.open("rb+") as data:
                os.fsync(data.fileno())
            os.replace(upload, self.files_dir / f"{meta['id']}.data")
        write_atomically(self.files_dir / f"{meta['id']}.json", json.dumps(meta).encode())
        return meta

    def file(self, file_id: str) -> dict[str, Any] | None:
        return _load(self.files_dir / f"{file_id}.json") if valid_id(file_id) else None

    def files(self) -> list[dict[str, Any]]:
        return _all(self.files_dir)

    def delete_file(self, file_id: str) -> bool:
        meta = self.file(file_id)
        if meta is None:
            return False
        (self.files_dir / f"{file_id}.json").unlink(missing_ok=True)
        if not meta.get("_path"):  # a batch's output stays with its batch
            (self.files_dir / f"{file_id}.data").unlink(missing_ok=True)
        fsync_dir(self.files_dir)
        return True

    # -- batches -------------------------------------------------------------------------------

    def save_batch(self, batch: dict[str, Any]) -> None:
        write_atomically(self.batches_dir / f"{batch['id']}.json", json.dumps(batch).encode())

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        return _load(self.batches_dir / f"{batch_id}.json") if valid_id(batch_id) else None

    def batches(self) -> list[dict[str, Any]]:
        return _all(self.batches_dir)

    def output_path(self, batch_id: str, kind: str) -> Path:
        """``kind`` is ``output`` or ``error``."""
        return self.batches_dir / f"{batch_id}.{kind}.jsonl"


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


def _all(directory: Path) -> list[dict[str, Any]]:
    """Every object, newest first (as OpenAI lists them)."""
    objects = [obj for path in directory.glob("*.json") if not path.name.startswith(".")
               if (obj := _load(path)) is not None]
    # Seconds (OpenAI's created_at) tie within a burst: the nanoseconds kept aside order them.
    return sorted(objects, key=lambda o: (o.get("_created_ns") or o.get("created_at", 0) * 10**9, o["id"]),
                  reverse=True)
