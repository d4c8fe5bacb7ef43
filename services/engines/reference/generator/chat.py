"""Chat answers: a tool call when tool_choice asks for one, else text shaped by response_format."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from meshgate import tokens
from meshgate.structs import to_dict
from meshgate.v1 import inference_pb2
from services.engines.reference.generator.schema import SchemaFiller, dumps
from services.engines.reference.generator.text import (
    at_least,
    limit,
    minimum_length,
    natural_pieces,
    optional_int,
    seeded_rng,
    token_pieces,
)
from services.engines.reference.generator.tools import ToolCallPlan, pick_tool, plan_call


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


def chat_key(messages: Iterable[inference_pb2.ChatMessage]) -> bytes:
    """Deterministic bytes for a conversation (map fields sorted)."""
    return b"\x1e".join(m.SerializeToString(deterministic=True) for m in messages)


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


def plan_chat(request: inference_pb2.ChatCompletionRequest) -> ChatPlan:
    """Plan a chat answer: a tool call when tool_choice asks for one, else text."""
    prompt_tokens = tokens.count_messages(request.messages)
    max_tokens = optional_int(request, "max_tokens")
    rng = seeded_rng(optional_int(request, "seed"), chat_key(request.messages))
    tool = pick_tool(request)
    if tool is not None:
        call, finish, used = plan_call(tool, rng, max_tokens)
        return ChatPlan(None, (), call, finish, prompt_tokens, used)
    content = _content_pieces(request, rng)
    if request.response_format.type in (0, inference_pb2.ResponseFormat.TYPE_TEXT):
        content = at_least(content, rng, minimum_length(request))
    pieces, text, finish = limit(content, max_tokens, request.stop)
    return ChatPlan(text, pieces, None, finish, prompt_tokens, tokens.count(text))
