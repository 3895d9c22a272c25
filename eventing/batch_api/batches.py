"""The batches: OpenAI's status machine, driven by one runner thread and the results consumer.

``validating`` (the input file is checked, nothing sent yet) → ``in_progress`` (lines are produced as
request events, ``send_chunk`` at a time, each chunk acknowledged by the broker before the count of
lines sent is saved) → ``finalizing`` (every line has its output or error line) → ``completed``; or
``failed`` (the file had errors), ``cancelling`` → ``cancelled`` (no more lines are sent; those sent
are waited for; the rest get a ``batch_cancelled`` error line) and ``expired`` (past the completion
window, every unanswered line gets a ``batch_expired`` error line). Every input line so ends with
exactly one line in the output or the error file.

Crash safety: the batch object is replaced atomically at each transition and after each chunk; a
restart re-sends from the last saved count (request ids are ``{batch id}-{line}``, so a line sent
twice is one request id), and ``BatchOutput`` writes the first answer of a line only.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link

from eventing import tracing
from eventing.batch_api.config import BatchApiConfig
from eventing.batch_api.errors import WrongState
from eventing.batch_api.input_file import InputLine, read_input
from eventing.batch_api.metrics import BatchMetrics
from eventing.batch_api.output import BatchOutput
from eventing.batch_api.store import Store, new_id, public
from events.event import ERROR_TYPE, OPENAI_URLS, RESULT_TYPE, Event, openai_request_event
from observability import semconv as sc
from serving.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
ANSWERABLE = frozenset({"in_progress", "cancelling", "finalizing"})
_WINDOW = re.compile(r"([1-9][0-9]{0,5})([smh])")
_UNITS = {"s": 1, "m": 60, "h": 3600}
MAX_METADATA = 16
_PROGRESS_LOG_S = 5.0


def window_seconds(window: str) -> int:
    """``24h`` as OpenAI has it; shorter windows (``90s``, ``10m``) too, for tests and small jobs."""
    match = _WINDOW.fullmatch(window) if isinstance(window, str) else None
    if match is None:
        raise InvalidInput("completion_window", f"must be like '24h' (or a number of s, m or h), got {window!r}")
    return int(match[1]) * _UNITS[match[2]]


def _metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA:
        raise InvalidInput("metadata", f"must be an object of at most {MAX_METADATA} string pairs")
    for key, value in metadata.items():
        if not isinstance(value, str) or len(key) > 64 or len(value) > 512:
            raise InvalidInput(f"metadata.{key}", "keys are up to 64 characters, values strings of up to 512")
    return metadata


@dataclass
class Active:
    """A batch not yet in a terminal status, with what the runner and the results consumer need."""

    batch: dict[str, Any]
    output: BatchOutput
    lines: list[InputLine] | None = None  # once validated
    by_number: dict[int, InputLine] | None = None
    logged: float = 0.0
    logged_done: int = -1


class Batches:
    def __init__(
        self, config: BatchApiConfig, store: Store, producer: KafkaProducer, *, tracer: trace.Tracer | None = None,
        metrics: BatchMetrics | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._store = store
        self._producer = producer
        self._tracer = tracer or trace.get_tracer(__name__)
        self._metrics = metrics or BatchMetrics()
        self._clock = clock
        self._lock = threading.RLock()
        self._active: dict[str, Active] = {}
        self._statuses: dict[str, str] = {}
        self._metrics.watch_statuses(self._status_counts)

    # -- start-up --------------------------------------------------------------------------------

    def recover(self) -> None:
        """Pick up every unfinished batch of the data dir where its saved state left it."""
        for batch in self._store.batches():
            self._statuses[batch["id"]] = batch["status"]
            if batch["status"] in TERMINAL:
                continue
            active = self._activate(batch)
            if batch["status"] != "validating":
                self._load_lines(active)
            log.info("batch %s: resuming %s (%d of %d lines sent, %d answered)", batch["id"], batch["status"],
                     batch["_sent"], batch["request_counts"]["total"], active.output.done)

    def _activate(self, batch: dict[str, Any]) -> Active:
        paths = (self._store.output_path(batch["id"], kind) for kind in ("output", "error"))
        output = BatchOutput(*paths)
        active = Active(batch, output)
        self._active[batch["id"]] = active
        return active

    def _load_lines(self, active: Active) -> list[dict[str, Any]]:
        batch = active.batch
        lines, errors = read_input(self._store.content_path(batch["input_file_id"]), batch["endpoint"],
                                   self._config.models, self._config.max_lines)
        active.lines, active.by_number = lines, {line.number: line for line in lines}
        return errors

    # -- the HTTP side ---------------------------------------------------------------------------

    def create(self, input_file_id: Any, endpoint: Any, completion_window: Any, metadata: Any) -> dict[str, Any]:
        if endpoint not in OPENAI_URLS:
            raise InvalidInput("endpoint", f"must be one of {', '.join(OPENAI_URLS)}, got {endpoint!r}")
        window = window_seconds(completion_window)
        if not isinstance(input_file_id, str):
            raise InvalidInput("input_file_id", "required, a file id")
        file = self._store.file(input_file_id)
        if file is None:
            raise NotFound(f"input_file_id: no file {input_file_id!r}")
        if file.get("purpose") != "batch":
            raise InvalidInput("input_file_id", f"file {input_file_id!r} has purpose {file.get('purpose')!r}, "
                                                "not 'batch'")
        now = int(self._clock())
        batch = {
            "id": new_id("batch"), "object": "batch", "endpoint": endpoint, "errors": None,
            "input_file_id": input_file_id, "completion_window": completion_window, "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
            "expires_at": now + window, "finalizing_at": None, "completed_at": None, "failed_at": None,
            "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": _metadata(metadata),
            "_sent": 0, "_created_ns": time.time_ns(),
        }
        with self._lock:
            self._save(batch)
            self._activate(batch)
        log.info("batch %s: created for %s (%s, window %s)", batch["id"], input_file_id, endpoint, completion_window)
        return public(batch)

    def get(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            active = self._active.get(batch_id)
            batch = self._live(active) if active is not None else self._store.batch(batch_id)
        if batch is None:
            raise NotFound(f"batch_id: no batch {batch_id!r}")
        return public(batch)

    def list(self, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """Newest first; ``after`` is the id of the last batch of the previous page."""
        if not 1 <= limit <= 100:
            raise InvalidInput("limit", f"must be 1 to 100, got {limit}")
        with self._lock:
            batches = [self._live(self._active[b["id"]]) if b["id"] in self._active else b
                       for b in self._store.batches()]
        if after is not None:
            ids = [b["id"] for b in batches]
            if after not in ids:
                raise InvalidInput("after", f"no batch {after!r}")
            batches = batches[ids.index(after) + 1:]
        return [public(b) for b in batches[:limit]], len(batches) > limit

    def cancel(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            active = self._active.get(batch_id)
            if active is None:
                batch = self.get(batch_id)  # 404 if none
                if batch["status"] == "cancelled":
                    return batch
                raise WrongState("batch_id", f"batch {batch_id!r} is {batch['status']}: it cannot be cancelled")
            batch = active.batch
            if batch["status"] in ("validating", "in_progress"):
                batch.update(status="cancelling", cancelling_at=int(self._clock()))
                self._save(batch)
                log.info("batch %s: cancelling after %d of %d lines sent", batch_id, batch["_sent"],
                         batch["request_counts"]["total"])
            elif batch["status"] == "finalizing":
                raise WrongState("batch_id", f"batch {batch_id!r} is finalizing: it cannot be cancelled")
            return public(self._live(active))

    def in_use(self, file_id: str) -> str | None:
        """The unfinished batch reading ``file_id``, if any: its input must stay until the batch ends."""
        with self._lock:
            return next((b for b, a in self._active.items() if a.batch["input_file_id"] == file_id), None)

    def _live(self, active: Active) -> dict[str, Any]:
        batch = dict(active.batch)
        batch["request_counts"] = {**batch["request_counts"], "completed": active.output.completed,
                                   "failed": active.output.failed}
        return batch

    def _save(self, batch: dict[str, Any]) -> None:
        self._store.save_batch(batch)
        self._statuses[batch["id"]] = batch["status"]

    def _status_counts(self) -> Iterable[tuple[Sequence[str], float]]:
        return [((status,), n) for status, n in Counter(dict(self._statuses).values()).items()]

    # -- the results consumer --------------------------------------------------------------------

    def deliver(self, events: Iterable[Event]) -> int:
        """Write the answers among ``events`` to their batches' files, durably; returns how many were new.
        Called by the results consumer before it commits the offsets of these events."""
        written = 0
        touched: set[str] = set()
        with self._lock:
            for event in events:
                active = self._active.get(event.get("jobid") or "")
                if active is None or active.batch["status"] not in ANSWERABLE or active.by_number is None:
                    continue
                line = self._line_of(active, event.get("requestid") or "")
                if line is None or event.type not in (RESULT_TYPE, ERROR_TYPE):
                    continue
                if event.type == RESULT_TYPE:
                    entry = {"id": f"batch_req_{event.id}", "custom_id": line.custom_id,
                             "response": {"status_code": 200, "request_id": event.get("requestid"),
                                          "body": event.data},
                             "error": None}
                else:
                    entry = _error_entry(line, event.get("errorcode") or "error",
                                         event.get("errormessage") or "the request failed", event.id)
                if active.output.append(entry, error=event.type == ERROR_TYPE):
                    written += 1
                    touched.add(active.batch["id"])
                    self._metrics.lines_done.add(1, "failed" if event.type == ERROR_TYPE else "completed")
            for batch_id in touched:
                self._active[batch_id].output.sync()
        return written

    @staticmethod
    def _line_of(active: Active, requestid: str) -> InputLine | None:
        prefix, _, number = requestid.rpartition("-")
        if prefix != active.batch["id"] or not number.isdigit():
            return None
        assert active.by_number is not None
        return active.by_number.get(int(number))

    # -- the runner ------------------------------------------------------------------------------

    def tick(self) -> bool:
        """Advance every unfinished batch one step; True if there is more to send at once."""
        busy = False
        with self._lock:
            active = list(self._active.values())
        for each in active:
            batch_id = each.batch["id"]
            try:
                busy |= self._advance(each)
            except Exception:  # one batch's trouble (say, the broker away) must not stop the others
                log.exception("batch %s: step failed; trying again", batch_id)
        return busy

    def _advance(self, active: Active) -> bool:
        batch = active.batch
        status = batch["status"]
        now = int(self._clock())
        if active.lines is None:  # validating, or cancelled while validating
            self._validate(active)
            return True
        if status in ("in_progress", "cancelling") and now >= batch["expires_at"]:
            self._close(active, "expired", "batch_expired", "the batch expired before this request was answered")
            return False
        if status == "in_progress" and active.lines is not None and batch["_sent"] < len(active.lines):
            self._send_chunk(active)
            return True
        self._log_progress(active)
        if status == "in_progress" and active.output.done >= batch["request_counts"]["total"]:
            with self._lock:
                batch.update(status="finalizing", finalizing_at=now)
                self._save(batch)
            status = "finalizing"
        if status == "finalizing":
            self._close(active, "completed", "batch_incomplete", "no answer")  # every line has one already
        elif status == "cancelling" and self._sent_answered(active):
            self._close(active, "cancelled", "batch_cancelled", "the batch was cancelled before this request was sent")
        return False

    def _validate(self, active: Active) -> None:
        batch = active.batch
        errors = self._load_lines(active)
        now = int(self._clock())
        with self._lock:
            if batch["status"] == "cancelling":  # cancelled while validating: nothing was sent
                assert active.lines is not None
                batch["request_counts"]["total"] = len(active.lines)
                self._save(batch)
                return
            if errors:
                batch.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
                self._save(batch)
                del self._active[batch["id"]]
                log.warning("batch %s: failed validation: %s", batch["id"], "; ".join(e["message"] for e in errors[:3]))
                return
            assert active.lines is not None
            batch.update(status="in_progress", in_progress_at=now)
            batch["request_counts"]["total"] = len(active.lines)
            self._save(batch)
        log.info("batch %s: in progress, %d lines", batch["id"], len(active.lines))

    def _send_chunk(self, active: Active) -> None:
        batch = active.batch
        assert active.lines is not None
        start = batch["_sent"]
        chunk = active.lines[start:start + self._config.send_chunk]
        spans, futures = [], []
        for line in chunk:
            topic = self._config.models[line.model]
            event = openai_request_event(batch["endpoint"], line.body, source=self._config.source,
                                         id=f"{batch['id']}-{line.number}", jobid=batch["id"])
            span = tracing.start_send_span(self._tracer, topic, event, Context())  # each request its own trace
            record = tracing.traced_record(event, topic, "binary", span)
            futures.append(self._producer.send(topic, value=record.value, key=record.key,
                                               headers=list(record.headers)))
            spans.append(span)
        self._producer.flush()
        links = [Link(s.get_span_context()) for s in spans if s.get_span_context().is_valid]
        with self._tracer.start_as_current_span(f"batch {batch['id']}", context=Context(), links=links,
                                                attributes={sc.KZERO_JOB_ID: batch["id"],
                                                            sc.KZERO_BATCH_SIZE: len(chunk)}):
            for span, future in zip(spans, futures, strict=True):
                if future.failed():
                    tracing.failed(span, future.exception)
                else:
                    tracing.sent(span, future.value)
        if failed := [f for f in futures if f.failed()]:
            # Nothing is saved: the whole chunk goes again (its answered lines are written once).
            raise RuntimeError(f"{len(failed)} of {len(chunk)} sends failed: {failed[0].exception}")
        with self._lock:
            if batch["status"] == "in_progress":  # a cancel in the meantime saved its own status
                batch["_sent"] = start + len(chunk)
                self._save(batch)
            else:
                batch["_sent"] = start + len(chunk)
        self._metrics.lines_sent.add(len(chunk))
        log.info("batch %s: sent %d of %d lines", batch["id"], batch["_sent"], len(active.lines))

    def _sent_answered(self, active: Active) -> bool:
        assert active.lines is not None
        return all(active.output.answered(line.custom_id) for line in active.lines[: active.batch["_sent"]])

    def _close(self, active: Active, status: str, code: str, message: str) -> None:
        """Give every unanswered line an error line, register the files, and end the batch as ``status``."""
        batch = active.batch
        with self._lock:
            for line in active.lines or []:
                if not active.output.answered(line.custom_id):
                    active.output.append(_error_entry(line, code, message, None), error=True)
            active.output.close()
            now = int(self._clock())
            for kind, count in (("output", active.output.completed), ("error", active.output.failed)):
                if count:
                    batch[f"{kind}_file_id"] = self._register(batch, kind, now)["id"]
            batch.update(self._live(active), status=status, **{f"{status}_at": now})
            if status == "completed" and batch["finalizing_at"] is None:
                batch["finalizing_at"] = now
            self._save(batch)
            del self._active[batch["id"]]
        log.info("batch %s: %s (%d completed, %d failed of %d)", batch["id"], status, active.output.completed,
                 active.output.failed, batch["request_counts"]["total"])

    def _register(self, batch: dict[str, Any], kind: str, now: int) -> dict[str, Any]:
        path = self._store.output_path(batch["id"], kind)
        meta = {"id": f"file-{batch['id']}-{kind}", "object": "file", "bytes": path.stat().st_size,
                "created_at": now, "filename": f"{batch['id']}_{kind}.jsonl", "purpose": "batch_output",
                "status": "processed", "expires_at": None, "status_details": None,
                "_path": str(path.relative_to(self._store.root))}
        return self._store.add_file(meta)

    def _log_progress(self, active: Active) -> None:
        now = time.monotonic()
        done = active.output.done
        if done != active.logged_done and now - active.logged >= _PROGRESS_LOG_S:
            active.logged, active.logged_done = now, done
            log.info("batch %s: %d of %d lines answered (%d failed)", active.batch["id"], done,
                     active.batch["request_counts"]["total"], active.output.failed)

    def close(self) -> None:
        with self._lock:
            for active in self._active.values():
                active.output.sync()


def _error_entry(line: InputLine, code: str, message: str, request_id: str | None) -> dict[str, Any]:
    return {"id": f"batch_req_{request_id or line.custom_id}", "custom_id": line.custom_id, "response": None,
            "error": {"code": code, "message": message}}
