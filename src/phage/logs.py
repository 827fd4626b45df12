"""Logging for every role: plain lines for people, or one JSON object per line for log pipelines.

A request id follows the work it caused: the HTTP edge takes the caller's ``X-Request-ID`` (or makes
one), keeps it in a context variable for everything that request does, and returns it in the
response; every log record made meanwhile carries it (``request_id``), in both formats.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from contextvars import ContextVar
from typing import Any, Literal

LogFormat = Literal["text", "json"]

REQUEST_ID: ContextVar[str | None] = ContextVar("phage_request_id", default=None)
"""The id of the request being served in this context (None outside one)."""

_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id"}


def request_id_from(header: str | None) -> str:
    """The caller's request id if it is a sane token (≤ 64 of ``A-Za-z0-9._:-``), else a new one."""
    if header and _VALID_ID.fullmatch(header):
        return header
    return "req-" + secrets.token_hex(8)


class _RequestIdFilter(logging.Filter):
    """Stamps each record with the current request id (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request id, and any ``extra``."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single JSON line."""
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "-")
        if rid != "-":
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(*, verbose: bool = False, fmt: LogFormat = "text") -> None:
    """Configure the root logger for a role's process (stderr); quiet third-party chatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("httpx", "alembic", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    # One line per HTTP request is what a log pipeline wants; on a terminal it drowns the rest.
    logging.getLogger("phage.access").setLevel(logging.INFO if fmt == "json" or verbose else logging.WARNING)
