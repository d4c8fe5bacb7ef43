"""The per-request path, one readable function per endpoint.

chat:  body -> (auth || validation) -> quota.Reserve -> router -> JSON or SSE -> quota.Settle
Every hop and its order is visible here, so it can be measured. Errors are
ApiError values rendered once by edge/errors.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial, wraps
from typing import Any, Protocol, TypeVar

import grpc
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from edge import metering, observe, render, sse
from edge.errors import error_response
from edge.headers import rate_limit_headers, request_id_of
from edge.mesh import HOP_TIMEOUT_S, RETRIES, Call, Mesh, rpc, rpc_call, transient
from edge.metering import Meter
from meshgate import errors, logs, tracing
from meshgate.errors import ApiError, from_rpc_error
from meshgate.grpcio import ENGINE_TIME_KEY, REPLICA_KEY
from meshgate.v1 import (
    auth_pb2,
    common_pb2,
    inference_pb2,
    quota_pb2,
    router_pb2,
    usage_pb2,
    validation_pb2,
)

log = logging.getLogger("meshgate.edge")

Endpoint = Callable[[Request], Awaitable[Response]]
Chunk = TypeVar("Chunk", inference_pb2.ChatCompletionChunk, inference_pb2.CompletionChunk)
JSON = "application/json"


class _Validated(Protocol):
    prompt_tokens: int


def endpoint(handler: Endpoint) -> Endpoint:
    """Every failure becomes the envelope; nothing reaches the server's traceback logger."""

    route = handler.__name__

    @wraps(handler)
    async def wrapped(request: Request) -> Response:
        started = time.perf_counter()
        rid = request_id_of(request)
        logs.request_id.set(rid)
        try:
            with tracing.span(route):
                response = await handler(request)
        except ApiError as exc:
            response = error_response(exc, rid)
        except ClientDisconnect:
            # The client left while sending its body: nobody to answer, and not our failure.
            response = error_response(
                ApiError(499, "invalid_request_error", "The client closed the connection."), rid
            )
        except Exception as exc:
            log.error("unhandled error", extra={"error": type(exc).__name__})
            response = error_response(errors.server_error(), rid)
        scope = request.scope
        observe.record(  # never raises: metrics and the log line take plain values
            route,
            scope.get(observe.MODEL_KEY, ""),
            response.status_code,
            time.perf_counter() - started,
            scope.get(observe.ENGINE_KEY),
            rid,
            request.app.state.mesh.access_log,
        )
        return response

    return wrapped


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    too_large = ApiError(
        413, "invalid_request_error", f"Request body too large: the limit is {limit} bytes."
    )
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise too_large
    return bytes(body)


def hop_timeout(deadline: float, cap: float = HOP_TIMEOUT_S) -> float:
    """A hop's timeout: what is left of the request's one deadline, and at most `cap`."""
    return max(min(cap, deadline - time.monotonic()), 0.001)


def call_metadata(request_id: str) -> tuple[tuple[str, str], ...]:
    return (("x-request-id", request_id),)


async def authenticate(
    mesh: Mesh, authorization: str, request_id: str, deadline: float
) -> common_pb2.Principal:
    principal = mesh.auth_cache.get(authorization)
    if principal is None:
        request = auth_pb2.AuthenticateRequest(authorization=authorization)
        answer = await rpc(
            lambda: mesh.auth.Authenticate(
                request, timeout=hop_timeout(deadline), metadata=call_metadata(request_id)
            ),
            "auth",
        )
        principal = answer.principal
        mesh.auth_cache.put(authorization, principal)
    return principal


async def authenticate_and_validate(
    mesh: Mesh,
    authorization: str,
    request_id: str,
    deadline: float,
    validate: Callable[[], Call],
) -> tuple[common_pb2.Principal, Any]:
    """Auth and validation run at once; an auth failure wins over a validation failure."""
    validation = validate()
    try:
        principal = await authenticate(mesh, authorization, request_id, deadline)
    except ApiError:
        validation.cancel()
        raise
    try:
        return principal, await rpc(validate, "validation", started=validation)
    except ApiError as exc:
        if exc.rate_limit is None:  # authenticated: the 400 still carries the x-ratelimit-* headers
            exc.rate_limit = await peek(mesh, principal, request_id, deadline)
        raise


async def peek(
    mesh: Mesh, principal: common_pb2.Principal, request_id: str, deadline: float
) -> common_pb2.RateLimitState | None:
    """The key's rate-limit state without charging it; None if quota cannot say (headers are best effort)."""
    call = mesh.quota.GetRateLimit(
        quota_pb2.GetRateLimitRequest(principal=principal),
        timeout=hop_timeout(deadline),
        metadata=call_metadata(request_id),
    )
    try:
        return (await call).rate_limit
    except grpc.aio.AioRpcError:
        return None


async def _described(
    mesh: Mesh,
    principal: common_pb2.Principal,
    request_id: str,
    deadline: float,
    make: Callable[[], Call],
) -> tuple[Any, dict[str, str]]:
    """A router answer plus the rate-limit headers, fetched at the same time."""
    state = asyncio.ensure_future(peek(mesh, principal, request_id, deadline))
    try:
        response = await rpc(make, "router")
    except ApiError as exc:
        exc.rate_limit = await state
        raise
    limits = await state
    headers = {"x-request-id": request_id, **(rate_limit_headers(limits) if limits else {})}
    return response, headers


async def reserve(
    mesh: Mesh,
    principal: common_pb2.Principal,
    prompt_tokens: int,
    max_tokens: int | None,
    request_id: str,
    deadline: float,
    record: usage_pb2.UsageRecord,
) -> quota_pb2.ReserveResponse:
    """Admit the request; it carries the edge's waiting settlements to quota too."""
    settlements = mesh.take_settlements()
    request = quota_pb2.ReserveRequest(
        principal=principal,
        prompt_tokens=prompt_tokens,
        request_id=request_id,
        record=record,
        settlements=settlements,
    )
    if max_tokens is not None:
        request.max_tokens = max_tokens
    try:
        return await rpc(
            lambda: mesh.quota.Reserve(
                request, timeout=hop_timeout(deadline), metadata=call_metadata(request_id)
            ),
            "quota",
        )
    except ApiError as exc:
        if exc.status != 429:  # a 429 is quota's own answer, given after settling
            mesh.return_settlements(settlements)
        raise
    except asyncio.CancelledError:
        mesh.return_settlements(settlements)
        raise


async def _routed(make: Callable[[], Call], request: Request) -> tuple[Any, str]:
    """A unary router answer and the replica that gave it; the engine's own time
    (trailing metadata) goes to the overhead metric."""
    response, call = await rpc_call(make, "router")
    replica = ""
    for key, value in await call.trailing_metadata() or ():
        if key == ENGINE_TIME_KEY:
            request.scope[observe.ENGINE_KEY] = int(value) / 1e6
        elif key == REPLICA_KEY:
            replica = value
    return response, replica


async def _replica_of(call: grpc.aio.Call) -> str:
    """The replica a stream's first chunk came from (the router's initial metadata)."""
    for key, value in await call.initial_metadata() or ():
        if key == REPLICA_KEY:
            return str(value)
    return ""


async def _first(make: Callable[[], Any]) -> tuple[Any, Any]:
    """The stream and its first chunk; failing here is still an HTTP error status, never a
    200 stream. A router replica that died before answering is retried elsewhere (RETRIES)."""
    for attempt in range(RETRIES + 1):
        call = make()
        try:
            chunk = await call.read()
        except grpc.aio.AioRpcError as exc:
            if attempt == RETRIES or not transient(exc):
                raise from_rpc_error(exc, "router") from None
            continue
        if chunk is grpc.aio.EOF:
            raise errors.server_error()
        return call, chunk
    raise AssertionError("unreachable")


class _Renderer(Protocol[Chunk]):  # type: ignore[misc]
    def render(self, chunk: Chunk) -> bytes: ...
    def usage(self, usage: common_pb2.Usage) -> bytes: ...


async def _events(
    call: grpc.aio.UnaryStreamCall[object, Chunk],
    first: Chunk,
    renderer: _Renderer[Chunk],
    include_usage: bool,
    prompt_tokens: int,
    meter: Meter,
) -> AsyncGenerator[bytes, None]:
    """Relay chunks as SSE; record the engine's usage, or an estimate if the stream broke."""
    usage: common_pb2.Usage | None = None
    fragments = 0
    chunk: object = first
    error: ApiError | None = None
    ended = False
    replica = await _replica_of(call)
    try:
        while chunk is not grpc.aio.EOF:
            assert isinstance(
                chunk, inference_pb2.ChatCompletionChunk | inference_pb2.CompletionChunk
            )
            if chunk.choices:
                fragments += 1
                yield renderer.render(chunk)  # type: ignore[arg-type]
            if chunk.HasField("usage"):
                usage = chunk.usage
                if include_usage:
                    yield renderer.usage(usage)
            chunk = await call.read()
        yield sse.DONE
        ended = True
    except grpc.aio.AioRpcError as exc:
        error = from_rpc_error(exc, "router")
        yield sse.error_event(error)
        ended = True
    finally:
        if not call.done():
            call.cancel()
        # Without the engine's count (client gone, engine failed), bill one token per fragment.
        billed = usage or common_pb2.Usage(
            prompt_tokens=prompt_tokens, completion_tokens=max(fragments - 1, 0)
        )
        if ended:
            meter.finish(billed, replica=replica, error=error, status=200)
        else:  # the client hung up: the generator was closed at a yield
            meter.cancel(billed, replica=replica)


async def admit(
    mesh: Mesh,
    request_id: str,
    principal: common_pb2.Principal,
    validated: _Validated,
    max_tokens: int | None,
    deadline: float,
    record: usage_pb2.UsageRecord,
) -> tuple[dict[str, str], Meter]:
    """Reserve, and the meter that will settle the reservation with the request's record."""
    reservation = await reserve(
        mesh, principal, validated.prompt_tokens, max_tokens, request_id, deadline, record
    )
    headers = {"x-request-id": request_id, **rate_limit_headers(reservation.rate_limit)}
    return headers, Meter(mesh, principal, reservation, record)


# ------------------------------------------------------------ endpoints ----


@dataclass(frozen=True, slots=True)
class _Checked:
    """A request that has passed auth and validation."""

    mesh: Mesh
    rid: str
    deadline: float
    principal: common_pb2.Principal
    validated: Any  # the endpoint's Validate*Response


async def _check(
    request: Request,
    validate: Callable[[Mesh], Callable[..., Call]],
    message: Callable[[bytes], Any],
) -> _Checked:
    """Read the body, then authenticate and validate it (at once)."""
    mesh: Mesh = request.app.state.mesh
    rid = request_id_of(request)
    deadline = time.monotonic() + mesh.request_timeout
    body = await read_body(request, mesh.max_body_bytes)
    make = partial(
        validate(mesh), message(body), timeout=hop_timeout(deadline), metadata=call_metadata(rid)
    )
    principal, validated = await authenticate_and_validate(
        mesh, request.headers.get("authorization", ""), rid, deadline, make
    )
    request.scope[observe.MODEL_KEY] = validated.request.model
    return _Checked(mesh, rid, deadline, principal, validated)


async def _generate(
    request: Request,
    checked: _Checked,
    endpoint: int,
    max_tokens: int | None,
    stream: Callable[..., Call],
    create: Callable[..., Call],
    renderer: Callable[[Any, bool], _Renderer[Any]],
    render_json: Callable[[Any], bytes],
) -> Response:
    """Chat and legacy completions from admission on: the same path, their own messages.

    `stream` and `create` start the router call for a RequestContext.
    """
    mesh, rid, validated = checked.mesh, checked.rid, checked.validated
    asked = validated.request
    record = metering.start_record(rid, checked.principal, asked.model, endpoint, asked.stream)
    headers, meter = await admit(
        mesh, rid, checked.principal, validated, max_tokens, checked.deadline, record
    )
    context = common_pb2.RequestContext(
        request_id=rid, principal=checked.principal, prompt_tokens=validated.prompt_tokens
    )
    timeout = max(checked.deadline - time.monotonic(), 0.001)
    try:
        if asked.stream:
            call, first = await _first(
                partial(stream, context, timeout=timeout, metadata=call_metadata(rid))
            )
            meter.first_token()
            events = _events(
                call,
                first,
                renderer(first, asked.include_usage),
                asked.include_usage,
                validated.prompt_tokens,
                meter,
            )
            # A stream that never started (the client left at once) is still recorded.
            unstarted = common_pb2.Usage(prompt_tokens=validated.prompt_tokens)
            return sse.EventStream(
                events,
                headers,
                call.cancel,
                lambda: meter.cancel(unstarted),
            )
        response, replica = await _routed(
            partial(create, context, timeout=timeout, metadata=call_metadata(rid)), request
        )
    except ApiError as exc:
        meter.finish(common_pb2.Usage(), error=exc)
        return error_response(exc, rid, headers)
    except BaseException:  # the client left mid-request (cancelled) or a bug: still recorded
        meter.cancel(common_pb2.Usage())
        raise
    meter.finish(response.completion.usage, replica=replica)
    return Response(render_json(response.completion), headers=headers, media_type=JSON)


@endpoint
async def chat_completions(request: Request) -> Response:
    checked = await _check(
        request,
        lambda mesh: mesh.validation.ValidateChatCompletion,
        lambda body: validation_pb2.ValidateChatCompletionRequest(body=body),
    )
    chat = checked.validated.request
    router = checked.mesh.router
    return await _generate(
        request,
        checked,
        metering.CHAT,
        chat.max_tokens if chat.HasField("max_tokens") else None,
        lambda context, **kw: router.StreamChatCompletion(
            router_pb2.StreamChatCompletionRequest(request=chat, context=context), **kw
        ),
        lambda context, **kw: router.CreateChatCompletion(
            router_pb2.CreateChatCompletionRequest(request=chat, context=context), **kw
        ),
        sse.ChatChunks,
        render.chat_completion,
    )


@endpoint
async def completions(request: Request) -> Response:
    checked = await _check(
        request,
        lambda mesh: mesh.validation.ValidateCompletion,
        lambda body: validation_pb2.ValidateCompletionRequest(body=body),
    )
    text = checked.validated.request
    router = checked.mesh.router
    # Legacy completions default to 16 tokens per prompt.
    max_tokens = (text.max_tokens if text.HasField("max_tokens") else 16) * len(text.prompt)
    return await _generate(
        request,
        checked,
        metering.COMPLETIONS,
        max_tokens,
        lambda context, **kw: router.StreamCompletion(
            router_pb2.StreamCompletionRequest(request=text, context=context), **kw
        ),
        lambda context, **kw: router.CreateCompletion(
            router_pb2.CreateCompletionRequest(request=text, context=context), **kw
        ),
        sse.TextChunks,
        render.completion,
    )


@endpoint
async def embeddings(request: Request) -> Response:
    checked = await _check(
        request,
        lambda mesh: mesh.validation.ValidateEmbedding,
        lambda body: validation_pb2.ValidateEmbeddingRequest(body=body),
    )
    mesh, rid, deadline, validated = checked.mesh, checked.rid, checked.deadline, checked.validated
    record = metering.start_record(
        rid, checked.principal, validated.request.model, metering.EMBEDDINGS, False
    )
    headers, meter = await admit(mesh, rid, checked.principal, validated, 0, deadline, record)
    context = common_pb2.RequestContext(
        request_id=rid, principal=checked.principal, prompt_tokens=validated.prompt_tokens
    )
    try:
        answer: tuple[router_pb2.CreateEmbeddingResponse, str] = await _routed(
            partial(
                mesh.router.CreateEmbedding,
                router_pb2.CreateEmbeddingRequest(request=validated.request, context=context),
                timeout=max(deadline - time.monotonic(), 0.001),
                metadata=call_metadata(rid),
            ),
            request,
        )
    except ApiError as exc:
        meter.finish(common_pb2.Usage(), error=exc)
        return error_response(exc, rid, headers)
    except BaseException:
        meter.cancel(common_pb2.Usage())
        raise
    response, replica = answer
    meter.finish(response.embeddings.usage, replica=replica)
    return Response(
        render.embeddings(response.embeddings, validated.request.base64),
        headers=headers,
        media_type=JSON,
    )


@endpoint
async def list_models(request: Request) -> Response:
    mesh: Mesh = request.app.state.mesh
    rid = request_id_of(request)
    deadline = time.monotonic() + mesh.request_timeout
    principal = await authenticate(mesh, request.headers.get("authorization", ""), rid, deadline)
    context = common_pb2.RequestContext(request_id=rid, principal=principal)
    make = partial(
        mesh.router.ListModels,
        router_pb2.ListModelsRequest(context=context),
        timeout=hop_timeout(deadline),
        metadata=call_metadata(rid),
    )
    response, headers = await _described(mesh, principal, rid, deadline, make)
    return Response(render.model_list(response), headers=headers, media_type=JSON)


@endpoint
async def get_model(request: Request) -> Response:
    """`/v1/models/{id}`; ids may contain '/', sent raw (SDK 1.x) or as %2F (SDK 3.x)."""
    mesh: Mesh = request.app.state.mesh
    rid = request_id_of(request)
    deadline = time.monotonic() + mesh.request_timeout
    principal = await authenticate(mesh, request.headers.get("authorization", ""), rid, deadline)
    model_id = request.path_params["model_id"]
    context = common_pb2.RequestContext(request_id=rid, principal=principal)
    make = partial(
        mesh.router.GetModel,
        router_pb2.GetModelRequest(id=model_id, context=context),
        timeout=hop_timeout(deadline),
        metadata=call_metadata(rid),
    )
    response, headers = await _described(mesh, principal, rid, deadline, make)
    return Response(
        orjson.dumps(render.model_card(response.model)), headers=headers, media_type=JSON
    )
