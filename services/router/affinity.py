"""Prefix affinity: which replica recently served a prompt's leading blocks.

An engine with a prompt cache (vLLM's and SGLang's prefix caches, llama.cpp's
slot cache) skips the prefill of a prefix it still holds, so a request whose
prompt starts like a recent one is cheaper where that one went.

The router has the validated request but no tokenizer, so the prompt is cut into
blocks of bytes of the request as typed, in the order a chat template renders it:
the tool definitions, then each message (its role and content, as protobuf
bytes, which are the UTF-8 text and a few bytes of framing). Equal text renders
to equal tokens on the same model, so a shared system prompt yields the same
leading block hashes; 256 bytes are about 64 tokens of English. Each block's hash
covers every block before it (a chain), so one lookup per block finds the longest
prefix seen before. Hashing a 6.6 kB prompt costs about 10 µs.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable

from meshgate.config import AffinityConfig
from meshgate.v1 import inference_pb2


def _chat_text(request: inference_pb2.ChatCompletionRequest) -> Iterable[bytes]:
    """The prompt's parts in the order a chat template renders them: tools, then messages
    (each as its protobuf bytes: role, content and the rest, in one C call)."""
    for tool in request.tools:
        yield tool.SerializeToString(deterministic=True)
    for message in request.messages:
        yield message.SerializeToString(deterministic=True)


def prefix_blocks(
    request: inference_pb2.ChatCompletionRequest | inference_pb2.CompletionRequest,
    block_chars: int,
    max_blocks: int,
) -> tuple[int, ...]:
    """The chained hashes of the prompt's whole leading blocks, at most `max_blocks`.

    A prompt shorter than one block has none: there is no prefix worth a cache.
    Completions with several prompts are hashed on the first (they share a replica).
    """
    if isinstance(request, inference_pb2.ChatCompletionRequest):
        pieces: Iterable[bytes] = _chat_text(request)
    else:
        pieces = (request.prompt[0].encode(),) if request.prompt else ()
    # Blocks of UTF-8 bytes: of characters, near enough, and no decoding to count them.
    limit = block_chars * max_blocks
    text = bytearray()
    for piece in pieces:
        text += piece
        if len(text) >= limit:
            break
    view = memoryview(text)
    # Python's own hash of bytes (SipHash, in C): the table lives in one process, so its
    # per-process seed does no harm, and it costs a fraction of a cryptographic hash.
    chain = 0
    blocks = []
    for start in range(0, min(len(text), limit) - block_chars + 1, block_chars):
        chain = hash((chain, view[start : start + block_chars].tobytes()))
        blocks.append(chain)
    return tuple(blocks)


class AffinityTable:
    """A bounded LRU map of prefix-block hash to the replica that last served it."""

    def __init__(self, config: AffinityConfig) -> None:
        self._size = config.table_size
        self._ttl = config.ttl_s
        self._entries: OrderedDict[int, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, blocks: tuple[int, ...], now: float | None = None) -> dict[str, int]:
        """Each replica key's longest run of the prompt's leading blocks it served recently."""
        now = time.monotonic() if now is None else now
        matched: dict[str, int] = {}
        # Blocks are chained: block i is in the table only if its whole prefix went
        # there, so the first hit from the end is each replica's longest match.
        for i in range(len(blocks) - 1, -1, -1):
            entry = self._entries.get(blocks[i])
            if entry is None:
                continue
            key, at = entry
            if now - at > self._ttl:
                continue
            matched.setdefault(key, i + 1)
        return matched

    def record(self, blocks: tuple[int, ...], key: str, now: float | None = None) -> None:
        """`key` now holds these blocks (its engine will have cached them)."""
        now = time.monotonic() if now is None else now
        for block in blocks:
            self._entries[block] = (key, now)
            self._entries.move_to_end(block)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
