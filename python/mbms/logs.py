"""Structured logging: human-readable lines or JSON lines (one object per record)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_STD = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "t": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
            "msg": record.getMessage(),
        }
        obj.update({k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")})
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, separators=(",", ":"))


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")}
        ts = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        tail = "".join(f" {k}={v}" for k, v in extra.items())
        line = f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}{tail}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


#: The choices of ``--log-format``.
LOG_FORMATS = ("human", "json")

# Set from the command line (``-v``, ``--log-level``, ``--log-format``); they win over the
# defaults a command or a config file passes to :func:`setup_logging`.
_cli_level: str | None = None
_cli_format: str | None = None
# The format logging was last set up with (a final error line follows it).
_active_format = "human"


def active_format() -> str:
    """``"human"`` or ``"json"``: how log records are written now."""
    return _active_format


def set_cli_logging(level: str | None, fmt: str | None) -> None:
    """Record the command line's logging options and configure logging with them."""
    global _cli_level, _cli_format
    _cli_level, _cli_format = level, fmt
    setup_logging()


def setup_logging(fmt: str = "human", level: str = "info") -> None:
    """Log to stderr as human lines or JSON lines; the command line's options override both."""
    global _active_format
    fmt = _cli_format or fmt
    level = _cli_level or level
    _active_format = fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
