"""The benchmark's requests, defined once for every leg.

A comparison between the direct path and a gateway is only fair when both
carry the same request, so the HTTP JSON bodies and the EngineService
protobufs are both derived from one `Payload`. The protobufs are what the
validation service and the router would hand the engine for these bodies
(the router only adds `dimensions` for embeddings); the run's preflight checks
that both paths return the same completion text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson

Endpoint = Literal["chat", "chat_stream", "embeddings"]
ENDPOINTS: tuple[Endpoint, ...] = ("chat", "chat_stream", "embeddings")
PATHS: dict[Endpoint, str] = {
    "chat": "/chat/completions",
    "chat_stream": "/chat/completions",
    "embeddings": "/embeddings",
}


@dataclass(frozen=True)
class Payload:
    """What every request of a run asks for; models are the names the gateway knows."""

    chat_model: str = "meshgate/reference-mini"
    embed_model: str = "bge-m3"
    # With this seed the reference engine's answer is long enough to be cut at
    # max_tokens, so every stream carries exactly `max_tokens` content chunks.
    message: str = "Write one sentence about the sea."
    max_tokens: int = 16
    seed: int = 1
    embed_input: str = "Write one sentence about the sea."
    dimensions: int = 1024

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Payload:
        return cls(**raw)

    def json_body(self, endpoint: Endpoint) -> bytes:
        """The OpenAI HTTP body for `endpoint`."""
        if endpoint == "embeddings":
            return orjson.dumps(
                {"model": self.embed_model, "input": self.embed_input, "encoding_format": "base64"}
            )
        body: dict[str, Any] = {
            "model": self.chat_model,
            "messages": [{"role": "user", "content": self.message}],
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }
        if endpoint == "chat_stream":
            body["stream"] = True
        return orjson.dumps(body)

    def engine_request(self, endpoint: Endpoint) -> Any:
        """The EngineService request message for `endpoint` (imports the stubs lazily)."""
        from meshgate.v1 import engine_pb2, inference_pb2

        if endpoint == "embeddings":
            embed = inference_pb2.EmbeddingRequest(
                model=self.embed_model,
                input=[self.embed_input],
                base64=True,
                dimensions=self.dimensions,
            )
            return engine_pb2.EmbedRequest(request=embed)
        chat = inference_pb2.ChatCompletionRequest(
            model=self.chat_model,
            messages=[inference_pb2.ChatMessage(role="user", text=self.message)],
            max_tokens=self.max_tokens,
            seed=self.seed,
            stream=endpoint == "chat_stream",
        )
        if endpoint == "chat_stream":
            return engine_pb2.StreamChatRequest(request=chat)
        return engine_pb2.GenerateChatRequest(request=chat)
