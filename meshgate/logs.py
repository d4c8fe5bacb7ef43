"""Logs on stderr: readable lines on a terminal, one JSON object per line otherwise.

Every record carries the service name; `extra={...}` fields (request_id,
key_id, model, status) are merged into it. `logging.format` picks the shape:
`text`, `json`, or `auto` (text when stderr is a terminal, else JSON, which is
what a collector reads). Secrets never go into a log call: log the key id,
never the key. As a backstop both formatters mask anything shaped like an API
key and the value of any field named like a credential.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from collections.abc import Iterator
from typing import IO

import orjson

from meshgate.config import LogFormat

# The request being served, set from `x-request-id` metadata on every gRPC hop
# (meshgate/grpcio.py) and at the edge; every log line inside it carries the id.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
# A key's secret (`sk-...`) or a Bearer credential, wherever it appears in a line.
_SECRET = re.compile(r"\b(sk-)[A-Za-z0-9_-]+|(\bBearer\s+)\S+", re.IGNORECASE)
_SECRET_FIELDS = frozenset({"authorization", "api_key", "secret", "password", "token"})
MASK = "***"


def redact(text: str) -> str:
    """`text` with API keys (`sk-...`) and Bearer credentials masked."""
    if "sk-" not in text and "SK-" not in text and "earer" not in text and "EARER" not in text:
        return text
    return _SECRET.sub(lambda m: (m.group(1) or m.group(2)) + MASK, text)


def _timestamp(record: logging.LogRecord) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z"
    )


def _fields(record: logging.LogRecord) -> Iterator[tuple[str, object]]:
    """The request id, then the record's `extra` fields, credentials masked."""
    current = request_id.get()
    if current and "request_id" not in record.__dict__:
        yield "request_id", current
    for key, value in record.__dict__.items():
        if key in _RESERVED or key.startswith("_"):
            continue
        if key.lower() in _SECRET_FIELDS:
            yield key, MASK
        elif isinstance(value, str):
            yield key, redact(value)
        else:
            yield key, value


def _exc_type(record: logging.LogRecord) -> str | None:
    # Exception type only: stacks stay out of logs that may be shipped elsewhere.
    if record.exc_info and record.levelno >= logging.ERROR and record.exc_info[0]:
        return record.exc_info[0].__name__
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, service, logger, msg, then the fields."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        entry.update(_fields(record))
        exc_type = _exc_type(record)
        if exc_type:
            entry["exc_type"] = exc_type
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """`12:47:36.123 INFO  edge     listening address=127.0.0.1:8080 request_id=...`."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [
            f"{clock}.{int(record.msecs):03d}",
            f"{record.levelname:<5}",
            f"{self.service:<10}",
            redact(record.getMessage()),
        ]
        fields = dict(_fields(record))
        if fields.get("service") == self.service:
            del fields["service"]  # already in its column
        exc_type = _exc_type(record)
        if exc_type:
            fields["exc_type"] = exc_type
        parts += [f"{key}={_text_value(value)}" for key, value in fields.items()]
        return " ".join(parts)


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if text and " " not in text and '"' not in text else orjson.dumps(text).decode()


def resolve_format(format: LogFormat, stream: IO[str] | None = None) -> LogFormat:
    """`text` or `json`: `auto` is text when `stream` (stderr) is a terminal, else JSON."""
    if format != "auto":
        return format
    stream = sys.stderr if stream is None else stream
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # closed or not a real file
        return "json"


def formatter(service: str, format: LogFormat, stream: IO[str] | None = None) -> logging.Formatter:
    if resolve_format(format, stream) == "text":
        return TextFormatter(service)
    return JsonFormatter(service)


def configure(service: str, level: str = "INFO", format: LogFormat = "auto") -> None:
    """Send every logger's records to stderr, as text or JSON lines, tagged with service."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(service, format, sys.stderr))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
