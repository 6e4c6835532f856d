"""Structured logs: one JSON object per line, with the run and step it concerns.

Every line carries ``execution_id``, ``step_key`` and ``attempt`` when the code that logged
it was working for one (taken from context variables the ExecutionActor and the scheduler
set, or from ``extra=`` fields), so a log search for one run or one step finds all of it.
Request headers and secret values are never logged by the engine.

Example line::

    {"ts": "2026-11-29T14:15:36.313Z", "level": "INFO", "logger": "cortx.execution",
     "message": "step.completed", "execution_id": "5dc8...", "step_key": "check-items[0]/validate-item",
     "attempt": 1, "duration_ms": 7}
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

__all__ = ["JsonFormatter", "attempt_var", "configure_json_logging", "execution_id_var", "step_key_var"]

execution_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("execution_id", default=None)
step_key_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("step_key", default=None)
attempt_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("attempt", default=None)

_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line with the run's ids and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "execution_id": execution_id_var.get(),
            "step_key": step_key_var.get(),
            "attempt": attempt_var.get(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps({k: v for k, v in line.items() if v is not None}, default=str)


def configure_json_logging(level: int = logging.INFO) -> None:
    """Send the ``cortx`` loggers to stderr as JSON lines (idempotent)."""
    logger = logging.getLogger("cortx")
    if any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
