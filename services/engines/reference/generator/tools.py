"""Which tool a chat request calls, and the call itself.

A real model decides when to call a tool; the reference engine follows fixed
rules instead, chosen so that an agent loop (call, run the tool, send the
result back, ask again) moves on and ends as it would against OpenAI. A call
counts once it is answered: a "tool" message carries its id (or a legacy
"function" message names the function). Only the current turn counts, the
messages after the last user message, so a new question starts afresh.

* A named function (`{"type": "function", "function": {"name": X}}`): call X,
  every time; the framework ends that loop, as it must against OpenAI.
* "none", or "auto" with no tools: answer in text.
* "auto": call only the tools the last user message names (case-insensitively),
  one per turn in the order of `tools`, each until it is answered; then answer
  in text. A loop that feeds results back ends after one turn per named tool
  plus the answer.
* "required": a call every turn, as OpenAI forces: the least-answered tool,
  the earliest in `tools` on a tie. That calls each tool once, in order, then
  cycles through them again instead of repeating `tools[0]`, so the loop keeps
  making progress until the framework ends it (the OpenAI Agents SDK resets
  tool_choice to "auto" after a call; others stop after a number of turns).
"""

from __future__ import annotations

import random
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from meshgate import tokens
from meshgate.structs import to_dict
from meshgate.v1 import inference_pb2
from services.engines.reference.generator.schema import SchemaFiller, dumps
from services.engines.reference.generator.text import token_pieces

_CALL_ID_ALPHABET = string.ascii_letters + string.digits


class InvalidRequest(ValueError):
    """A request the engine cannot serve; the server turns it into an HTTP 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class ToolCallPlan:
    """One tool call; `argument_pieces` concatenate to `arguments`."""

    id: str
    name: str
    arguments: str
    argument_pieces: tuple[str, ...]


# ------------------------------------------------------------ choice ----


def _message_text(message: inference_pb2.ChatMessage) -> str:
    which = message.WhichOneof("content")
    if which == "text":
        return message.text
    if which == "parts":
        return " ".join(p.text for p in message.parts.parts if p.WhichOneof("part") == "text")
    return ""


def _last_user(messages: Sequence[inference_pb2.ChatMessage]) -> int | None:
    """Index of the last user message, which opens the current turn."""
    for at in range(len(messages) - 1, -1, -1):
        if messages[at].role == "user":
            return at
    return None


def answered_calls(messages: Sequence[inference_pb2.ChatMessage]) -> Counter[str]:
    """How many answered calls of each function `messages` hold.

    An assistant's call counts when a tool message answers its id; a legacy
    "function" message counts for the function it names.
    """
    answered = {m.tool_call_id for m in messages if m.role == "tool" and m.tool_call_id}
    counts: Counter[str] = Counter()
    for message in messages:
        if message.role == "assistant":
            counts.update(call.name for call in message.tool_calls if call.id in answered)
        elif message.role == "function" and message.name:
            counts[message.name] += 1
    return counts


def _auto_tool(
    messages: Sequence[inference_pb2.ChatMessage], tools: Sequence[inference_pb2.Tool]
) -> inference_pb2.Tool | None:
    """With tool_choice "auto": the first tool the last user message names, not yet answered."""
    at = _last_user(messages)
    if at is None:
        return None
    text = _message_text(messages[at]).lower()
    done = answered_calls(messages[at + 1 :])
    for tool in tools:
        name = tool.function.name
        if name.lower() in text and not done[name]:
            return tool
    return None


def _required_tool(
    messages: Sequence[inference_pb2.ChatMessage], tools: Sequence[inference_pb2.Tool]
) -> inference_pb2.Tool:
    """With tool_choice "required": the least-answered tool this turn, the earliest on a tie."""
    at = _last_user(messages)
    done = answered_calls(messages if at is None else messages[at + 1 :])
    # min() keeps the first of equal keys, which is the order of `tools`.
    return min(tools, key=lambda tool: done[tool.function.name])


def pick_tool(request: inference_pb2.ChatCompletionRequest) -> inference_pb2.Tool | None:
    """The tool this request calls, or None to answer in text (the rules are at the top).

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
        return _required_tool(request.messages, tools)
    if mode == "auto":
        return _auto_tool(request.messages, tools) if tools else None
    raise InvalidRequest(f"Invalid tool_choice mode '{mode}'.", param="tool_choice")


# -------------------------------------------------------------- call ----


def tool_call_id(rng: random.Random) -> str:
    """`call_` and 24 letters or digits, like OpenAI's ids."""
    return "call_" + "".join(rng.choices(_CALL_ID_ALPHABET, k=24))


def plan_call(
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
