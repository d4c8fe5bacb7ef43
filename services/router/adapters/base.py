"""The one interface every engine family implements.

Adding an engine family adds a module here, not an `if` in the router.
Adapters receive requests that the router has already checked against the
catalog, and must always report usage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from meshgate.v1 import inference_pb2


class EngineAdapter(Protocol):
    """One engine replica, reached over its own protocol."""

    target: str

    async def chat(
        self, request: inference_pb2.ChatCompletionRequest, timeout: float
    ) -> inference_pb2.ChatCompletion: ...

    def stream_chat(
        self, request: inference_pb2.ChatCompletionRequest, timeout: float
    ) -> AsyncIterator[inference_pb2.ChatCompletionChunk]: ...

    async def text(
        self, request: inference_pb2.CompletionRequest, timeout: float
    ) -> inference_pb2.Completion: ...

    def stream_text(
        self, request: inference_pb2.CompletionRequest, timeout: float
    ) -> AsyncIterator[inference_pb2.CompletionChunk]: ...

    async def embed(
        self, request: inference_pb2.EmbeddingRequest, timeout: float
    ) -> inference_pb2.EmbeddingList: ...

    async def check_health(self, timeout: float) -> bool: ...

    async def close(self) -> None: ...


class EngineUnavailable(Exception):
    """The replica could not be reached or failed; another replica may succeed.

    `reason` names the failure for the fallback metric: `unreachable`, `engine_error`
    (a 5xx or an unreadable answer), `rate_limited` (429) or `timeout` (408).
    """

    def __init__(self, message: str, reason: str = "engine_error") -> None:
        super().__init__(message)
        self.reason = reason
