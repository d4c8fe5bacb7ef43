"""The per-request path, read top to bottom: the hops, then one function per endpoint.

chat:  body -> (auth || validation) -> quota.Reserve -> router -> JSON or SSE -> quota.Settle
responses: the same hops; validation returns the chat request the body translates into,
and edge/responses_api.py renders the chat answer as the Responses API's.
Every hop and its order is visible here, so it can be measured. Each hop is a
generated stub's method and its request message (edge/mesh.py's `rpc` starts,
retries and times it). Errors are ApiError values rendered once by
edge/errors.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial, wraps
from typing import Any, Generic, Protocol, TypeVar

import grpc
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from edge import metering, observe, render, responses_api, sse
from edge.errors import error_response
from edge.headers import rate_limit_headers, request_id_of
from edge.mesh import (
    HOP_TIMEOUT_S,
    RETRIES,
    Mesh,
    Message,
    Method,
    rpc,
    rpc_call,
    start,
)
from edge.metering import Meter
from meshgate import billing, errors, logs, structs, tracing
from meshgate.access import may_use
from meshgate.errors import ApiError, from_rpc_error, transient
from meshgate.grpcio import ENGINE_TIME_KEY, MODEL_KEY, REPLICA_KEY
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


ValidatedChat = validation_pb2.ValidateChatCompletionResponse
ValidatedText = validation_pb2.ValidateCompletionResponse
ValidatedEmbedding = validation_pb2.ValidateEmbeddingResponse
ValidatedResponse = validation_pb2.ValidateResponseResponse
Validated = ValidatedChat | ValidatedText | ValidatedEmbedding | ValidatedResponse
V = TypeVar("V", ValidatedChat, ValidatedText, ValidatedEmbedding, ValidatedResponse)


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
            response = error_response(exc)
        except ClientDisconnect:
            # The client left while sending its body: nobody to answer, and not our failure.
            response = error_response(
                ApiError(499, "invalid_request_error", "The client closed the connection.")
            )
        except Exception as exc:
            log.error("unhandled error", extra={"error": type(exc).__name__})
            response = error_response(errors.server_error())
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
    """The body, copied once: pieces are kept as they arrive and joined at the end (a
    one-piece body is not copied at all), so a 40 MB image is not held twice over."""
    declared = request.headers.get("content-length", "")
    too_large = ApiError(
        413, "invalid_request_error", f"Request body too large: the limit is {limit} bytes."
    )
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    pieces: list[bytes] = []
    size = 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:
            raise too_large
        if piece:
            pieces.append(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


async def authenticate(
    mesh: Mesh, authorization: str, request_id: str, deadline: float
) -> common_pb2.Principal:
    principal = mesh.auth_cache.get(authorization)
    if principal is None:
        request = auth_pb2.AuthenticateRequest(authorization=authorization)
        answer: auth_pb2.AuthenticateResponse = await rpc(
            mesh.auth.Authenticate, request, "auth", request_id, deadline
        )
        principal = answer.principal
        mesh.auth_cache.put(authorization, principal)
    return principal


async def authenticate_and_validate(
    mesh: Mesh,
    authorization: str,
    request_id: str,
    deadline: float,
    validate: Method,
    body: Message,
) -> tuple[common_pb2.Principal, Validated]:
    """Auth and validation run at once; an auth failure wins over a validation failure.

    Between them every reason a request could never succeed is known here, before
    quota: the key, the shape, the model's catalog entry, and the key's allowance.
    """
    validation = mesh.start_validation(validate, body, request_id, deadline)
    try:
        principal = await authenticate(mesh, authorization, request_id, deadline)
    except ApiError:
        validation.cancel()
        raise
    try:
        validated: Validated = await mesh.validated(
            validate, body, request_id, deadline, validation
        )
        if not may_use(principal, validated.request.model):  # as unknown, before any charge
            raise errors.model_not_found(validated.request.model)
        return principal, validated
    except ApiError as exc:
        if exc.rate_limit is None:  # authenticated: the 400 still carries the x-ratelimit-* headers
            exc.rate_limit = await peek(mesh, principal, request_id, deadline)
        raise


async def peek(
    mesh: Mesh, principal: common_pb2.Principal, request_id: str, deadline: float
) -> common_pb2.RateLimitState | None:
    """The key's rate-limit state without charging it; None if quota cannot say (headers are best effort)."""
    request = quota_pb2.GetRateLimitRequest(principal=principal)
    try:
        answer = await start(mesh.quota.GetRateLimit, request, request_id, deadline, HOP_TIMEOUT_S)
    except grpc.aio.AioRpcError:
        return None
    state: common_pb2.RateLimitState = answer.rate_limit
    return state


async def reserve(
    mesh: Mesh,
    principal: common_pb2.Principal,
    validated: Validated,
    max_tokens: int | None,
    request_id: str,
    deadline: float,
    record: usage_pb2.UsageRecord,
) -> quota_pb2.ReserveResponse:
    """Admit the request; it carries the edge's waiting settlements to quota too."""
    settlements = mesh.settlements.take()
    request = quota_pb2.ReserveRequest(
        principal=principal,
        prompt_tokens=validated.prompt_tokens,
        request_id=request_id,
        record=record,
        settlements=settlements,
    )
    if max_tokens is not None:
        request.max_tokens = max_tokens
    try:
        return await mesh.reserve(request, request_id, deadline)
    except ApiError as exc:
        if exc.status != 429:  # a 429 is quota's own answer, given after settling
            mesh.settlements.give_back(settlements)
        raise
    except asyncio.CancelledError:
        mesh.settlements.give_back(settlements)
        raise


async def admit(
    mesh: Mesh,
    request_id: str,
    principal: common_pb2.Principal,
    validated: Validated,
    max_tokens: int | None,
    deadline: float,
    record: usage_pb2.UsageRecord,
) -> tuple[dict[str, str], Meter]:
    """Reserve, and the meter that will settle the reservation with the request's record."""
    reservation = await reserve(
        mesh, principal, validated, max_tokens, request_id, deadline, record
    )
    return rate_limit_headers(reservation.rate_limit), Meter(mesh, principal, reservation, record)


# ------------------------------------------------------------ the router ----


@dataclass(frozen=True, slots=True)
class Served:
    """Who answered, as the router says: the engine replica and the catalog model."""

    replica: str = ""
    model: str = ""

    def headers(self, headers: dict[str, str]) -> dict[str, str]:
        """`headers` plus `x-meshgate-model`, the model that answered."""
        return {**headers, MODEL_KEY: self.model} if self.model else headers


def _served(metadata: Any) -> Served:
    """The replica and the model from a router call's metadata."""
    replica = model = ""
    for key, value in metadata or ():
        if key == REPLICA_KEY:
            replica = str(value)
        elif key == MODEL_KEY:
            model = str(value)
    return Served(replica, model)


async def _routed(
    request: Request, method: Method, message: Message, rid: str, deadline: float
) -> tuple[Any, Served]:
    """A unary router answer and who gave it; the engine's own time (trailing metadata)
    goes to the overhead metric."""
    response, call = await rpc_call(method, message, "router", rid, deadline, cap=math.inf)
    metadata = await call.trailing_metadata()
    for key, value in metadata or ():
        if key == ENGINE_TIME_KEY:
            request.scope[observe.ENGINE_KEY] = int(value) / 1e6
    return response, _served(metadata)


async def first_chunk(
    method: Method, message: Message, rid: str, deadline: float
) -> tuple[Any, Any]:
    """The stream and its first chunk; failing here is still an HTTP error status, never a
    200 stream. A router replica that died before answering is retried elsewhere (RETRIES)."""
    for attempt in range(RETRIES + 1):
        call = start(method, message, rid, deadline)
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


async def _served_by(call: grpc.aio.Call) -> Served:
    """Who a stream's first chunk came from (the router's initial metadata)."""
    return _served(await call.initial_metadata())


class _Renderer(Protocol[Chunk]):  # type: ignore[misc]
    """One stream's framing: chat's and legacy completions' `data:` chunks and [DONE],
    or the Responses API's events."""

    def relay(self, chunk: Chunk) -> bytes: ...
    def end(self, usage: common_pb2.Usage) -> bytes: ...
    def failed(self, error: ApiError) -> bytes: ...


async def _events(
    call: grpc.aio.UnaryStreamCall[object, Chunk],
    first: Chunk,
    renderer: _Renderer[Chunk],
    prompt_tokens: int,
    meter: Meter,
    replica: str,
) -> AsyncGenerator[bytes, None]:
    """Relay chunks as SSE; record the engine's usage, or an estimate if the stream broke."""
    tally = billing.Tally()
    chunk: object = first
    error: ApiError | None = None
    ended = False
    try:
        while chunk is not grpc.aio.EOF:
            assert isinstance(
                chunk, inference_pb2.ChatCompletionChunk | inference_pb2.CompletionChunk
            )
            tally.add(chunk)
            events = renderer.relay(chunk)  # type: ignore[arg-type]
            if events:
                yield events
            chunk = await call.read()
        yield renderer.end(tally.billed(prompt_tokens))
        ended = True
    except grpc.aio.AioRpcError as exc:
        error = from_rpc_error(exc, "router")
        yield renderer.failed(error)
        ended = True
    finally:
        if not call.done():
            call.cancel()
        billed = tally.billed(prompt_tokens)
        if ended:
            meter.finish(billed, replica=replica, error=error, status=200)
        else:  # the client hung up: the generator was closed at a yield
            meter.cancel(billed, replica=replica)


# ------------------------------------------------------------ endpoints ----


@dataclass(frozen=True, slots=True)
class Checked(Generic[V]):
    """A request that has passed auth and validation: nothing it asks can be refused now
    but its limits."""

    mesh: Mesh
    rid: str
    deadline: float
    principal: common_pb2.Principal
    validated: V


async def _check(
    request: Request, validate: Method, message: Callable[..., Message], answer: type[V]
) -> Checked[V]:
    """Read the body, then authenticate and validate it (at once).

    `validate` is the ValidationService method, `message` its request type and
    `answer` its response type (for the reader and the type checker).
    """
    mesh: Mesh = request.app.state.mesh
    rid = request_id_of(request)
    deadline = time.monotonic() + mesh.request_timeout
    body = await read_body(request, mesh.max_body_bytes)
    principal, validated = await authenticate_and_validate(
        mesh, request.headers.get("authorization", ""), rid, deadline, validate, message(body=body)
    )
    assert isinstance(validated, answer)
    request.scope[observe.MODEL_KEY] = validated.request.model
    return Checked(mesh, rid, deadline, principal, validated)


@dataclass(frozen=True, slots=True)
class _Generation:
    """What chat and legacy completions differ in, from admission on: the router's
    two methods with their request types, and the renderers."""

    endpoint: usage_pb2.Endpoint
    stream: Method
    stream_request: Callable[..., Message]
    create: Method
    create_request: Callable[..., Message]
    chunks: Callable[[Any, bool], _Renderer[Any]]
    render: Callable[[Any], bytes]


async def _generate(
    request: Request,
    checked: Checked[ValidatedChat] | Checked[ValidatedText] | Checked[ValidatedResponse],
    how: _Generation,
    max_tokens: int | None,
) -> Response:
    """Chat and legacy completions from admission on: one path, their own messages."""
    mesh, rid, deadline, validated = checked.mesh, checked.rid, checked.deadline, checked.validated
    asked = validated.request
    record = metering.start_record(rid, checked.principal, asked.model, how.endpoint, asked.stream)
    headers, meter = await admit(
        mesh, rid, checked.principal, validated, max_tokens, deadline, record
    )
    context = common_pb2.RequestContext(
        request_id=rid, principal=checked.principal, prompt_tokens=validated.prompt_tokens
    )
    try:
        if asked.stream:
            routed = how.stream_request(request=asked, context=context)
            call, first = await first_chunk(how.stream, routed, rid, deadline)
            meter.first_token()
            served = await _served_by(call)
            meter.served_by(served.model)
            renderer = how.chunks(first, asked.include_usage)
            events = _events(call, first, renderer, validated.prompt_tokens, meter, served.replica)
            # A stream that never started (the client left at once) is still recorded.
            unstarted = common_pb2.Usage(prompt_tokens=validated.prompt_tokens)
            return sse.EventStream(
                events, served.headers(headers), call.cancel, partial(meter.cancel, unstarted)
            )
        routed = how.create_request(request=asked, context=context)
        response, served = await _routed(request, how.create, routed, rid, deadline)
    except ApiError as exc:
        meter.finish(common_pb2.Usage(), error=exc)
        return error_response(exc, headers)
    except BaseException:  # the client left mid-request (cancelled) or a bug: still recorded
        meter.cancel(common_pb2.Usage())
        raise
    meter.served_by(served.model)
    meter.finish(response.completion.usage, replica=served.replica)
    body = how.render(response.completion)
    return Response(body, headers=served.headers(headers), media_type=JSON)


@endpoint
async def chat_completions(request: Request) -> Response:
    mesh: Mesh = request.app.state.mesh
    checked = await _check(
        request,
        mesh.validation.ValidateChatCompletion,
        validation_pb2.ValidateChatCompletionRequest,
        validation_pb2.ValidateChatCompletionResponse,
    )
    chat = checked.validated.request
    how = _Generation(
        metering.CHAT,
        mesh.router.StreamChatCompletion,
        router_pb2.StreamChatCompletionRequest,
        mesh.router.CreateChatCompletion,
        router_pb2.CreateChatCompletionRequest,
        sse.ChatChunks,
        render.chat_completion,
    )
    return await _generate(
        request, checked, how, chat.max_tokens if chat.HasField("max_tokens") else None
    )


@endpoint
async def responses(request: Request) -> Response:
    """`POST /v1/responses`: validation translated the body into a chat request, so from
    admission on this is chat's path; only the rendering is the Responses API's."""
    mesh: Mesh = request.app.state.mesh
    checked = await _check(
        request,
        mesh.validation.ValidateResponse,
        validation_pb2.ValidateResponseRequest,
        validation_pb2.ValidateResponseResponse,
    )
    chat = checked.validated.request
    api = responses_api.ResponsesApi(structs.to_dict(checked.validated.echo))
    how = _Generation(
        metering.RESPONSES,
        mesh.router.StreamChatCompletion,
        router_pb2.StreamChatCompletionRequest,
        mesh.router.CreateChatCompletion,
        router_pb2.CreateChatCompletionRequest,
        api.events,
        api.render,
    )
    return await _generate(
        request, checked, how, chat.max_tokens if chat.HasField("max_tokens") else None
    )


@endpoint
async def stored_response(request: Request) -> Response:
    """`/v1/responses/{id}` in any method: a 400 naming `response_id`, since nothing is stored."""
    raise errors.response_not_stored(request.path_params["response_id"].split("/")[0])


@endpoint
async def completions(request: Request) -> Response:
    mesh: Mesh = request.app.state.mesh
    checked = await _check(
        request,
        mesh.validation.ValidateCompletion,
        validation_pb2.ValidateCompletionRequest,
        validation_pb2.ValidateCompletionResponse,
    )
    text = checked.validated.request
    how = _Generation(
        metering.COMPLETIONS,
        mesh.router.StreamCompletion,
        router_pb2.StreamCompletionRequest,
        mesh.router.CreateCompletion,
        router_pb2.CreateCompletionRequest,
        sse.TextChunks,
        render.completion,
    )
    # Validation has set the legacy allowance (16) where the body had none.
    return await _generate(request, checked, how, text.max_tokens * len(text.prompt))


@endpoint
async def embeddings(request: Request) -> Response:
    mesh: Mesh = request.app.state.mesh
    checked = await _check(
        request,
        mesh.validation.ValidateEmbedding,
        validation_pb2.ValidateEmbeddingRequest,
        validation_pb2.ValidateEmbeddingResponse,
    )
    rid, deadline, principal, validated = (
        checked.rid,
        checked.deadline,
        checked.principal,
        checked.validated,
    )
    asked = validated.request
    record = metering.start_record(rid, principal, asked.model, metering.EMBEDDINGS, False)
    headers, meter = await admit(mesh, rid, principal, validated, 0, deadline, record)
    context = common_pb2.RequestContext(
        request_id=rid, principal=principal, prompt_tokens=validated.prompt_tokens
    )
    routed = router_pb2.CreateEmbeddingRequest(request=asked, context=context)
    try:
        response, served = await _routed(
            request, mesh.router.CreateEmbedding, routed, rid, deadline
        )
    except ApiError as exc:
        meter.finish(common_pb2.Usage(), error=exc)
        return error_response(exc, headers)
    except BaseException:
        meter.cancel(common_pb2.Usage())
        raise
    meter.served_by(served.model)
    meter.finish(response.embeddings.usage, replica=served.replica)
    body = render.embeddings(response.embeddings, asked.base64)
    return Response(body, headers=served.headers(headers), media_type=JSON)


async def _described(
    request: Request, method: Method, message: Callable[..., Message], **fields: Any
) -> tuple[Any, dict[str, str]]:
    """A models answer (for the caller's key) plus its rate-limit headers, fetched at once."""
    mesh: Mesh = request.app.state.mesh
    rid = request_id_of(request)
    deadline = time.monotonic() + mesh.request_timeout
    principal = await authenticate(mesh, request.headers.get("authorization", ""), rid, deadline)
    routed = message(
        context=common_pb2.RequestContext(request_id=rid, principal=principal), **fields
    )
    state = asyncio.ensure_future(peek(mesh, principal, rid, deadline))
    try:
        response = await rpc(method, routed, "router", rid, deadline)
    except ApiError as exc:
        exc.rate_limit = await state
        raise
    limits = await state
    return response, rate_limit_headers(limits) if limits else {}


@endpoint
async def list_models(request: Request) -> Response:
    mesh: Mesh = request.app.state.mesh
    response, headers = await _described(
        request, mesh.router.ListModels, router_pb2.ListModelsRequest
    )
    return Response(render.model_list(response), headers=headers, media_type=JSON)


@endpoint
async def get_model(request: Request) -> Response:
    """`/v1/models/{id}`; ids may contain '/', sent raw (SDK 1.x) or as %2F (SDK 3.x)."""
    mesh: Mesh = request.app.state.mesh
    response, headers = await _described(
        request,
        mesh.router.GetModel,
        router_pb2.GetModelRequest,
        id=request.path_params["model_id"],
    )
    return Response(
        orjson.dumps(render.model_card(response.model)), headers=headers, media_type=JSON
    )
