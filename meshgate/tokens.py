"""Token counting with a real cl100k_base tokenizer.

bpe-openai compiles the ranks into its wheel, so counting works offline.
Message overheads follow OpenAI's published recipe for chat models (3 tokens
per message, 1 per name, 3 to prime the reply), so counts match what a
client's own tiktoken estimate says.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Protocol

from meshgate.v1 import inference_pb2


class _Encoding(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, tokens: list[int]) -> str: ...


@lru_cache(maxsize=1)
def encoding() -> _Encoding:
    import bpe_openai
    from bpe_openai import registry

    enc: _Encoding = bpe_openai.get_encoding("cl100k_base")
    # The registry keeps every rank table it parsed (o200k and voyage3 too, which
    # we never use) after the encoding has made its own copy: dropping them frees
    # ~38 MB in every process that counts tokens.
    for loader in (*registry.ENCODING_CONSTRUCTORS.values(), registry._load_mergeable_ranks):
        cache_clear = getattr(loader, "cache_clear", None)
        if cache_clear is not None:
            cache_clear()
    return enc


# bpe-openai refuses very long strings at once; longer texts are counted in slices.
_SLICE = 100_000


def count(text: str) -> int:
    """Tokens in text (a slice boundary may split a token, so huge texts may count one more)."""
    if not text:
        return 0
    enc = encoding()
    if len(text) <= _SLICE:
        return len(enc.encode(text))
    return sum(len(enc.encode(text[i : i + _SLICE])) for i in range(0, len(text), _SLICE))


PER_MESSAGE = 3
PER_NAME = 1
REPLY_PRIMING = 3
# A fixed charge per image part, as no image is ever decoded here.
PER_IMAGE = 85


def count_messages(messages: Iterable[inference_pb2.ChatMessage]) -> int:
    """Prompt tokens for a chat request, as the engine will bill them."""
    total = REPLY_PRIMING
    for message in messages:
        total += PER_MESSAGE + count(message.role)
        if message.name:
            total += PER_NAME + count(message.name)
        which = message.WhichOneof("content")
        if which == "text":
            total += count(message.text)
        elif which == "parts":
            for part in message.parts.parts:
                kind = part.WhichOneof("part")
                if kind == "text":
                    total += count(part.text)
                elif kind == "refusal":
                    total += count(part.refusal)
                elif kind == "image_url":
                    total += PER_IMAGE
        for call in message.tool_calls:
            total += count(call.name) + count(call.arguments)
    return total
