"""Model fallbacks: the models one request may be served by, in the order they are tried.

The model asked for comes first, then its chain (meshgate/fallbacks.py: the key's own
list, else the catalog's, less the models the key may not use). The router moves on
only before a first token: when a model has no healthy replica, when every replica
it tried failed (unreachable, 5xx, 429), or when its `timeout_s` passed.

A fallback is skipped when it could not serve the request: validation's own rule for
that model (`services/validation/catalog.py`'s `prepare_*`: category, tools, vision,
dimensions, context length) runs on a copy of the request, which so also gets that
model's json_schema downgrade. With `context_fallbacks`, the model asked for is
checked the same way, and a prompt it cannot hold goes down the chain.

A model with no healthy replica is passed over while a later one may answer; when no
model of the chain answered, those are tried after all, in order (panic routing, as
the balancer does for replicas).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import prometheus_client

from meshgate import errors, fallbacks
from meshgate.config import ModelConfig
from meshgate.deadline import left
from meshgate.errors import ApiError
from meshgate.v1 import common_pb2, inference_pb2
from services.router import catalog as cat
from services.validation.catalog import Request, for_model

Chunk = TypeVar("Chunk")
Prepare = Callable[[ModelConfig, Request], int]

FALLBACKS = prometheus_client.Counter(
    "meshgate_router_fallbacks",
    "Requests moved to the next model of their fallback chain, before the first token.",
    ["from", "to", "reason"],
)
SKIPPED = prometheus_client.Counter(
    "meshgate_router_fallbacks_skipped",
    "Fallback models passed over because they could not serve the request (capability, "
    "context, dimensions).",
    ["from", "to"],
)


class Moved(Exception):
    """This model cannot answer now; the next one of the chain may."""

    def __init__(self, reason: str, error: ApiError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


@dataclass(frozen=True, slots=True)
class Attempt(Generic[Request]):
    """One model of the chain, and the request as prepared for it."""

    model: cat.Model
    request: Request
    prompt_tokens: int


class Chain(Generic[Request]):
    """The attempts of one request, made lazily: a fallback is prepared only if reached."""

    def __init__(
        self,
        catalog: cat.Catalog,
        requested: cat.Model,
        request: Request,
        prompt_tokens: int,
        principal: common_pb2.Principal,
        prepare: Prepare[Request],
        deadline: float,
    ) -> None:
        self._catalog = catalog
        self._requested = requested
        self._request: Request = request
        self._prompt_tokens = prompt_tokens
        self._principal = principal
        self._prepare: Prepare[Request] = prepare
        self.deadline = deadline
        self._from: cat.Model | None = None
        self._reason = ""
        self._error: ApiError | None = None

    def __iter__(self) -> Iterator[Attempt[Request]]:
        parked: list[Attempt[Request]] = []
        for attempt in self._candidates():
            if not attempt.model.serving():
                parked.append(attempt)
                self.failed(
                    attempt.model, "no_healthy_replica", errors.no_replica(attempt.model.id)
                )
                continue
            if self._expired():
                return
            yield self._enter(attempt)
        for attempt in parked:
            if self._expired():
                return
            yield self._enter(attempt)

    def _candidates(self) -> Iterator[Attempt[Request]]:
        requested, request = self._requested, self._request
        if not requested.config.context_fallbacks or self._fits(requested.config):
            yield Attempt(requested, request, self._prompt_tokens)
        else:
            try:
                self._prepare(requested.config, for_model(request, requested.id))
            except ApiError as exc:  # validation let it through for a fallback's context
                self.failed(requested, "context", exc)
            else:
                yield Attempt(requested, request, self._prompt_tokens)
        for name in fallbacks.chain(requested.config, self._principal):
            model = self._catalog.get(name)
            if model is None:
                continue
            copy = for_model(request, name)
            try:
                prompt_tokens = self._prepare(model.config, copy)
            except ApiError:
                SKIPPED.labels(requested.id, name).inc()
                continue
            yield Attempt(model, copy, prompt_tokens)

    def _fits(self, model: ModelConfig) -> bool:
        """Surely within `model`'s context: the validated prompt count (over all prompts or
        inputs) plus the completion allowance. Else the full rule decides."""
        request = self._request
        allowance = (
            request.max_tokens
            if not isinstance(request, inference_pb2.EmbeddingRequest)
            and request.HasField("max_tokens")
            else 0
        )
        return self._prompt_tokens + allowance <= model.context_length

    def _enter(self, attempt: Attempt[Request]) -> Attempt[Request]:
        if self._from is not None and self._from is not attempt.model:
            FALLBACKS.labels(self._from.id, attempt.model.id, self._reason).inc()
        return attempt

    def _expired(self) -> bool:
        if time.monotonic() < self.deadline:
            return False
        self._error = errors.timeout()
        return True

    def failed(self, model: cat.Model, reason: str, error: ApiError) -> None:
        """`model` could not answer, for `reason`; `error` is what the client gets if no
        later model answers (the last failure: a prompt too long for the model asked for
        stays a 400 only if no fallback was tried, since a retry may find one up)."""
        self._from, self._reason, self._error = model, reason, error

    def error(self) -> ApiError:
        """Why no model of the chain answered."""
        return self._error or errors.no_replica(self._requested.id)

    def timeout(self, model: cat.Model) -> float:
        """Seconds one call to `model` may take: its `timeout_s`, within the deadline."""
        return left(self.deadline, model.config.timeout_s or math.inf)

    def bounded(self, model: cat.Model) -> bool:
        """Whether `model`'s own timeout ends a call before the request's deadline does."""
        limit = model.config.timeout_s
        return bool(limit) and time.monotonic() + limit < self.deadline


async def first_within(chunks: AsyncIterator[Chunk], seconds: float) -> AsyncIterator[Chunk]:
    """`chunks`, whose first must come within `seconds`: else a 504 ends it, before any
    chunk, which the relay takes as a reason to try the next model."""
    try:
        try:
            first = await asyncio.wait_for(anext(chunks), seconds)
        except TimeoutError:
            raise errors.timeout() from None
        except StopAsyncIteration:
            return
        yield first
        async for chunk in chunks:
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
