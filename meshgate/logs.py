"""Structured JSON logs, one object per line, on stderr.

Every record carries the service name; `extra={...}` fields (request_id,
key_id, model, status) are merged into the object. Secrets never go into a
log call: log the key id, never the key.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time

import orjson

# The request being served, set from `x-request-id` metadata on every gRPC hop
# (meshgate/grpcio.py) and at the edge; every log line inside it carries the id.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        current = request_id.get()
        if current:
            entry["request_id"] = current
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.levelno >= logging.ERROR:
            # Exception type only: stacks stay out of logs that may be shipped elsewhere.
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return orjson.dumps(entry, default=str).decode()


def configure(service: str, level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines tagged with service."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
