"""Server-sent events, byte for byte as OpenAI frames them.

Each event is `data: <json>\\n\\n`; the stream ends with `data: [DONE]\\n\\n`.
With `stream_options.include_usage`, every chunk carries `"usage":null` and one
extra chunk with empty `choices` and the totals comes just before [DONE].
A failure after the first chunk is a `data: {"error": {...}}` event, after
which the stream ends without [DONE].

The common chunk (a single content fragment) is rendered by concatenating a
per-stream prefix, the escaped fragment and a suffix: no dict is built per token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from edge import render
from meshgate.errors import ApiError
from meshgate.v1 import common_pb2, inference_pb2

DONE = b"data: [DONE]\n\n"


def error_event(error: ApiError) -> bytes:
    return b"data: " + orjson.dumps({"error": error.body()}) + b"\n\n"


class _Events:
    """What every stream's events share: id, object, created and model (from its first
    chunk), `"usage": null` on each chunk when usage was asked for, and the usage event."""

    def __init__(
        self,
        first: inference_pb2.ChatCompletionChunk | inference_pb2.CompletionChunk,
        kind: str,
        include_usage: bool,
    ) -> None:
        self._head: dict[str, Any] = {
            "id": first.id,
            "object": kind,
            "created": first.created,
            "model": first.model,
        }
        self._include_usage = include_usage

    def _event(self, choices: list[dict[str, Any]]) -> bytes:
        event: dict[str, Any] = dict(self._head)
        event["choices"] = choices
        if self._include_usage:
            event["usage"] = None
        return b"data: " + orjson.dumps(event) + b"\n\n"

    def usage(self, usage: common_pb2.Usage) -> bytes:
        event: dict[str, Any] = dict(self._head)
        event["choices"] = []
        event["usage"] = render.usage(usage)
        return b"data: " + orjson.dumps(event) + b"\n\n"

    def relay(
        self, chunk: inference_pb2.ChatCompletionChunk | inference_pb2.CompletionChunk
    ) -> bytes:
        """A chunk's event, then the usage event if the chunk has usage and it was asked for."""
        out = self.render(chunk) if chunk.choices else b""  # type: ignore[attr-defined]
        if self._include_usage and chunk.HasField("usage"):
            out += self.usage(chunk.usage)
        return out

    def end(self, usage: common_pb2.Usage) -> bytes:
        """The stream's last event (the usage went out with its chunk)."""
        return DONE

    def failed(self, error: ApiError) -> bytes:
        return error_event(error)


class ChatChunks(_Events):
    """Renders one chat stream's chunks."""

    def __init__(self, first: inference_pb2.ChatCompletionChunk, include_usage: bool) -> None:
        super().__init__(first, "chat.completion.chunk", include_usage)
        head = orjson.dumps(self._head)[:-1]
        self._content_prefix = b"data: " + head + b',"choices":[{"index":0,"delta":{"content":'
        self._content_suffix = b'},"logprobs":null,"finish_reason":null}]' + (
            b',"usage":null}\n\n' if include_usage else b"}\n\n"
        )

    def render(self, chunk: inference_pb2.ChatCompletionChunk) -> bytes:
        choices = chunk.choices
        if len(choices) == 1:
            choice = choices[0]
            delta = choice.delta
            if (
                not choice.finish_reason
                and not delta.role
                and not delta.tool_calls
                and delta.HasField("content")
                and not delta.HasField("refusal")
            ):
                return self._content_prefix + orjson.dumps(delta.content) + self._content_suffix
        return self._render_general(chunk)

    def _render_general(self, chunk: inference_pb2.ChatCompletionChunk) -> bytes:
        return self._event(
            [
                {
                    "index": choice.index,
                    "delta": _delta(choice.delta),
                    "logprobs": None,
                    "finish_reason": choice.finish_reason or None,
                }
                for choice in chunk.choices
            ]
        )


def _delta(delta: inference_pb2.ChoiceDelta) -> dict[str, Any]:
    """Only what this delta adds: role, call ids and names appear once (the SDK concatenates them)."""
    out: dict[str, Any] = {}
    if delta.role:
        out["role"] = delta.role
        out["content"] = delta.content if delta.HasField("content") else None
        out["refusal"] = None
    elif delta.HasField("content"):
        out["content"] = delta.content
    if delta.HasField("refusal"):
        out["refusal"] = delta.refusal
    if delta.tool_calls:
        calls = []
        for call in delta.tool_calls:
            item: dict[str, Any] = {"index": call.index}
            if call.id:
                item["id"] = call.id
                item["type"] = "function"
            function: dict[str, str] = {}
            if call.name:
                function["name"] = call.name
            function["arguments"] = call.arguments
            item["function"] = function
            calls.append(item)
        out["tool_calls"] = calls
    return out


class TextChunks(_Events):
    """Renders one legacy completions stream (`object: text_completion`)."""

    def __init__(self, first: inference_pb2.CompletionChunk, include_usage: bool) -> None:
        super().__init__(first, "text_completion", include_usage)

    def render(self, chunk: inference_pb2.CompletionChunk) -> bytes:
        return self._event(
            [
                {
                    "text": c.text,
                    "index": c.index,
                    "logprobs": None,
                    "finish_reason": c.finish_reason or None,
                }
                for c in chunk.choices
            ]
        )


class EventStream(StreamingResponse):
    """An SSE response that needs no task group per stream.

    Starlette runs each StreamingResponse in an anyio task group that listens for
    the disconnect. Here a plain task waits for it and cancels the upstream call,
    which ends the event iterator (and so the engine's work) at once: the same
    guarantee for less set-up on the time-to-first-token path.
    """

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        headers: dict[str, str],
        cancel: Callable[[], object],
        closed: Callable[[], object],
    ) -> None:
        headers = {**headers, "cache-control": "no-cache", "x-accel-buffering": "no"}
        super().__init__(events, headers=headers, media_type="text/event-stream")
        self._events = events
        self._cancel = cancel
        self._closed = closed
        self._gone = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`closed` runs last, whatever happened: the events' own ending (their finally)
        has run by then if they ever started, and if not, it is the only one."""
        watcher = asyncio.create_task(self._watch(receive))
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not self._gone:  # our own task was cancelled, not the upstream call
                raise
        finally:
            watcher.cancel()
            self._cancel()
            await self._events.aclose()
            self._closed()

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._gone = True
        self._cancel()
