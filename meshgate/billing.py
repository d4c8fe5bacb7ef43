"""What a request is billed in tokens, when the engine says and when it does not.

One rule for every path (router stream and unary, the HTTP edge, the gRPC
entry), documented in docs/billing.md: the engine's own usage when it sent
one; otherwise the validated prompt count and our count of what was
generated. So an engine that reports nothing (llama.cpp ignores
`include_usage`), or a stream cut short by the client or the engine, is
never served for free.
"""

from __future__ import annotations

from meshgate.v1 import common_pb2, inference_pb2

# OpenAI's `max_tokens` for a legacy completion that sets none, per prompt.
LEGACY_DEFAULT_MAX_TOKENS = 16


def reported(usage: common_pb2.Usage | None) -> bool:
    """The engine sent a count (an all-zero Usage is the proto default, not a count)."""
    return usage is not None and bool(usage.prompt_tokens or usage.completion_tokens)


def billed(
    usage: common_pb2.Usage | None, prompt_tokens: int, generated_tokens: int
) -> common_pb2.Usage:
    """The engine's usage if it reported one, else the validated prompt and what was generated."""
    if usage is not None and reported(usage):
        return usage
    return common_pb2.Usage(prompt_tokens=prompt_tokens, completion_tokens=generated_tokens)


def fragments(chunk: inference_pb2.ChatCompletionChunk | inference_pb2.CompletionChunk) -> int:
    """Generated pieces in a stream chunk: one token each on every engine we know.

    A role-only or finish-only delta carries no text and counts 0.
    """
    count = 0
    for choice in chunk.choices:
        if isinstance(choice, inference_pb2.ChunkChoice):
            delta = choice.delta
            count += bool(delta.content or any(t.arguments for t in delta.tool_calls))
        else:
            count += bool(choice.text)
    return count


class Tally:
    """What a relayed stream has carried, so that every end of it is billed by one rule
    (the router's relay, the HTTP edge and the gRPC entry each keep one)."""

    __slots__ = ("chunks", "generated", "usage")

    def __init__(self) -> None:
        self.chunks = 0
        self.generated = 0
        self.usage: common_pb2.Usage | None = None

    def add(self, chunk: inference_pb2.ChatCompletionChunk | inference_pb2.CompletionChunk) -> None:
        self.chunks += 1
        self.generated += fragments(chunk)
        if chunk.HasField("usage"):
            self.usage = chunk.usage

    def billed(self, prompt_tokens: int) -> common_pb2.Usage:
        """The engine's count if it came; else (client gone, engine failed) what was relayed."""
        return billed(self.usage, prompt_tokens, self.generated)
