"""How the reference engine writes: one-token pieces, seeded randomness, and the cuts.

Text is built from pieces that are each exactly one cl100k token, so a stream
of N content chunks bills N completion tokens; usage is nevertheless always
`tokens.count(final text)`, which stays true after a stop string cuts a piece
in half. Randomness comes from `random.Random` seeded with a keyed BLAKE2b
digest of the prompt, never from Python's salted `hash()`, so the same request
says the same thing in every process.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from meshgate import tokens
from meshgate.structs import to_dict
from meshgate.v1 import inference_pb2

# Natural answer length in pieces (tokens), the final "." included.
MIN_PIECES = 8
MAX_PIECES = 40
# Chance that a comma follows a word, to make the text look less like a word list.
COMMA_RATE = 0.07

# Common English words; `vocabulary()` keeps those that are one cl100k token
# after a space, which is nearly all of them.
_WORDS = """
the of and to in is was for on that with as by at from it an be this which or are
have has had not but were his her their they all one can more will would there
about into than other its time only some new also when been first after people two
most made may over such like years any these many then them did no just where so
work world could would way between well through back even much own under life state
year should day part each city still might make used both year three same before
while house system here place high during small take good take found long great old
number group since without never another again around last game around children
water home school public power family market company light every today right local
music point story plan open free study change field early area river light stone
value model human local point table room paper voice north south east west order
clear simple quiet quick bright green blue white black red warm cold soft hard fast
slow short small large young happy calm gentle strong brave kind wise rich fair
fresh sound sweet sharp deep wide dark plain whole final basic central common
general major natural normal real single special certain social full true free
build carry bring begin follow grow learn listen move play read run speak stand
start stay turn walk watch write answer explain consider describe improve notice
remember suggest support travel visit wonder create design measure share test
garden window village forest mountain ocean island valley desert bridge road
street station market office library museum castle harbor kitchen table chair
letter picture story message question reason result problem idea method process
project journey language history science nature animal bird horse flower tree
morning evening night summer winter spring autumn moment minute hour week month
friend teacher doctor student driver writer artist farmer sailor captain worker
music song dance game sport team club party meeting dinner lunch coffee bread
apple orange lemon honey salt sugar cheese butter rice fish meat egg milk tea
engine signal network server request token stream channel packet buffer cache
carefully quickly slowly quietly clearly simply really almost always often never
together perhaps already soon later again instead indeed rather quite very
""".split()


# ----------------------------------------------------------- vocabulary ----


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """Words that are one token after a space, and capitalised sentence starters."""

    words: tuple[str, ...]
    starters: tuple[str, ...]


@cache
def vocabulary() -> Vocabulary:
    """Build the vocabulary once; the tokenizer decides which words qualify.

    Only plain ASCII letters are kept: cl100k's pre-tokenizer then cuts
    `Word word word, word.` exactly at the piece boundaries, which is what
    makes the piece count equal the token count.
    """
    enc = tokens.encoding()
    seen: set[str] = set()
    words: list[str] = []
    starters: list[str] = []
    for word in _WORDS:
        if word in seen or not (word.isascii() and word.isalpha()):
            continue
        seen.add(word)
        if len(enc.encode(" " + word)) == 1:
            words.append(word)
        if len(enc.encode(word.capitalize())) == 1:
            starters.append(word.capitalize())
    return Vocabulary(tuple(words), tuple(starters))


def warm_up() -> None:
    """Load the tokenizer and vocabulary so that the first request is not slow."""
    vocabulary()


# ----------------------------------------------------------- randomness ----

_SEED_MASK = (1 << 64) - 1


def stable_digest(data: bytes, purpose: bytes) -> bytes:
    """A digest that is the same in every process, unlike the salted `hash()`."""
    return hashlib.blake2b(data, digest_size=16, person=purpose[:16]).digest()


def seeded_rng(seed: int | None, key: bytes) -> random.Random:
    """A generator determined by the prompt key and, when given, the request seed."""
    value = int.from_bytes(stable_digest(key, b"meshgate-ref"), "big")
    if seed is not None:
        # The marker bit keeps seed=0 distinct from "no seed".
        value ^= ((seed & _SEED_MASK) | (1 << 64)) << 128
    return random.Random(value)


def optional_int(request: Any, field: str) -> int | None:
    """An optional proto field as an int, None when the client left it out."""
    return int(getattr(request, field)) if request.HasField(field) else None


# ------------------------------------------------------------ pieces ----


def natural_pieces(rng: random.Random) -> list[str]:
    """A sentence of 8-40 pieces, each one token: `Word word, word word.`"""
    vocab = vocabulary()
    total = rng.randint(MIN_PIECES, MAX_PIECES)
    pieces = [rng.choice(vocab.starters)]
    words = vocab.words
    # The last slot is the full stop; commas never come first, last or twice in a row.
    while len(pieces) < total - 1:
        if len(pieces) < total - 2 and pieces[-1] != "," and rng.random() < COMMA_RATE:
            pieces.append(",")
        else:
            pieces.append(" " + rng.choice(words))
    pieces.append(".")
    return pieces


def token_pieces(text: str) -> list[str]:
    """Split text into one piece per token; only for ASCII text (JSON is kept ASCII)."""
    enc = tokens.encoding()
    return [enc.decode([t]) for t in enc.encode(text)]


def minimum_length(
    request: inference_pb2.ChatCompletionRequest | inference_pb2.CompletionRequest,
) -> int:
    """vLLM's `min_tokens` and `ignore_eos`, which clients send as extra body fields.

    Honouring them shows that fields meshgate does not model reach the engine.
    """
    extra = to_dict(request.extra) if request.HasField("extra") else {}
    if extra.get("ignore_eos") is True and request.HasField("max_tokens"):
        # One past the cap, so that generation always ends on it: finish_reason "length".
        return int(request.max_tokens) + 1
    minimum = extra.get("min_tokens")
    return int(minimum) if isinstance(minimum, int | float) and minimum > 0 else 0


def at_least(pieces: list[str], rng: random.Random, count: int) -> list[str]:
    """Keep talking, sentence after sentence, until there are `count` pieces."""
    while len(pieces) < count:
        sentence = natural_pieces(rng)
        # " word" is one token where ".Word" might not be: later sentences start with a spaced word.
        sentence[0] = " " + rng.choice(vocabulary().words)
        pieces = pieces + sentence
    return pieces


# ------------------------------------------------------------- limits ----


def earliest_stop(text: str, stop: Sequence[str]) -> int | None:
    """Index of the first occurrence of any non-empty stop string, if any."""
    best: int | None = None
    for s in stop:
        if not s:
            continue
        at = text.find(s)
        if at >= 0 and (best is None or at < best):
            best = at
    return best


def cut_pieces(pieces: Sequence[str], length: int) -> tuple[str, ...]:
    """The pieces covering text[:length]; the last one may be partial."""
    out: list[str] = []
    used = 0
    for piece in pieces:
        if used >= length:
            break
        room = length - used
        out.append(piece if len(piece) <= room else piece[:room])
        used += len(out[-1])
    return tuple(out)


def limit(
    pieces: Sequence[str], max_tokens: int | None, stop: Sequence[str]
) -> tuple[tuple[str, ...], str, str]:
    """Apply max_tokens, then stop strings; returns (pieces, text, finish_reason).

    A stop string found within the tokens that fit wins over "length", as it
    would in a real decoder that checks stops after every token.
    """
    finish = "stop"
    kept = tuple(pieces)
    if max_tokens is not None and len(kept) > max_tokens:
        kept = kept[: max(max_tokens, 0)]
        finish = "length"
    text = "".join(kept)
    at = earliest_stop(text, stop)
    if at is not None:
        kept = cut_pieces(kept, at)
        text = text[:at]
        finish = "stop"
    return kept, text, finish
