"""The built-in reference engine (and any engine speaking meshgate.v1.EngineService), over gRPC."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshgate import errors, grpcio, logs
from meshgate.config import TlsConfig
from meshgate.deadline import left
from meshgate.v1 import engine_pb2, engine_pb2_grpc, inference_pb2
from services.router.adapters.base import EngineUnavailable

# Failures another replica (or a fallback model) may not have, by their fallback reason.
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE: "unreachable",
    grpc.StatusCode.UNKNOWN: "engine_error",
    grpc.StatusCode.INTERNAL: "engine_error",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "rate_limited",
}


# Attempts per call: a second one when the replica refused the first (see GrpcEngine).
_ATTEMPTS = 2


def _metadata() -> tuple[tuple[str, str], ...]:
    """The request id travels on to the engine, for its logs."""
    return (("x-request-id", logs.request_id.get()),)


def _translate(exc: grpc.aio.AioRpcError, target: str) -> Exception:
    """An engine-reported OpenAI error passes through; a broken replica becomes EngineUnavailable."""
    error = errors.from_rpc_error(exc, "engine")
    reason = _RETRYABLE.get(exc.code())
    # RESOURCE_EXHAUSTED counts only as the engine's own 429: gRPC also says it of a
    # message too large, which every replica would refuse alike.
    retryable = error.status == 429 if reason == "rate_limited" else error.status >= 500
    if reason is not None and retryable:
        return EngineUnavailable(f"{target}: {exc.code().name}", reason)
    return error


class GrpcEngine:
    """One engine replica over gRPC.

    A call the replica refused before answering (`errors.transient`: the GOAWAY race
    when the engine ends a connection at its max age) is sent once more before it
    counts as the replica's failure: counting it would eject a healthy replica, and
    the only one would leave every request without an engine until its next check.
    """

    def __init__(self, target: str, tls: TlsConfig | None = None) -> None:
        self.target = target
        self._channel = grpcio.channel(target, tls)
        self._stub = engine_pb2_grpc.EngineServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def chat(
        self, request: inference_pb2.ChatCompletionRequest, timeout: float
    ) -> inference_pb2.ChatCompletion:
        response = await self._unary(
            self._stub.GenerateChat, engine_pb2.GenerateChatRequest(request=request), timeout
        )
        return response.completion

    def stream_chat(
        self, request: inference_pb2.ChatCompletionRequest, timeout: float
    ) -> AsyncIterator[inference_pb2.ChatCompletionChunk]:
        return self._relay(
            self._stub.StreamChat, engine_pb2.StreamChatRequest(request=request), timeout
        )

    async def text(
        self, request: inference_pb2.CompletionRequest, timeout: float
    ) -> inference_pb2.Completion:
        response = await self._unary(
            self._stub.GenerateText, engine_pb2.GenerateTextRequest(request=request), timeout
        )
        return response.completion

    def stream_text(
        self, request: inference_pb2.CompletionRequest, timeout: float
    ) -> AsyncIterator[inference_pb2.CompletionChunk]:
        return self._relay(
            self._stub.StreamText, engine_pb2.StreamTextRequest(request=request), timeout
        )

    async def _unary(self, method: Any, message: Any, timeout: float) -> Any:
        """One unary call, sent again once if the replica refused it before answering."""
        deadline = time.monotonic() + timeout
        for attempt in range(_ATTEMPTS):
            try:
                return await method(message, timeout=left(deadline), metadata=_metadata())
            except grpc.aio.AioRpcError as exc:
                if attempt + 1 == _ATTEMPTS or not errors.transient(exc):
                    raise _translate(exc, self.target) from None
        raise AssertionError("unreachable")

    async def _relay(self, method: Any, message: Any, timeout: float) -> AsyncIterator[Any]:
        """The engine's stream, started on first read; its errors become ours. A stream
        the replica refused before its first chunk is started once more."""
        deadline = time.monotonic() + timeout
        for attempt in range(_ATTEMPTS):
            call = method(message, timeout=left(deadline), metadata=_metadata())
            relayed = False
            try:
                async for chunk in call:
                    relayed = True
                    yield chunk
                return
            except grpc.aio.AioRpcError as exc:
                if relayed or attempt + 1 == _ATTEMPTS or not errors.transient(exc):
                    raise _translate(exc, self.target) from None
            finally:
                call.cancel()  # a no-op when the stream ended; stops generation when the client left

    async def embed(
        self, request: inference_pb2.EmbeddingRequest, timeout: float
    ) -> inference_pb2.EmbeddingList:
        response = await self._unary(
            self._stub.Embed, engine_pb2.EmbedRequest(request=request), timeout
        )
        return response.embeddings

    async def check_health(self, timeout: float) -> bool:
        try:
            response = await self._health.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.aio.AioRpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self._channel.close()
