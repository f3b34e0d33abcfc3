"""Logging: JSON lines for the static pod, readable lines on a terminal.

The daemon logs through structlog. What runs on a node before it joins (``--run-once``, ``-C``,
from the installer's bundle) has only the node's own python3 and its standard library, so without
structlog the same calls go to a small writer of the same two formats.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal, Protocol

try:
    import structlog
except ImportError:  # the node bundle: the standard library only
    structlog = None  # type: ignore[assignment]

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


class Logger(Protocol):
    def debug(self, event: str, **fields: Any) -> Any: ...
    def info(self, event: str, **fields: Any) -> Any: ...
    def warning(self, event: str, **fields: Any) -> Any: ...
    def error(self, event: str, **fields: Any) -> Any: ...


class _Plain:
    """structlog's JSON and console lines, from the standard library."""

    level = logging.INFO
    json = True

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if LEVELS[level] < _Plain.level:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1e6) % 1000000:06d}Z"
        if _Plain.json:
            line = json.dumps({"event": event, **fields, "level": level, "timestamp": stamp},
                              default=str)
        else:
            pairs = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                             for k, v in fields.items())
            line = f"{stamp} [{level:<9}] {event:<30} {pairs}".rstrip()
        print(line, file=sys.stderr, flush=True)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)


def get_logger(name: str = "lvscare") -> Logger:
    if structlog is None:
        return _Plain()
    return structlog.get_logger(name)  # type: ignore[no-any-return]


def configure(level: str = "info", fmt: Literal["auto", "json", "console"] = "auto") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    if structlog is None:
        _Plain.level, _Plain.json = LEVELS[level], fmt == "json"
        return
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
