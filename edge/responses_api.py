"""The Responses API's answers, rendered from the chat completion that served them.

A `POST /v1/responses` body was translated into a chat request by validation;
the engine's chat answer comes back here and is rendered once as the
`response` object (openai-python 1.109.1's `Response`), or, streamed, as the
Responses event sequence in OpenAI's framing: `event: <type>\\ndata: <json>\\n\\n`,
each event carrying its `sequence_number`, with no `[DONE]`.

A chat `finish_reason` of `length` is a response `incomplete` for
`max_output_tokens`; a failure midway is a `response.failed` event.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from meshgate.errors import ApiError
from meshgate.v1 import common_pb2, inference_pb2

# ResponseError.code's values that an ApiError's code may keep; others are server_error.
_ERROR_CODES = frozenset({"server_error", "rate_limit_exceeded"})
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _id(prefix: str) -> str:
    return prefix + secrets.token_hex(24)


def usage(u: common_pb2.Usage) -> dict[str, Any]:
    """ResponseUsage: chat's counts under the Responses API's names."""
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _message_item(item_id: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "content": parts,
        "role": "assistant",
    }


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


class ResponsesApi:
    """One Responses request's answer: its ids, and the settings it repeats (`echo`,
    normalised by validation, copied here as they are)."""

    def __init__(self, echo: dict[str, Any]) -> None:
        self.id = _id("resp_")
        self._echo = echo

    def response(
        self,
        model: str,
        created_at: int,
        status: str,
        output: list[dict[str, Any]],
        used: common_pb2.Usage | None,
        finish_reason: str = "",
        error: ApiError | None = None,
    ) -> dict[str, Any]:
        """The `response` object; `used` is None while it is still in progress."""
        reason = _INCOMPLETE.get(finish_reason) if status == "incomplete" else None
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": created_at,
            "status": status,
            "error": None,
            "incomplete_details": {"reason": reason} if reason else None,
            "model": model,
            "output": output,
            "usage": usage(used) if used is not None else None,
        }
        if error is not None:
            code = error.code if error.code in _ERROR_CODES else "server_error"
            body["error"] = {"code": code, "message": error.message}
        body.update(self._echo)
        return body

    def render(self, completion: inference_pb2.ChatCompletion) -> bytes:
        """The non-streaming answer."""
        choice = completion.choices[0]
        message = choice.message
        status = "incomplete" if choice.finish_reason in _INCOMPLETE else "completed"
        output: list[dict[str, Any]] = []
        parts: list[dict[str, Any]] = []
        if message.HasField("content") and message.content:
            parts.append(_text_part(message.content))
        if message.HasField("refusal"):
            parts.append({"type": "refusal", "refusal": message.refusal})
        if parts:
            output.append(_message_item(_id("msg_"), parts, status))
        output += [
            _call_item(_id("fc_"), call.id, call.name, call.arguments, "completed")
            for call in message.tool_calls
        ]
        body = self.response(
            completion.model,
            completion.created,
            status,
            output,
            completion.usage,
            choice.finish_reason,
        )
        return orjson.dumps(body)

    def events(
        self, first: inference_pb2.ChatCompletionChunk, include_usage: bool
    ) -> ResponseEvents:
        """The renderer of one stream (pipeline's `chunks`); usage always ends a response."""
        return ResponseEvents(self, first)


class ResponseEvents:
    """Turns one chat stream into the Responses event sequence.

    Output items open as their first delta arrives: a message for content and
    refusals (an `output_text` or `refusal` part, a new part when the kind of delta
    changes), a function_call for each tool call. Each part and item closes with its
    `.done` events when the next one opens or the stream ends.
    """

    def __init__(self, api: ResponsesApi, first: inference_pb2.ChatCompletionChunk) -> None:
        self._api = api
        self._model = first.model
        self._created = first.created
        self._sequence = 0
        self._output: list[dict[str, Any]] = []
        self._item: dict[str, Any] | None = None  # the item still receiving deltas
        self._part: dict[str, Any] | None = None  # the open message's part receiving them
        self._calls: dict[int, dict[str, Any]] = {}  # a tool call's chat index -> its item
        self._finish_reason = ""
        self._started = False

    def _index(self, item: dict[str, Any]) -> int:
        return next(i for i, listed in enumerate(self._output) if listed is item)

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = orjson.dumps({"type": kind, "sequence_number": self._sequence, **fields})
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    def _snapshot(self, status: str, used: common_pb2.Usage | None = None, **more: Any) -> Any:
        return self._api.response(
            self._model, self._created, status, self._output, used, self._finish_reason, **more
        )

    def _start(self) -> bytes:
        self._started = True
        return self._event("response.created", response=self._snapshot("in_progress")) + (
            self._event("response.in_progress", response=self._snapshot("in_progress"))
        )

    def _where(self) -> dict[str, Any]:
        """Where the open part is: its item, the item's place in `output`, its own place."""
        assert self._item is not None and self._part is not None
        return {
            "item_id": self._item["id"],
            "output_index": self._index(self._item),
            "content_index": len(self._item["content"]) - 1,
        }

    def _close_part(self) -> bytes:
        part = self._part
        if part is None:
            return b""
        where = self._where()
        self._part = None
        if part["type"] == "refusal":
            done = self._event("response.refusal.done", **where, refusal=part["refusal"])
        else:
            done = self._event("response.output_text.done", **where, text=part["text"], logprobs=[])
        return done + self._event("response.content_part.done", **where, part=part)

    def _close(self, status: str) -> bytes:
        """The `.done` events of the open part and item, which are final from here on."""
        out = self._close_part()
        item, self._item = self._item, None
        if item is None:
            return out
        index = self._index(item)
        item["status"] = status
        if item["type"] == "function_call":
            out += self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=item["arguments"],
            )
        return out + self._event("response.output_item.done", output_index=index, item=item)

    def _open_item(self, item: dict[str, Any]) -> bytes:
        out = self._close("completed")
        self._output.append(item)
        self._item = item
        return out + self._event(
            "response.output_item.added", output_index=len(self._output) - 1, item=item
        )

    def _open_part(self, kind: str) -> bytes:
        """Make the open item a message whose open part is of `kind`."""
        out = b""
        if self._item is None or self._item["type"] != "message":
            out += self._open_item(_message_item(_id("msg_"), [], "in_progress"))
        if self._part is not None and self._part["type"] == kind:
            return out
        out += self._close_part()
        assert self._item is not None
        self._part = _text_part("") if kind == "output_text" else {"type": "refusal", "refusal": ""}
        self._item["content"].append(self._part)
        return out + self._event("response.content_part.added", **self._where(), part=self._part)

    def _text(self, delta: str) -> bytes:
        out = self._open_part("output_text")
        assert self._part is not None
        self._part["text"] += delta
        return out + self._event(
            "response.output_text.delta", **self._where(), delta=delta, logprobs=[]
        )

    def _refusal(self, delta: str) -> bytes:
        out = self._open_part("refusal")
        assert self._part is not None
        self._part["refusal"] += delta
        return out + self._event("response.refusal.delta", **self._where(), delta=delta)

    def _call(self, call: inference_pb2.ToolCallDelta) -> bytes:
        out = b""
        item = self._calls.get(call.index)
        if item is None:
            item = _call_item(_id("fc_"), call.id, call.name, "", "in_progress")
            self._calls[call.index] = item
            out += self._open_item(item)
        if not call.arguments:
            return out
        item["arguments"] += call.arguments
        return out + self._event(
            "response.function_call_arguments.delta",
            item_id=item["id"],
            output_index=self._index(item),
            delta=call.arguments,
        )

    def relay(self, chunk: inference_pb2.ChatCompletionChunk) -> bytes:
        out = b"" if self._started else self._start()
        for choice in chunk.choices[:1]:  # a single choice, as validation allows
            delta = choice.delta
            if delta.content:
                out += self._text(delta.content)
            if delta.refusal:
                out += self._refusal(delta.refusal)
            for call in delta.tool_calls:
                out += self._call(call)
            if choice.finish_reason:
                self._finish_reason = choice.finish_reason
        return out

    def end(self, used: common_pb2.Usage) -> bytes:
        """The last events: the open item's `.done`, then `response.completed` (or
        `response.incomplete` when cut by max_output_tokens), with the billed usage."""
        out = b"" if self._started else self._start()
        status = "incomplete" if self._finish_reason in _INCOMPLETE else "completed"
        out += self._close(status)
        return out + self._event(f"response.{status}", response=self._snapshot(status, used))

    def failed(self, error: ApiError) -> bytes:
        """A failure after the stream began: `response.failed`, and the stream ends."""
        out = b"" if self._started else self._start()
        if self._item is not None:
            self._item["status"] = "incomplete"
        return out + self._event("response.failed", response=self._snapshot("failed", error=error))
