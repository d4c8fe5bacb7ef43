"""Deterministic generation for the reference engine: a fake LLM without weights.

Everything here is pure and synchronous so that the gRPC server can answer a
request in one message or stream it from the same plan, and so that tests can
check the invariants without a network:

* Same request (messages or prompt, plus `seed`) -> same output, in any
  process. Randomness comes from `random.Random` seeded with a keyed BLAKE2b
  digest of the prompt, never from Python's salted `hash()`.
* Text is built from pieces that are each exactly one cl100k token, so a stream
  of N content chunks bills N completion tokens; usage is nevertheless always
  `tokens.count(final text)`, which stays true after a stop string cuts a
  piece in half.
* Tool-call arguments and structured output are filled from the caller's JSON
  Schema, so clients that validate them succeed.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import string
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from meshgate import tokens
from meshgate.structs import integral, to_dict
from meshgate.v1 import inference_pb2

# Natural answer length in pieces (tokens), the final "." included.
MIN_PIECES = 8
MAX_PIECES = 40
# OpenAI's default `max_tokens` for legacy completions.
LEGACY_DEFAULT_MAX_TOKENS = 16
# Vector size when an embeddings request arrives without `dimensions`.
DEFAULT_DIMENSIONS = 1024
# How deep the schema filler follows nested objects, arrays and $refs; recursive
# schemas would otherwise never end.
MAX_SCHEMA_DEPTH = 8
# Chance that a comma follows a word, to make the text look less like a word list.
COMMA_RATE = 0.07

_CALL_ID_ALPHABET = string.ascii_letters + string.digits
_JSON_SEPARATORS = (",", ":")

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


class InvalidRequest(ValueError):
    """A request the engine cannot serve; the server turns it into an HTTP 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# ---------------------------------------------------------------- plans ----


@dataclass(frozen=True, slots=True)
class ToolCallPlan:
    """One tool call; `argument_pieces` concatenate to `arguments`."""

    id: str
    name: str
    arguments: str
    argument_pieces: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ChatPlan:
    """A whole chat answer, ready to be sent in one message or streamed.

    Either `tool_call` is set and `content` is None, or `content` is the text
    and `pieces` concatenate to it exactly.
    """

    content: str | None
    pieces: tuple[str, ...]
    tool_call: ToolCallPlan | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class TextChoicePlan:
    """One legacy completion choice; `pieces` concatenate to `text` (echo included)."""

    index: int
    text: str
    pieces: tuple[str, ...]
    finish_reason: str
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class TextPlan:
    """A whole legacy completion answer, one choice per prompt."""

    choices: tuple[TextChoicePlan, ...]
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class EmbedPlan:
    """Little-endian float32 vectors, one per input, and the prompt token count."""

    vectors: tuple[bytes, ...]
    prompt_tokens: int


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


def chat_key(messages: Iterable[inference_pb2.ChatMessage]) -> bytes:
    """Deterministic bytes for a conversation (map fields sorted)."""
    return b"\x1e".join(m.SerializeToString(deterministic=True) for m in messages)


# ------------------------------------------------------------ text ----


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


# ------------------------------------------------------- schema filler ----


def _property_order(schema: Mapping[str, Any], properties: Mapping[str, Any]) -> list[str]:
    """Required properties in their listed order, then the rest sorted.

    A Struct is a map and loses the author's key order, but `required` is a
    list and keeps it; sorting the rest keeps the output stable across processes.
    """
    order: list[str] = []
    required = schema.get("required")
    if isinstance(required, list):
        order = [r for r in required if isinstance(r, str) and r in properties]
    listed = set(order)
    order.extend(sorted(k for k in properties if k not in listed))
    return order


_STRING_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "user@example.com",
    "uri": "https://example.com",
    "url": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


class SchemaFiller:
    """Makes a JSON value that fits a JSON Schema, choosing words and numbers from rng.

    Covers what tool definitions and structured outputs use in practice: types
    (also as lists), enum/const, properties, items, anyOf/oneOf/allOf, local
    $refs and numeric bounds. Every property is filled, required or not.
    """

    def __init__(self, root: Mapping[str, Any], rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.words = vocabulary().words

    def fill(self, schema: Any, depth: int = 0) -> Any:
        if not isinstance(schema, Mapping):
            return self.word()
        if depth > MAX_SCHEMA_DEPTH:
            return self._empty(schema)
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return self.fill(self._resolve(ref), depth + 1)
        if "const" in schema:
            return integral(schema["const"])
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return integral(enum[0])
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                preferred = [o for o in options if not _is_null(o)] or options
                return self.fill(preferred[0], depth + 1)
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            return self.fill(_merge(schema, all_of), depth + 1)
        kind = _type_of(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema)

    def word(self) -> str:
        return self.rng.choice(self.words)

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}
        node: Any = self.root
        for part in ref[1:].split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or part not in node:
                return {}
            node = node[part]
        return node

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            return {}
        return {
            name: self.fill(properties[name], depth + 1)
            for name in _property_order(schema, properties)
        }

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        items = schema.get("items")
        count = max(1, _int_or(schema.get("minItems"), 1))
        max_items = schema.get("maxItems")
        if isinstance(max_items, (int, float)):
            count = min(count, int(max_items))
        count = min(count, 8)
        if isinstance(items, list):  # tuple form
            return [self.fill(s, depth + 1) for s in items]
        item_schema = items if items is not None else {"type": "string"}
        return [self.fill(item_schema, depth + 1) for _ in range(count)]

    def _integer(self, schema: Mapping[str, Any]) -> int:
        low = _bound(schema, "minimum", "exclusiveMinimum", 1, up=True)
        high = _bound(schema, "maximum", "exclusiveMaximum", low + 99, up=False)
        if high < low:
            high = low
        return self.rng.randint(low, high)

    def _number(self, schema: Mapping[str, Any]) -> float:
        low = _float_or(schema.get("minimum"), 0.0)
        high = _float_or(schema.get("maximum"), low + 100.0)
        if high < low:
            high = low
        # Rounded for readable JSON, then clamped so rounding never leaves the bounds.
        value = round(self.rng.uniform(low, high), 2)
        return float(min(max(value, low), high))

    def _string(self, schema: Mapping[str, Any]) -> str:
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in _STRING_FORMATS:
            return _STRING_FORMATS[fmt]
        text = self.word()
        min_length = _int_or(schema.get("minLength"), 0)
        while len(text) < min_length:
            text += " " + self.word()
        max_length = schema.get("maxLength")
        if isinstance(max_length, (int, float)) and max_length >= 0:
            text = text[: int(max_length)]
        return text

    def _empty(self, schema: Mapping[str, Any]) -> Any:
        kind = _type_of(schema)
        return [] if kind == "array" else {} if kind == "object" else None


def _is_null(schema: Any) -> bool:
    return isinstance(schema, Mapping) and schema.get("type") == "null"


def _merge(schema: Mapping[str, Any], parts: list[Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    properties: dict[str, Any] = dict(merged.get("properties") or {})
    required: list[Any] = list(merged.get("required") or [])
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, Mapping):
                properties.update(value)
            elif key == "required" and isinstance(value, list):
                required.extend(value)
            else:
                merged.setdefault(key, value)
    if properties:
        merged["properties"] = properties
        merged.setdefault("type", "object")
    if required:
        merged["required"] = required
    return merged


def _type_of(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if isinstance(k, str) and k != "null"]
        kind = kinds[0] if kinds else ("null" if "null" in kind else None)
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _float_or(value: Any, default: float) -> float:
    return (
        float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default
    )


def _int_or(value: Any, default: int) -> int:
    return (
        int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default
    )


def _bound(
    schema: Mapping[str, Any], inclusive: str, exclusive: str, default: int, *, up: bool
) -> int:
    """An integer bound from minimum/maximum or their exclusive forms."""
    value = schema.get(inclusive)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return math.ceil(value) if up else math.floor(value)
    value = schema.get(exclusive)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return math.floor(value) + 1 if up else math.ceil(value) - 1
    return default


def dumps(value: Any) -> str:
    """Compact ASCII JSON, as tool arguments and structured output are sent."""
    return json.dumps(value, separators=_JSON_SEPARATORS)


# ------------------------------------------------------------ tools ----


def _message_text(message: inference_pb2.ChatMessage) -> str:
    which = message.WhichOneof("content")
    if which == "text":
        return message.text
    if which == "parts":
        return " ".join(p.text for p in message.parts.parts if p.WhichOneof("part") == "text")
    return ""


def _auto_tool(
    messages: Sequence[inference_pb2.ChatMessage], tools: Sequence[inference_pb2.Tool]
) -> inference_pb2.Tool | None:
    """With tool_choice "auto": the first tool the last user message names.

    Once a tool result follows that user message the model answers in text,
    so an agent loop that feeds results back terminates.
    """
    for message in reversed(messages):
        if message.role == "tool" or message.role == "function":
            return None
        if message.role == "user":
            text = _message_text(message).lower()
            for tool in tools:
                if tool.function.name and tool.function.name.lower() in text:
                    return tool
            return None
    return None


def pick_tool(request: inference_pb2.ChatCompletionRequest) -> inference_pb2.Tool | None:
    """The tool this request calls, or None to answer in text.

    Raises InvalidRequest when tool_choice cannot be honoured.
    """
    tools: list[inference_pb2.Tool] = [t for t in request.tools if t.function.name]
    choice = request.tool_choice.WhichOneof("choice") if request.HasField("tool_choice") else None
    if choice == "function_name":
        wanted = request.tool_choice.function_name
        for tool in tools:
            if tool.function.name == wanted:
                return tool
        raise InvalidRequest(
            f"Tool choice '{wanted}' is not one of the provided tools.", param="tool_choice"
        )
    mode = request.tool_choice.mode if choice == "mode" else "auto"
    if mode == "none":
        return None
    if mode == "required":
        if not tools:
            raise InvalidRequest(
                "tool_choice 'required' needs at least one tool in 'tools'.", param="tool_choice"
            )
        return tools[0]
    if mode == "auto":
        return _auto_tool(request.messages, tools) if tools else None
    raise InvalidRequest(f"Invalid tool_choice mode '{mode}'.", param="tool_choice")


def tool_call_id(rng: random.Random) -> str:
    """`call_` and 24 letters or digits, like OpenAI's ids."""
    return "call_" + "".join(rng.choices(_CALL_ID_ALPHABET, k=24))


def _tool_call(
    tool: inference_pb2.Tool, rng: random.Random, max_tokens: int | None
) -> tuple[ToolCallPlan, str, int]:
    """The call, its finish_reason and its completion tokens (name plus arguments)."""
    call_id = tool_call_id(rng)
    function = tool.function
    schema = to_dict(function.parameters) if function.HasField("parameters") else {}
    args = SchemaFiller(schema, rng).fill(schema) if schema else {}
    if not isinstance(args, dict):
        args = {}
    pieces = token_pieces(dumps(args))
    name_tokens = tokens.count(function.name)
    finish = "tool_calls"
    if max_tokens is not None and name_tokens + len(pieces) > max_tokens:
        pieces = pieces[: max(max_tokens - name_tokens, 0)]
        finish = "length"
    arguments = "".join(pieces)
    plan = ToolCallPlan(call_id, function.name, arguments, tuple(pieces))
    return plan, finish, name_tokens + tokens.count(arguments)


# ------------------------------------------------------------ plans ----


def _optional(request: Any, field: str) -> int | None:
    return int(getattr(request, field)) if request.HasField(field) else None


def _content_pieces(request: inference_pb2.ChatCompletionRequest, rng: random.Random) -> list[str]:
    """The untruncated answer, shaped by response_format."""
    kind = request.response_format.type
    fmt = inference_pb2.ResponseFormat
    if kind == fmt.TYPE_JSON_OBJECT:
        return token_pieces(dumps({"answer": "".join(natural_pieces(rng))}))
    if kind == fmt.TYPE_JSON_SCHEMA:
        js = request.response_format.json_schema
        schema = to_dict(js.schema) if js.HasField("schema") else {}
        value = SchemaFiller(schema, rng).fill(schema) if schema else {}
        if not isinstance(value, dict):
            value = {"answer": value}
        return token_pieces(dumps(value))
    return natural_pieces(rng)


def _minimum_length(
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


def _at_least(pieces: list[str], rng: random.Random, count: int) -> list[str]:
    """Keep talking, sentence after sentence, until there are `count` pieces."""
    while len(pieces) < count:
        sentence = natural_pieces(rng)
        # " word" is one token where ".Word" might not be: later sentences start with a spaced word.
        sentence[0] = " " + rng.choice(vocabulary().words)
        pieces = pieces + sentence
    return pieces


def plan_chat(request: inference_pb2.ChatCompletionRequest) -> ChatPlan:
    """Plan a chat answer: a tool call when tool_choice asks for one, else text."""
    prompt_tokens = tokens.count_messages(request.messages)
    max_tokens = _optional(request, "max_tokens")
    rng = seeded_rng(_optional(request, "seed"), chat_key(request.messages))
    tool = pick_tool(request)
    if tool is not None:
        call, finish, used = _tool_call(tool, rng, max_tokens)
        return ChatPlan(None, (), call, finish, prompt_tokens, used)
    content = _content_pieces(request, rng)
    if request.response_format.type in (0, inference_pb2.ResponseFormat.TYPE_TEXT):
        content = _at_least(content, rng, _minimum_length(request))
    pieces, text, finish = limit(content, max_tokens, request.stop)
    return ChatPlan(text, pieces, None, finish, prompt_tokens, tokens.count(text))


def plan_text(request: inference_pb2.CompletionRequest) -> TextPlan:
    """Plan a legacy completion: one choice per prompt, default max_tokens 16."""
    max_tokens = _optional(request, "max_tokens")
    if max_tokens is None:
        max_tokens = LEGACY_DEFAULT_MAX_TOKENS
    seed = _optional(request, "seed")
    choices: list[TextChoicePlan] = []
    prompt_tokens = 0
    for index, prompt in enumerate(request.prompt):
        prompt_tokens += tokens.count(prompt)
        rng = seeded_rng(seed, prompt.encode())
        content = _at_least(natural_pieces(rng), rng, _minimum_length(request))
        pieces, text, finish = limit(content, max_tokens, request.stop)
        used = tokens.count(text)
        if request.echo and prompt:
            pieces, text = (prompt, *pieces), prompt + text
        choices.append(TextChoicePlan(index, text, pieces, finish, used))
    return TextPlan(tuple(choices), prompt_tokens, sum(c.completion_tokens for c in choices))


# ------------------------------------------------------- embeddings ----

_U32 = "I" if array("I").itemsize == 4 else "L"
_BIG_ENDIAN = sys.byteorder == "big"


def embedding_vector(text: str, dimensions: int) -> bytes:
    """A unit-length vector for text, as little-endian float32 bytes.

    SHAKE-256 of the text gives 4 bytes per component, mapped to [-1, 1);
    a hash instead of a Python RNG keeps 1024 dims well under a millisecond.
    """
    raw = array(
        _U32, hashlib.shake_256(b"meshgate-embed\x00" + text.encode()).digest(4 * dimensions)
    )
    if _BIG_ENDIAN:
        raw.byteswap()
    scale = 2.0 / 4294967296.0
    values = [u * scale - 1.0 for u in raw]
    norm = math.sqrt(math.fsum(v * v for v in values)) or 1.0
    inv = 1.0 / norm
    out = array("f", [v * inv for v in values])
    if _BIG_ENDIAN:
        out.byteswap()
    return out.tobytes()


def embed(request: inference_pb2.EmbeddingRequest) -> EmbedPlan:
    """Vectors of `dimensions` dims (1024 when unset) and the inputs' token count."""
    dims = request.dimensions if request.HasField("dimensions") and request.dimensions > 0 else 0
    dims = dims or DEFAULT_DIMENSIONS
    vectors = tuple(embedding_vector(text, dims) for text in request.input)
    return EmbedPlan(vectors, sum(tokens.count(text) for text in request.input))
