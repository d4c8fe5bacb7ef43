"""Rendering the OpenAI error envelope: the only place an error becomes HTTP."""

from __future__ import annotations

import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from edge.headers import rate_limit_headers
from meshgate import errors
from meshgate.config import UnsupportedConfig
from meshgate.errors import ApiError

log = logging.getLogger("meshgate.edge")

# Endpoints the page lists as unsupported, by URL prefix: the field of `edge.unsupported`
# that holds each one's message (what is unsupported, and the alternative).
UNSUPPORTED: tuple[tuple[str, str], ...] = (
    ("/v1/fine-tuning", "fine_tuning"),
    ("/v1/fine_tuning", "fine_tuning"),
    ("/v1/assistants", "assistants"),
    ("/v1/threads", "threads"),
    ("/v1/runs", "runs"),
    ("/v1/batches", "batches"),
    ("/v1/files", "files"),
)
_DEFAULT_MESSAGES = UnsupportedConfig()


def error_response(error: ApiError, extra_headers: dict[str, str] | None = None) -> Response:
    """The envelope with the error's retry hints; `x-request-id` is added by RequestIds."""
    headers: dict[str, str] = {}
    if error.retry_after is not None:
        headers["retry-after"] = str(error.retry_after)
    if error.retry_after_ms is not None:
        headers["retry-after-ms"] = str(error.retry_after_ms)
    if error.should_retry is not None:
        headers["x-should-retry"] = "true" if error.should_retry else "false"
    if error.rate_limit is not None:
        headers.update(rate_limit_headers(error.rate_limit))
    if extra_headers:
        headers.update(extra_headers)
    return Response(
        orjson.dumps({"error": error.body()}),
        status_code=error.status,
        headers=headers,
        media_type="application/json",
    )


def unsupported_or_unknown(
    method: str, path: str, messages: UnsupportedConfig = _DEFAULT_MESSAGES
) -> ApiError:
    """404 for an endpoint the API does not offer (the operator's message), or an unknown URL."""
    for prefix, field in UNSUPPORTED:
        if path == prefix or path.startswith(prefix + "/"):
            return ApiError(404, "invalid_request_error", getattr(messages, field))
    return errors.invalid_url(method, path)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        messages = getattr(request.app.state, "unsupported", _DEFAULT_MESSAGES)
        error = unsupported_or_unknown(request.method, request.url.path, messages)
    elif exc.status_code == 405:
        error = ApiError(
            405,
            "invalid_request_error",
            f"Method not allowed ({request.method} {request.url.path}).",
        )
    else:
        error = ApiError(exc.status_code, "invalid_request_error", str(exc.detail))
    return error_response(error)


def malformed_http_response(request_id: str) -> bytes:
    """A whole HTTP/1.1 400 for bytes that are not HTTP at all, still in the envelope."""
    body = orjson.dumps(
        {
            "error": {
                "message": "The request is not valid HTTP/1.1 and could not be parsed.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
    )
    head = (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"content-type: application/json\r\n"
        b"x-request-id: " + request_id.encode() + b"\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n"
    )
    return head + body
