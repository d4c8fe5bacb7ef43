"""The router service: replica choice, failover, model fallbacks (fallback.py) and the
streaming relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
import prometheus_client

from meshgate import billing, errors, grpcio, tokens
from meshgate.config import Config
from meshgate.deadline import left, of_call
from meshgate.errors import ApiError
from meshgate.grpcio import ENGINE_TIME_KEY, MODEL_KEY, REPLICA_KEY, Context
from meshgate.v1 import common_pb2, inference_pb2, router_pb2, router_pb2_grpc
from services.router import catalog as cat
from services.router.adapters.base import EngineAdapter, EngineUnavailable
from services.router.balancer import Balancer, Replica, ReplicaCollector
from services.router.fallback import Attempt, Chain, Moved, Prepare, first_within
from services.router.signals import Poller, signals_proto
from services.validation.catalog import prepare_chat, prepare_embedding, prepare_text

log = logging.getLogger("meshgate.router")

T = TypeVar("T")
R = TypeVar(
    "R",
    inference_pb2.ChatCompletionRequest,
    inference_pb2.CompletionRequest,
    inference_pb2.EmbeddingRequest,
)
Chunk = TypeVar("Chunk", inference_pb2.ChatCompletionChunk, inference_pb2.CompletionChunk)

REPLICA_HEALTHY = prometheus_client.Gauge(
    "meshgate_router_replica_healthy",
    "1 while an engine replica is in rotation, 0 while ejected.",
    ["target"],
)
EJECTIONS = prometheus_client.Counter(
    "meshgate_router_ejections", "Replicas taken out of rotation after a failed call.", ["target"]
)
FAILOVERS = prometheus_client.Counter(
    "meshgate_router_failovers", "Requests retried on another replica before their first token."
)

HEALTH_INTERVAL_S = 2.0
UNHEALTHY_AFTER = 3
HEALTH_TIMEOUT_S = 1.0
# A replica with requests in flight is not health-checked while they progressed this recently.
PROGRESS_PROVES_S = 10.0


def mid_stream_failure() -> ApiError:
    return ApiError(502, "server_error", "The engine failed while streaming the response.")


def _fill_usage(
    answer: inference_pb2.ChatCompletion | inference_pb2.Completion, prompt_tokens: int
) -> None:
    """An engine that reported no usage is billed by our own count of its answer."""
    if billing.reported(answer.usage):
        return
    text = ""
    for choice in answer.choices:
        if isinstance(choice, inference_pb2.ChatChoice):
            text += choice.message.content + "".join(t.arguments for t in choice.message.tool_calls)
        else:
            text += choice.text
    answer.usage.CopyFrom(billing.billed(None, prompt_tokens, tokens.count(text)))


def _request_id(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str):
            return value
    return ""


class RouterService(router_pb2_grpc.RouterServiceServicer):
    def __init__(
        self,
        catalog: cat.Catalog,
        replicas: Sequence[Replica],
        default_timeout: float,
        balancer: Balancer,
    ) -> None:
        self._catalog = catalog
        self._replicas = list(replicas)
        self._default_timeout = default_timeout
        self._balancer = balancer

    async def _next(
        self, model: cat.Model, tried: list[Replica], blocks: tuple[int, ...], chain: Chain[R]
    ) -> Replica | None:
        """The replica for the next attempt (balancer.acquire), counted as outstanding. With
        every replica at its max_concurrency past the bounded wait, the chain moves on."""
        try:
            return await self._balancer.acquire(
                model.id, model.replicas, tried, blocks, left(chain.deadline)
            )
        except ApiError as exc:
            raise Moved("at_capacity", exc) from None

    # ------------------------------------------------------------ relay ----

    async def _unary(
        self,
        chain: Chain[R],
        send: Callable[[EngineAdapter, R, float], Awaitable[T]],
        context: Context,
    ) -> tuple[T, Attempt[R]]:
        """The first answer of the chain's models, and the attempt that gave it."""
        for tries, attempt in enumerate(chain):
            if tries:
                self._balancer.count(attempt.model.id, "fallback")
            try:
                return await self._unary_on(attempt, chain, send, context), attempt
            except Moved as exc:
                chain.failed(attempt.model, exc.reason, exc.error)
        raise chain.error()

    async def _unary_on(
        self,
        attempt: Attempt[R],
        chain: Chain[R],
        send: Callable[[EngineAdapter, R, float], Awaitable[T]],
        context: Context,
    ) -> T:
        """Send to one replica; on an engine failure, retry on another within the deadline."""
        model = attempt.model
        tried: list[Replica] = []
        reason = "no_healthy_replica"
        blocks = self._balancer.blocks(attempt.request)
        while (replica := await self._next(model, tried, blocks, chain)) is not None:
            started = time.perf_counter()
            try:
                answer = await send(replica.adapter, attempt.request, chain.timeout(model))
                replica.progressed_at = time.monotonic()
                engine_us = int((time.perf_counter() - started) * 1e6)
                context.set_trailing_metadata(
                    (
                        (ENGINE_TIME_KEY, str(engine_us)),
                        (REPLICA_KEY, replica.target),
                        (MODEL_KEY, model.id),
                    )
                )
                return answer
            except EngineUnavailable as exc:
                self._eject(replica, exc, context)
                tried.append(replica)
                reason = exc.reason
                FAILOVERS.inc()
            except ApiError as exc:
                if exc.status != 504:
                    raise
                raise Moved("timeout", exc) from None
            finally:
                self._balancer.release(replica)
        raise Moved(reason, errors.no_replica(model.id))

    async def _stream(
        self,
        chain: Chain[R],
        open_stream: Callable[[EngineAdapter, R, float], AsyncIterator[Chunk]],
        prefix: str,
        context: Context,
    ) -> AsyncIterator[Chunk]:
        """The stream of the first of the chain's models to send a chunk."""
        for tries, attempt in enumerate(chain):
            if tries:
                self._balancer.count(attempt.model.id, "fallback")
            try:
                async for chunk in self._stream_on(attempt, chain, open_stream, prefix, context):
                    yield chunk
                return
            except Moved as exc:
                chain.failed(attempt.model, exc.reason, exc.error)
        raise chain.error()

    async def _stream_on(
        self,
        attempt: Attempt[R],
        chain: Chain[R],
        open_stream: Callable[[EngineAdapter, R, float], AsyncIterator[Chunk]],
        prefix: str,
        context: Context,
    ) -> AsyncIterator[Chunk]:
        """Relay a stream; failover is possible only until the first chunk has gone out.

        Engines that ignore `stream_options.include_usage` (the llama.cpp server
        does) get a usage chunk made up here: the validated prompt count and one
        token per fragment, so that billing never depends on the engine.
        """
        model = attempt.model
        tried: list[Replica] = []
        reason = "no_healthy_replica"
        blocks = self._balancer.blocks(attempt.request)
        while (replica := await self._next(model, tried, blocks, chain)) is not None:
            started = False
            tally = billing.Tally()
            chunks = open_stream(replica.adapter, attempt.request, left(chain.deadline))
            if chain.bounded(model):
                chunks = first_within(chunks, chain.timeout(model))
            try:
                async for chunk in chunks:
                    replica.progressed_at = time.monotonic()
                    if not started:
                        started = True
                        chunk.id = f"{prefix}-{secrets.token_hex(12)}"
                        chunk.created = int(time.time())
                        chunk.model = model.id
                        # Who serves it, for the usage record; with the first chunk, never a retry.
                        await context.send_initial_metadata(
                            ((REPLICA_KEY, replica.target), (MODEL_KEY, model.id))
                        )
                    tally.add(chunk)
                    yield chunk
                if started and tally.usage is None:
                    yield type(chunk)(usage=tally.billed(attempt.prompt_tokens))
                return
            except EngineUnavailable as exc:
                self._eject(replica, exc, context)
                if started:
                    raise mid_stream_failure() from None
                tried.append(replica)
                reason = exc.reason
                FAILOVERS.inc()
            except ApiError as exc:
                if started or exc.status != 504:
                    raise
                raise Moved("timeout", exc) from None
            finally:
                self._balancer.release(replica)
        raise Moved(reason, errors.no_replica(model.id))

    def _eject(self, replica: Replica, exc: Exception, context: Context) -> None:
        """Passive health: a failed replica leaves rotation until an active check passes."""
        if replica.healthy:
            EJECTIONS.labels(replica.target).inc()
            replica.ejections += 1
        replica.healthy = False
        REPLICA_HEALTHY.labels(replica.target).set(0)
        log.warning(
            "engine replica failed, ejected",
            extra={"target": replica.target, "error": str(exc), "request_id": _request_id(context)},
        )

    # -------------------------------------------------------------- RPCs ----

    def _chain(
        self,
        request: R,
        request_context: common_pb2.RequestContext,
        prepare: Prepare[R],
        context: Context,
    ) -> Chain[R]:
        principal = request_context.principal
        model = self._catalog.resolve(request.model, principal)
        deadline = of_call(context, self._default_timeout)
        return Chain(
            self._catalog,
            model,
            request,
            request_context.prompt_tokens,
            principal,
            prepare,
            deadline,
        )

    async def CreateChatCompletion(
        self, request: router_pb2.CreateChatCompletionRequest, context: Context
    ) -> router_pb2.CreateChatCompletionResponse:
        try:
            chain = self._chain(request.request, request.context, prepare_chat, context)
            completion, served = await self._unary(chain, lambda a, r, t: a.chat(r, t), context)
        except ApiError as exc:
            await exc.abort(context)
        _fill_usage(completion, served.prompt_tokens)
        completion.id = f"chatcmpl-{secrets.token_hex(12)}"
        completion.created = int(time.time())
        completion.model = served.model.id
        return router_pb2.CreateChatCompletionResponse(completion=completion)

    async def StreamChatCompletion(
        self, request: router_pb2.StreamChatCompletionRequest, context: Context
    ) -> AsyncIterator[inference_pb2.ChatCompletionChunk]:
        try:
            chain = self._chain(request.request, request.context, prepare_chat, context)
            async for chunk in self._stream(
                chain, lambda a, r, t: a.stream_chat(r, t), "chatcmpl", context
            ):
                yield chunk
        except ApiError as exc:
            await exc.abort(context)

    async def CreateCompletion(
        self, request: router_pb2.CreateCompletionRequest, context: Context
    ) -> router_pb2.CreateCompletionResponse:
        try:
            chain = self._chain(request.request, request.context, prepare_text, context)
            completion, served = await self._unary(chain, lambda a, r, t: a.text(r, t), context)
        except ApiError as exc:
            await exc.abort(context)
        _fill_usage(completion, served.prompt_tokens)
        completion.id = f"cmpl-{secrets.token_hex(12)}"
        completion.created = int(time.time())
        completion.model = served.model.id
        return router_pb2.CreateCompletionResponse(completion=completion)

    async def StreamCompletion(
        self, request: router_pb2.StreamCompletionRequest, context: Context
    ) -> AsyncIterator[inference_pb2.CompletionChunk]:
        try:
            chain = self._chain(request.request, request.context, prepare_text, context)
            async for chunk in self._stream(
                chain, lambda a, r, t: a.stream_text(r, t), "cmpl", context
            ):
                yield chunk
        except ApiError as exc:
            await exc.abort(context)

    async def CreateEmbedding(
        self, request: router_pb2.CreateEmbeddingRequest, context: Context
    ) -> router_pb2.CreateEmbeddingResponse:
        try:
            chain = self._chain(request.request, request.context, prepare_embedding, context)
            embeddings, served = await self._unary(chain, lambda a, r, t: a.embed(r, t), context)
        except ApiError as exc:
            await exc.abort(context)
        embeddings.model = served.model.id
        return router_pb2.CreateEmbeddingResponse(embeddings=embeddings)

    async def ListModels(
        self, request: router_pb2.ListModelsRequest, context: Context
    ) -> router_pb2.ListModelsResponse:
        models = self._catalog.visible(request.context.principal)
        return router_pb2.ListModelsResponse(models=[m.card() for m in models])

    async def GetModel(
        self, request: router_pb2.GetModelRequest, context: Context
    ) -> router_pb2.GetModelResponse:
        try:
            model = self._catalog.resolve(request.id, request.context.principal)
            if not model.serving():
                raise errors.no_replica(model.id)
        except ApiError as exc:
            await exc.abort(context)
        return router_pb2.GetModelResponse(model=model.card())

    async def ListModelReplicas(
        self, request: router_pb2.ListModelReplicasRequest, context: Context
    ) -> router_pb2.ListModelReplicasResponse:
        now = time.monotonic()
        return router_pb2.ListModelReplicasResponse(
            models=[
                router_pb2.ModelReplicas(
                    model=model.card(),
                    serving=model.serving(),
                    replicas=[
                        router_pb2.ReplicaHealth(
                            target=r.target,
                            healthy=r.healthy,
                            outstanding=r.outstanding,
                            failed_checks=r.failed_checks,
                            ejections=r.ejections,
                            weight=r.weight,
                            max_concurrency=r.max_concurrency,
                            signals=signals_proto(r.signal, now),
                            score=self._balancer.scores.get((model.id, r.key), 0.0),
                        )
                        for r in model.replicas
                    ],
                    decisions=self._balancer.decisions.get(model.id, {}),
                )
                for model in self._catalog
            ]
        )

    # ------------------------------------------------------------ health ----

    async def check_all(self) -> None:
        """Ask each idle replica, and each one out of rotation, whether it is healthy.

        A healthy replica whose requests in flight made progress (an answer, a chunk)
        within PROGRESS_PROVES_S is not asked: they prove it, and a failed one ejects it at
        once (_eject). Asking would also cut them short on llama-cpp-python's server,
        which by default (`interrupt_requests`) ends a running stream with [DONE] as soon
        as any other request, `GET /v1/models` included, arrives. A replica that stalls
        with requests in flight is asked again, so a hung engine still leaves rotation.
        """
        now = time.monotonic()
        asked = [
            r
            for r in self._replicas
            if not (r.healthy and r.outstanding and now - r.progressed_at < PROGRESS_PROVES_S)
        ]
        results = await asyncio.gather(*(r.adapter.check_health(HEALTH_TIMEOUT_S) for r in asked))
        for replica, ok in zip(asked, results, strict=True):
            # A busy single-worker engine (the llama.cpp server) may miss one check while it
            # generates: only UNHEALTHY_AFTER misses in a row take it out. A failed call
            # still ejects at once (_eject).
            replica.failed_checks = 0 if ok else replica.failed_checks + 1
            healthy = ok or (replica.healthy and replica.failed_checks < UNHEALTHY_AFTER)
            if healthy != replica.healthy:
                message = (
                    "engine replica healthy again"
                    if healthy
                    else "engine replica failed its health checks"
                )
                log.log(
                    logging.INFO if healthy else logging.WARNING,
                    message,
                    extra={"target": replica.target},
                )
            if replica.healthy and not healthy:
                replica.ejections += 1
            replica.healthy = healthy
            REPLICA_HEALTHY.labels(replica.target).set(1 if healthy else 0)

    async def health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await self.check_all()


async def run(config: Config) -> None:
    catalog, replicas = cat.build_catalog(config)
    balancer = Balancer(config.services.router)
    service = RouterService(catalog, replicas, config.edge.request_timeout_s, balancer)
    models = [(model.id, model.replicas) for model in catalog]
    prometheus_client.REGISTRY.register(ReplicaCollector(models, balancer))
    poller = Poller(replicas)
    await asyncio.gather(service.check_all(), poller.poll_once())
    poller.start()
    health_task = asyncio.create_task(service.health_loop())

    async def setup(server: grpc.aio.Server) -> Sequence[str]:
        router_pb2_grpc.add_RouterServiceServicer_to_server(service, server)
        return [router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name]

    cfg = config.services.router
    try:
        await grpcio.serve("router", cfg, setup, tls=config.tls)
    finally:
        health_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await health_task
        await poller.stop()
        for replica in replicas:
            await replica.adapter.close()
