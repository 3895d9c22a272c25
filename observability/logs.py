"""Log records that carry the current ``trace_id``/``span_id``, as text or one JSON object per line.

``KZERO_LOG_FORMAT`` is ``text`` (default) or ``json``; ``KZERO_LOG_LEVEL`` sets the level (INFO).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from opentelemetry import trace

TEXT_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s%(trace_suffix)s"
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "trace_id", "span_id", "trace_suffix"}


@dataclass(frozen=True)
class LogConfig:
    format: Literal["text", "json"] = "text"
    level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str], default_level: str = "INFO") -> LogConfig:
        fmt = (env.get("KZERO_LOG_FORMAT") or "text").strip().lower()
        if fmt not in ("text", "json"):
            raise ValueError(f"KZERO_LOG_FORMAT={fmt!r}: expected 'text' or 'json'")
        level = (env.get("KZERO_LOG_LEVEL") or default_level).strip().upper()
        if not isinstance(logging.getLevelName(level), int):
            raise ValueError(f"KZERO_LOG_LEVEL={level!r}: expected DEBUG, INFO, WARNING or ERROR")
        return cls(fmt, level)  # type: ignore[arg-type]


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id``/``span_id`` (hex, empty outside a span) to every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
            record.trace_suffix = f" trace_id={record.trace_id} span_id={record.span_id}"
        else:
            record.trace_id = record.span_id = record.trace_suffix = ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if getattr(record, "trace_id", ""):
            entry["trace_id"] = record.trace_id  # type: ignore[attr-defined]
            entry["span_id"] = record.span_id  # type: ignore[attr-defined]
        for key, value in vars(record).items():  # ``extra=`` fields
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool | None) else repr(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def formatter(config: LogConfig) -> logging.Formatter:
    return JsonFormatter() if config.format == "json" else logging.Formatter(TEXT_FORMAT)


def correlate(handler: logging.Handler, config: LogConfig) -> None:
    if not any(isinstance(f, TraceContextFilter) for f in handler.filters):
        handler.addFilter(TraceContextFilter())
    handler.setFormatter(formatter(config))


def setup_logging(config: LogConfig, *, adopt: Iterable[str] = ()) -> None:
    """Configure the root logger (only ``main`` calls this); ``adopt`` names loggers that others
    configured with their own handlers (KServe, uvicorn) whose output should look the same."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    root.setLevel(config.level)
    for handler in root.handlers:
        correlate(handler, config)
    for name in adopt:
        for handler in logging.getLogger(name).handlers:
            correlate(handler, config)
