"""The built-in reference engine (and any engine speaking meshgate.v1.EngineService), over gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshgate import errors, grpcio, logs
from meshgate.config import TlsConfig
from meshgate.v1 import engine_pb2, engine_pb2_grpc, inference_pb2
from services.router.adapters.base import EngineUnavailable

# Failures another replica (or a fallback model) may not have, by their fallback reason.
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE: "unreachable",
    grpc.StatusCode.UNKNOWN: "engine_error",
    grpc.StatusCode.INTERNAL: "engine_error",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "rate_limited",
}


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
    def __init__(self, target: str, tls: TlsConfig | None = None) -> None:
        self.target = target
        self._channel = grpcio.channel(target, tls)
        self._stub = engine_pb2_grpc.EngineServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def chat(
        self, request: inference_pb2.ChatCompletionRequest, timeout: float
    ) -> inference_pb2.ChatCompletion:
        try:
            response = await self._stub.GenerateChat(
                engine_pb2.GenerateChatRequest(request=request),
                timeout=timeout,
                metadata=_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, self.target) from None
        return response.completion

    def stream_chat(
        self, request: inference_pb2.ChatCompletionRequest, timeout: float
    ) -> AsyncIterator[inference_pb2.ChatCompletionChunk]:
        return self._relay(
            lambda: self._stub.StreamChat(
                engine_pb2.StreamChatRequest(request=request), timeout=timeout, metadata=_metadata()
            )
        )

    async def text(
        self, request: inference_pb2.CompletionRequest, timeout: float
    ) -> inference_pb2.Completion:
        try:
            response = await self._stub.GenerateText(
                engine_pb2.GenerateTextRequest(request=request),
                timeout=timeout,
                metadata=_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, self.target) from None
        return response.completion

    def stream_text(
        self, request: inference_pb2.CompletionRequest, timeout: float
    ) -> AsyncIterator[inference_pb2.CompletionChunk]:
        return self._relay(
            lambda: self._stub.StreamText(
                engine_pb2.StreamTextRequest(request=request), timeout=timeout, metadata=_metadata()
            )
        )

    async def _relay(self, start: Callable[[], Any]) -> AsyncIterator[Any]:
        """The engine's stream, started on first read; its errors become ours."""
        call = start()
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, self.target) from None
        finally:
            call.cancel()  # a no-op when the stream ended; stops generation when the client left

    async def embed(
        self, request: inference_pb2.EmbeddingRequest, timeout: float
    ) -> inference_pb2.EmbeddingList:
        try:
            response = await self._stub.Embed(
                engine_pb2.EmbedRequest(request=request), timeout=timeout, metadata=_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, self.target) from None
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
