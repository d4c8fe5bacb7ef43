"""The Responses event renderer as a pure function of chat chunks: refusals, parts that
change kind, several tool calls, a cut answer and a failure midway, which the reference
engine does not produce on its own. Byte-exact streams are in tests/test_responses.py."""

from __future__ import annotations

import json
from typing import Any

from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from edge.responses_api import ResponseEvents, ResponsesApi
from meshgate.errors import ApiError
from meshgate.v1 import common_pb2, inference_pb2

Chunk = inference_pb2.ChatCompletionChunk
USAGE = common_pb2.Usage(prompt_tokens=7, completion_tokens=3, cached_tokens=2)
# The SDK's own event union, validated (not constructed): every required field is there.
EVENT = TypeAdapter(ResponseStreamEvent)
# What validation echoes for a bare request (services/validation/responses.py's defaults).
ECHO: dict[str, Any] = {"tools": [], "tool_choice": "auto", "parallel_tool_calls": True}


def _chunk(finish: str = "", **delta: Any) -> Chunk:
    calls = delta.pop("tool_calls", [])
    choice = inference_pb2.ChunkChoice(
        index=0, delta=inference_pb2.ChoiceDelta(**delta), finish_reason=finish
    )
    choice.delta.tool_calls.extend(inference_pb2.ToolCallDelta(**c) for c in calls)
    return Chunk(id="chatcmpl-1", created=123, model="m", choices=[choice])


def _events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for frame in raw.decode().split("\n\n"):
        if frame:
            head, data = frame.split("\ndata: ", 1)
            event = json.loads(data)
            assert head == f"event: {event['type']}"
            EVENT.validate_python(event)
            out.append(event)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


def _run(*chunks: Chunk, error: ApiError | None = None) -> list[dict[str, Any]]:
    stream = ResponseEvents(ResponsesApi(ECHO), chunks[0] if chunks else _chunk())
    raw = b"".join(stream.relay(c) for c in chunks)
    raw += stream.failed(error) if error else stream.end(USAGE)
    return _events(raw)


def test_a_refusal_after_text_is_a_second_part_of_the_same_message() -> None:
    events = _run(
        _chunk(role="assistant", content=""),
        _chunk(content="I "),
        _chunk(refusal="can't "),
        _chunk(refusal="help."),
        _chunk(finish="stop"),
    )
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.content_part.added",
        "response.refusal.delta",
        "response.refusal.delta",
        "response.refusal.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[8]["content_index"] == 1
    assert events[10]["refusal"] == "can't help."
    (item,) = events[-1]["response"]["output"]
    assert [p["type"] for p in item["content"]] == ["output_text", "refusal"]
    assert events[-1]["response"]["usage"] == {
        "input_tokens": 7,
        "input_tokens_details": {"cached_tokens": 2},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 10,
    }


def test_text_then_two_tool_calls_are_three_items() -> None:
    events = _run(
        _chunk(role="assistant", content="Checking."),
        _chunk(tool_calls=[{"index": 0, "id": "call_a", "name": "a", "arguments": ""}]),
        _chunk(tool_calls=[{"index": 0, "arguments": '{"x":'}]),
        _chunk(tool_calls=[{"index": 0, "arguments": "1}"}]),
        _chunk(tool_calls=[{"index": 1, "id": "call_b", "name": "b", "arguments": "{}"}]),
        _chunk(finish="tool_calls"),
    )
    output = events[-1]["response"]["output"]
    assert [(i["type"], i["status"]) for i in output] == [
        ("message", "completed"),
        ("function_call", "completed"),
        ("function_call", "completed"),
    ]
    assert [(i["call_id"], i["name"], i["arguments"]) for i in output[1:]] == [
        ("call_a", "a", '{"x":1}'),
        ("call_b", "b", "{}"),
    ]
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["output_index"], e["arguments"]) for e in done] == [(1, '{"x":1}'), (2, "{}")]
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [e["output_index"] for e in added] == [0, 1, 2]
    assert events[-1]["type"] == "response.completed"


def test_a_cut_answer_ends_incomplete() -> None:
    events = _run(_chunk(role="assistant", content="Once"), _chunk(finish="length"))
    last = events[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["status"] == "incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert last["response"]["output"][0]["status"] == "incomplete"


def test_a_failure_midway_is_response_failed_and_nothing_after() -> None:
    error = ApiError(502, "server_error", "The engine failed.")
    events = _run(_chunk(role="assistant", content="Once"), error=error)
    last = events[-1]
    assert last["type"] == "response.failed"
    assert last["response"]["status"] == "failed"
    assert last["response"]["error"] == {"code": "server_error", "message": "The engine failed."}
    assert last["response"]["output"][0]["status"] == "incomplete"
    assert last["response"]["usage"] is None


def test_an_empty_answer_is_completed_with_no_output() -> None:
    events = _run(_chunk(role="assistant", content=""), _chunk(finish="stop"))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.completed",
    ]
    assert events[-1]["response"]["output"] == []


def test_the_non_streaming_answer_is_the_sdks_response() -> None:
    message = inference_pb2.AssistantMessage(content="Hi", refusal="no")
    message.tool_calls.add(id="call_a", name="a", arguments="{}")
    completion = inference_pb2.ChatCompletion(
        id="chatcmpl-1",
        created=5,
        model="m",
        choices=[inference_pb2.ChatChoice(index=0, message=message, finish_reason="length")],
        usage=USAGE,
    )
    response = Response.model_validate(json.loads(ResponsesApi(ECHO).render(completion)))
    assert response.status == "incomplete" and response.created_at == 5
    assert [item.type for item in response.output] == ["message", "function_call"]
    assert response.output_text == "Hi"
    assert response.usage is not None and response.usage.total_tokens == 10
