"""A batch's output and error files, appended as results arrive, with at most one line per input line.

The files themselves are the record of which lines are answered: on opening, each is read back (a
last line cut short by a crash is dropped), and a ``custom_id`` already there is never written again.
So a result read twice (the results consumer restarted before committing its offsets, or a request
sent twice after a crash of the sender) still makes one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any


def _read_back(path: Path) -> list[str]:
    """The custom ids of the complete lines of ``path``; a partial last line is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with path.open("rb+") as f:
            f.truncate(end)
            os.fsync(f.fileno())
    return [json.loads(line)["custom_id"] for line in data[:end].splitlines() if line.strip()]


class BatchOutput:
    def __init__(self, output: Path, errors: Path) -> None:
        self.paths = {False: output, True: errors}
        done_ok = _read_back(output)
        done_failed = _read_back(errors)
        self.completed = len(done_ok)
        self.failed = len(done_failed)
        self._done = set(done_ok) | set(done_failed)
        self._files: dict[bool, IO[bytes]] = {}

    @property
    def done(self) -> int:
        return self.completed + self.failed

    def answered(self, custom_id: str) -> bool:
        return custom_id in self._done

    def append(self, line: dict[str, Any], *, error: bool) -> bool:
        """Write one line (not yet durable: see ``sync``); False if its custom_id already has one."""
        custom_id = line["custom_id"]
        if custom_id in self._done:
            return False
        if error not in self._files:
            self._files[error] = self.paths[error].open("ab")
        self._files[error].write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        self._done.add(custom_id)
        if error:
            self.failed += 1
        else:
            self.completed += 1
        return True

    def sync(self) -> None:
        """Make every appended line durable (before the offsets of their results are committed)."""
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self.sync()
        for f in self._files.values():
            f.close()
        self._files.clear()
        for path in self.paths.values():
            path.touch()  # an empty file is still a file to download
