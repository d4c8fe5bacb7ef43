"""Rendering the OpenAI error envelope: the only place an error becomes HTTP."""

from __future__ import annotations

import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from edge.headers import rate_limit_headers, request_id_of
from meshgate import errors
from meshgate.errors import ApiError

log = logging.getLogger("meshgate.edge")

# Endpoints the page lists as unsupported, with the alternative it names.
UNSUPPORTED: tuple[tuple[str, str], ...] = (
    (
        "/v1/fine-tuning",
        "Fine-tuning is not available on this API. Use FlexAI Fine-Tuning instead.",
    ),
    (
        "/v1/fine_tuning",
        "Fine-tuning is not available on this API. Use FlexAI Fine-Tuning instead.",
    ),
    ("/v1/assistants", "The Assistants API is not supported and is not planned."),
    ("/v1/threads", "The Assistants API (threads) is not supported and is not planned."),
    ("/v1/runs", "The Assistants API (runs) is not supported and is not planned."),
    ("/v1/batches", "The Batch API is not supported. Use client-side fan-out instead."),
    ("/v1/files", "The Files API is not supported. Use inline request payloads."),
)


def error_response(
    error: ApiError, request_id: str, extra_headers: dict[str, str] | None = None
) -> Response:
    headers = {"x-request-id": request_id}
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


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc, request_id_of(request))


def unsupported_or_unknown(method: str, path: str) -> ApiError:
    for prefix, message in UNSUPPORTED:
        if path == prefix or path.startswith(prefix + "/"):
            return ApiError(404, "invalid_request_error", message)
    return errors.invalid_url(method, path)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = unsupported_or_unknown(request.method, request.url.path)
    elif exc.status_code == 405:
        error = ApiError(
            405,
            "invalid_request_error",
            f"Method not allowed ({request.method} {request.url.path}).",
        )
    else:
        error = ApiError(exc.status_code, "invalid_request_error", str(exc.detail))
    return error_response(error, request_id_of(request))


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    """Last resort: log the type, answer the envelope, never a stack trace."""
    rid = request_id_of(request)
    log.error("unhandled error", extra={"request_id": rid, "error": type(exc).__name__})
    return error_response(errors.server_error(), rid)


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
