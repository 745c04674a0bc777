"""LOG_FORMAT=json: one JSON object per log line, in every process (web, worker, clock, CLI).

Each object has `ts`, `level`, `logger`, `message`, plus the key=value fields our lines carry
(`log_id=812 phase=orders action=settled` → `"log_id": "812", "phase": "orders", …`), so a log
pipeline can filter on them without parsing the text.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

# `key=value`, value bare or quoted ('…' as %r renders it, or "…"); keys are lowercase identifiers.
_FIELD = re.compile(r"(?<![\w.=])([a-z_][a-z0-9_]*)=('(?:[^'\\]|\\.)*'|\"[^\"]*\"|[^\s,;]+)")
_RESERVED = {"ts", "level", "logger", "message"}
# The loggers whose handlers web and worker set up before our code runs.
_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "dramatiq")


class Formatter(JsonFormatter):
    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data.pop("color_message", None)  # uvicorn's ANSI-coloured copy of the message
        log_data["ts"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        for key, value in _FIELD.findall(str(log_data.get("message", ""))):
            if key not in _RESERVED:
                log_data.setdefault(key, value[1:-1] if value[:1] in "'\"" and len(value) > 1 else value)


def configure(log_format: str) -> None:
    """Switch every handler already installed (ours, uvicorn's, Dramatiq's) to JSON lines."""
    if log_format != "json":
        return
    formatter = Formatter("%(message)s")
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for name in _LOGGERS:
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)
