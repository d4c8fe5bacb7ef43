"""The OpenAI error, defined once.

Services raise `ApiError`; `abort` carries it across gRPC as the standard rich
error model (a `google.rpc.Status` in `grpc-status-details-bin` whose details
hold a packed `meshgate.v1.Error`). The edge recovers it with `from_rpc_error`
and renders it once (edge/errors.py). Constructors below are the catalogue of
errors that meshgate returns; docs/errors.md lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import status_pb2

from meshgate.config import DEFAULT_KEYS_URL, DEFAULT_USAGE_URL, DocsConfig
from meshgate.v1 import common_pb2

DETAILS_KEY = "grpc-status-details-bin"
# Longest message an error carries; it travels in gRPC trailing metadata, which is bounded.
MAX_MESSAGE = 2000
# An error a service raises on purpose is final: a negative pushback tells any gRPC
# retry policy not to try another replica (meshgate's own retries check the details).
NO_RETRY = ("grpc-retry-pushback-ms", "-1")
# The doc_url of auth errors (a keys page) and of quota errors (a usage page). Services
# stamp these defaults; the process that renders the error maps them to the operator's
# pages (`edge.docs`), see use_doc_pages.
DOC_URL_KEYS = DEFAULT_KEYS_URL
DOC_URL_QUOTA = DEFAULT_USAGE_URL
_doc_pages: dict[str, str] = {}


def use_doc_pages(docs: DocsConfig) -> None:
    """Point the doc_url of every error this process renders at `docs` (the edge, at start)."""
    _doc_pages.clear()
    _doc_pages.update({DOC_URL_KEYS: docs.keys_url, DOC_URL_QUOTA: docs.usage_url})


def _doc_page(url: str) -> str:
    return _doc_pages.get(url, url)


_GRPC_CODE_BY_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class ApiError(Exception):
    """An OpenAI error envelope on its way to a client."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        doc_url: str | None = None,
        retry_after: int | None = None,
        retry_after_ms: int | None = None,
        should_retry: bool | None = None,
        rate_limit: common_pb2.RateLimitState | None = None,
    ) -> None:
        if len(message) > MAX_MESSAGE:  # messages may echo client values: keep them to a size
            message = message[: MAX_MESSAGE - 20] + "... (truncated)"
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.param = param
        self.code = code
        self.doc_url = doc_url
        self.retry_after = retry_after
        self.retry_after_ms = retry_after_ms
        self.should_retry = should_retry
        self.rate_limit = rate_limit

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.type!r}, {self.message!r}, param={self.param!r}, code={self.code!r})"

    def to_proto(self) -> common_pb2.Error:
        error = common_pb2.Error(http_status=self.status, type=self.type, message=self.message)
        if self.param is not None:
            error.param = self.param
        if self.code is not None:
            error.code = self.code
        if self.doc_url is not None:
            error.doc_url = _doc_page(self.doc_url)
        if self.retry_after is not None:
            error.retry_after_seconds = self.retry_after
        if self.retry_after_ms is not None:
            error.retry_after_ms = self.retry_after_ms
        if self.should_retry is not None:
            error.should_retry = self.should_retry
        if self.rate_limit is not None:
            error.rate_limit.CopyFrom(self.rate_limit)
        return error

    @classmethod
    def from_proto(cls, error: common_pb2.Error) -> ApiError:
        return cls(
            error.http_status,
            error.type,
            error.message,
            param=error.param if error.HasField("param") else None,
            code=error.code if error.HasField("code") else None,
            doc_url=error.doc_url if error.HasField("doc_url") else None,
            retry_after=error.retry_after_seconds
            if error.HasField("retry_after_seconds")
            else None,
            retry_after_ms=error.retry_after_ms if error.HasField("retry_after_ms") else None,
            should_retry=error.should_retry if error.HasField("should_retry") else None,
            rate_limit=error.rate_limit if error.HasField("rate_limit") else None,
        )

    def body(self) -> dict[str, object]:
        """The JSON envelope's inner object, with OpenAI's four keys always present."""
        inner: dict[str, object] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        if self.doc_url is not None:
            inner["doc_url"] = _doc_page(self.doc_url)
        return inner

    def grpc_code(self) -> grpc.StatusCode:
        return _GRPC_CODE_BY_STATUS.get(self.status, grpc.StatusCode.UNKNOWN)

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        detail = any_pb2.Any()
        detail.Pack(self.to_proto())
        status = status_pb2.Status(
            code=self.grpc_code().value[0], message=self.message, details=[detail]
        )
        return ((DETAILS_KEY, status.SerializeToString()), NO_RETRY)

    async def abort(self, context: grpc.aio.ServicerContext[object, object]) -> NoReturn:
        """End the current RPC with this error in the status details."""
        await context.abort(
            self.grpc_code(), self.message, trailing_metadata=self.trailing_metadata()
        )
        raise AssertionError("unreachable")  # context.abort always raises


def transient(exc: grpc.aio.AioRpcError) -> bool:
    """The replica went away before it answered (UNAVAILABLE, and no error of ours in the
    details): another attempt may succeed. A server that ends a connection at its max age
    refuses the calls that crossed its GOAWAY this way, and gRPC's own transparent retry
    is off with its retry policy (grpcio.CHANNEL_OPTIONS), so every caller retries itself.
    """
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return not any(key == DETAILS_KEY for key, _ in exc.trailing_metadata() or ())


def from_rpc_error(exc: grpc.aio.AioRpcError, service: str) -> ApiError:
    """Recover the ApiError a service raised, or map a transport failure to a 5xx."""
    for key, value in exc.trailing_metadata() or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                error = common_pb2.Error()
                if detail.Unpack(error):
                    return ApiError.from_proto(error)
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return timeout()
    if code == grpc.StatusCode.CANCELLED:
        return ApiError(499, "server_error", "The request was cancelled.")
    return unavailable(service)


# ------------------------------------------------------------- catalogue ----


def invalid_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, "invalid_request_error", message, param=param)


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        "invalid_request_error",
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


def response_not_stored(response_id: str) -> ApiError:
    """`GET`/`DELETE /v1/responses/{id}` (and its sub-resources): nothing is ever stored."""
    return invalid_request(
        f"Stored responses are not supported: meshgate is stateless and keeps no response "
        f"(not '{response_id}'). Keep the response object that `POST /v1/responses` returned, "
        "and send earlier turns again as `input` items.",
        "response_id",
    )


def invalid_url(method: str, path: str) -> ApiError:
    return ApiError(404, "invalid_request_error", f"Invalid URL ({method} {path})")


def unavailable(service: str) -> ApiError:
    return ApiError(
        503,
        "server_error",
        f"The {service} service is temporarily unavailable. Please retry.",
        retry_after=1,
    )


def no_replica(model: str) -> ApiError:
    """No replica of the model is healthy (or every one failed this request)."""
    return ApiError(
        503,
        "server_error",
        f"No engine for `{model}` is available right now. Please retry.",
        retry_after=1,
    )


def engines_busy(model: str) -> ApiError:
    """Every replica of the model is at its `max_concurrency`, and none freed up in time."""
    return ApiError(
        503,
        "server_error",
        f"Every engine for `{model}` is at capacity right now. Please retry.",
        retry_after=1,
    )


def timeout() -> ApiError:
    return ApiError(504, "server_error", "The request timed out before the model answered.")


def server_error() -> ApiError:
    return ApiError(
        500,
        "server_error",
        "The server had an error while processing your request. Sorry about that!",
    )


# ------------------------------------------------------ the documentation ----


@dataclass(frozen=True, slots=True)
class Documented:
    """One row of docs/errors.md: an error meshgate returns, and when."""

    status: int
    type: str
    code: str | None
    param: str
    when: str
    headers: str = ""


CATALOGUE: tuple[Documented, ...] = (
    Documented(400, "invalid_request_error", None, "field path, e.g. `messages[0].role`", "The body is not valid JSON or not an object (param null), a required field is missing, a field has the wrong type, a value is outside its enum or range, `n` > 1, `logprobs`/`top_logprobs` are set, `stream_options` without `stream`, or `encoding_format` is an explicit null."),
    Documented(400, "invalid_request_error", None, "`tools`, `messages[i].content[j]`, `model`, `dimensions`", "The model cannot serve the request: tools on a model without `tool_use`, an image part on a model without `vision`, a chat model on `/v1/embeddings` (or the reverse), or more `dimensions` than the model has."),
    Documented(400, "invalid_request_error", "context_length_exceeded", "`messages` (or `input`)", "Prompt tokens plus `max_tokens` exceed the model's context length (and, with `context_fallbacks`, every fallback's too)."),
    Documented(400, "invalid_request_error", None, "`previous_response_id`, `conversation`, `prompt`, `background`, `tools[i].type`, `tool_choice.type`, `input[i].type`, `response_id`", "`POST /v1/responses` asked for what a stateless gateway cannot do: stored state, a built-in (hosted) tool, a background run, or an item reference; or `GET`/`DELETE /v1/responses/{id}` (param `response_id`)."),
    Documented(401, "authentication_error", "missing_api_key", "null", "No `Authorization` header, or an empty one.", "doc_url"),
    Documented(401, "authentication_error", "invalid_auth_scheme", "null", "An `Authorization` scheme other than Bearer.", "doc_url"),
    Documented(401, "authentication_error", "invalid_api_key", "null", "The Bearer token is empty, malformed or not a known key.", "doc_url"),
    Documented(401, "authentication_error", "revoked_api_key", "null", "The key was revoked (`meshgate keys revoke`); every auth replica knows within a second.", "doc_url"),
    Documented(401, "authentication_error", "expired_api_key", "null", "The key's `--expires` time has passed.", "doc_url"),
    Documented(403, "permission_error", "api_role_required", "null", "A key with the admin role only called the inference API (give it the api role too, or use an API key)."),
    Documented(403, "permission_error", "admin_role_required", "null", "The admin API (`/admin/v1`) was called with a key that lacks the admin role (`meshgate keys create --admin`)."),
    Documented(403, "invalid_request_error", None, "null", "A browser CORS preflight from an origin that is not in `edge.cors_allow_origins`."),
    Documented(404, "invalid_request_error", "model_not_found", "null", "The model is not in the catalog, or the key may not use it."),
    Documented(404, "invalid_request_error", None, "null", "An unknown URL (`Invalid URL (POST /v1/...)`), or an endpoint the API does not offer (fine-tuning, assistants, threads, runs, batches, files); the message names the alternative."),
    Documented(405, "invalid_request_error", None, "null", "A known URL with the wrong method."),
    Documented(409, "invalid_request_error", None, "`id`", "Admin API: a tenant id that is taken, or one declared in the config file (change it there)."),
    Documented(413, "invalid_request_error", None, "null", "The body is larger than `edge.max_body_bytes`."),
    Documented(431, "invalid_request_error", None, "null", "The request's headers together are larger than `edge.max_header_bytes`."),
    Documented(429, "requests", "rate_limit_exceeded", "null", "The key's requests-per-minute bucket is empty.", "Retry-After, retry-after-ms, x-ratelimit-*, doc_url"),
    Documented(429, "requests", "rate_limit_exceeded", "null", "The key already has `max_concurrency` requests in flight.", "Retry-After: 1, x-ratelimit-*, doc_url"),
    Documented(429, "tokens", "rate_limit_exceeded", "null", "The key's tokens-per-minute bucket cannot cover prompt plus `max_tokens` (or `quota.default_max_tokens` when unset).", "Retry-After, retry-after-ms, x-ratelimit-*, doc_url"),
    Documented(429, "tokens", "rate_limit_exceeded", "null", "The request alone needs more tokens than the key's tokens-per-minute limit, so it can never fit.", "x-should-retry: false, doc_url"),
    Documented(429, "insufficient_quota", "insufficient_quota", "null", "The key's token budget (`--budget-tokens`) is spent.", "x-should-retry: false, doc_url"),
    Documented(500, "server_error", None, "null", "An unexpected failure inside meshgate; the response never carries a stack trace."),
    Documented(502, "server_error", None, "null", "The engine failed after the stream had started: sent as a final `data: {\"error\": ...}` event."),
    Documented(503, "server_error", None, "null", "A mesh service or every replica of the model's engine (and of each of its fallbacks) is unavailable, Redis is down for a `fail_closed` key, or the key store cannot be read for a key not seen recently.", "Retry-After"),
    Documented(503, "server_error", None, "null", "Every replica of the model's engine is at its `max_concurrency`, and none freed a slot within `services.router.queue_timeout_s`.", "Retry-After"),
    Documented(504, "server_error", None, "null", "The request's deadline (`edge.request_timeout_s`) passed before the engine answered (or the last fallback's `timeout_s` did)."),
)  # fmt: skip


def reference_markdown() -> str:
    """docs/errors.md, generated from CATALOGUE (tests/test_docs.py keeps them equal)."""
    lines = [
        "# Error reference",
        "",
        "<!-- Generated by `python scripts/gen_docs.py` from meshgate/errors.py; do not edit by hand. -->",
        "",
        "Every error is OpenAI's envelope, with all four keys present:",
        "",
        "```json",
        '{"error": {"message": "...", "type": "invalid_request_error", "param": "messages[0].role", "code": null}}',
        "```",
        "",
        "Auth and quota errors add `doc_url`. Validation failures have `code: null`; non-null codes are",
        "kept for the narrow set below. Every response carries `x-request-id`.",
        "",
        "| status | type | code | param | extra | when |",
        "|---|---|---|---|---|---|",
    ]
    for e in CATALOGUE:
        code = f"`{e.code}`" if e.code else "null"
        lines.append(f"| {e.status} | `{e.type}` | {code} | {e.param} | {e.headers} | {e.when} |")
    lines += [
        "",
        "## Authentication",
        "",
        "Send `Authorization: Bearer sk-...`. `OpenAI-Organization` and `OpenAI-Project` headers are",
        "ignored, so SDK users who set them keep working.",
        "",
        "## Rate limits and quota",
        "",
        "Authenticated responses carry `x-ratelimit-limit-requests`, `x-ratelimit-limit-tokens`,",
        "`x-ratelimit-remaining-requests`, `x-ratelimit-remaining-tokens`, `x-ratelimit-reset-requests` and",
        "`x-ratelimit-reset-tokens` (Go durations such as `12ms`, `1s`, `6m0s`). A 429 carries `Retry-After`",
        "in whole seconds, computed from the bucket's deficit and refill rate.",
        "",
        "## Mid-stream errors",
        "",
        "Once a stream has started, the status is already 200: a failure is sent as",
        '`data: {"error": {...}}` and the stream ends without `data: [DONE]`. Failures before the first',
        "chunk are ordinary HTTP errors.",
        "",
    ]
    return "\n".join(lines)
