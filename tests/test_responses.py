"""`POST /v1/responses` through the real mesh, with openai==1.109.1's `client.responses`.

A Responses body is served as the chat request it translates into, so every answer
here is checked against what chat answers for the same conversation on the
deterministic reference engine: the same text, the same tool call, the same usage.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import RunningMesh

PRO = "meshgate/reference-pro"
MINI = "meshgate/reference-mini"
IRE = "invalid_request_error"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
CHAT_WEATHER = {
    "type": "function",
    "function": {k: v for k, v in WEATHER.items() if k != "type"},
}
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
    "z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def _chat_text(client: openai.OpenAI, messages: list[dict[str, Any]], **fields: Any) -> Any:
    return client.chat.completions.create(model=PRO, messages=messages, **fields)  # type: ignore[call-overload]


def test_string_input_is_answered_as_chat_answers_it(client: openai.OpenAI) -> None:
    response = client.responses.create(model=PRO, input="Hello there")
    chat = _chat_text(client, [{"role": "user", "content": "Hello there"}])
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.model == PRO
    assert response.incomplete_details is None and response.error is None
    assert response.store is False  # type: ignore[attr-defined]
    (item,) = response.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert item.id.startswith("msg_")
    assert response.output_text == chat.choices[0].message.content
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens == chat.usage.prompt_tokens
    assert usage.output_tokens == chat.usage.completion_tokens
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_the_response_repeats_the_request_settings(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=PRO,
        input="Hi",
        instructions="Be brief.",
        temperature=0.5,
        top_p=0.9,
        max_output_tokens=64,
        metadata={"ticket": "42"},
        user="u-1",
        parallel_tool_calls=False,
        store=True,
    )
    assert response.instructions == "Be brief."
    assert response.temperature == 0.5 and response.top_p == 0.9
    assert response.max_output_tokens == 64
    assert response.metadata == {"ticket": "42"}
    assert response.user == "u-1"
    assert response.parallel_tool_calls is False
    assert response.store is False  # type: ignore[attr-defined]  # nothing is ever stored
    assert response.tools == [] and response.tool_choice == "auto"
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "text"


def test_instructions_are_the_system_message(client: openai.OpenAI) -> None:
    response = client.responses.create(model=PRO, input="Hello", instructions="Speak softly.")
    chat = _chat_text(
        client,
        [{"role": "system", "content": "Speak softly."}, {"role": "user", "content": "Hello"}],
    )
    assert response.output_text == chat.choices[0].message.content


def test_items_with_text_and_image_parts(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=PRO,
        input=[
            {"role": "developer", "content": "Describe images."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": PNG, "detail": "low"},
                ],
            },
            {"role": "assistant", "content": "A pixel."},
            {"role": "user", "content": "Are you sure?"},
        ],
    )
    chat = _chat_text(
        client,
        [
            {"role": "developer", "content": "Describe images."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                ],
            },
            {"role": "assistant", "content": "A pixel."},
            {"role": "user", "content": "Are you sure?"},
        ],
    )
    assert response.status == "completed"
    assert response.output_text == chat.choices[0].message.content


def test_function_tool_round_trip(client: openai.OpenAI) -> None:
    question = {"role": "user", "content": "Use get_weather for Paris."}
    first = client.responses.create(model=PRO, input=[question], tools=[WEATHER])  # type: ignore[list-item]
    (call,) = first.output
    assert call.type == "function_call"
    assert call.name == "get_weather" and call.status == "completed"
    assert call.id is not None and call.id.startswith("fc_")
    assert isinstance(json.loads(call.arguments), dict)
    chat = _chat_text(client, [question], tools=[CHAT_WEATHER])
    (chat_call,) = chat.choices[0].message.tool_calls
    assert (call.call_id, call.arguments) == (chat_call.id, chat_call.function.arguments)
    assert first.output_text == ""
    assert first.tools[0].type == "function" and first.tools[0].name == "get_weather"

    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 21}'}
    second = client.responses.create(
        model=PRO,
        input=[question, call.model_dump(exclude_none=True), result],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert second.status == "completed"
    assert [item.type for item in second.output] == ["message"]
    chat_again = _chat_text(
        client,
        [
            question,
            {"role": "assistant", "content": None, "tool_calls": [chat_call.model_dump()]},
            {"role": "tool", "tool_call_id": chat_call.id, "content": '{"temp": 21}'},
        ],
        tools=[CHAT_WEATHER],
    )
    assert second.output_text == chat_again.choices[0].message.content


def test_tool_choice_names_a_function(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=PRO,
        input="Anything",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
    )
    assert [item.type for item in response.output] == ["function_call"]
    assert response.tool_choice.type == "function"  # type: ignore[union-attr]


SCHEMA = {
    "type": "json_schema",
    "name": "city",
    "schema": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["name", "population"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.mark.parametrize("model", [PRO, MINI])
def test_text_format_json_schema(client: openai.OpenAI, model: str) -> None:
    """On a model without json_schema it falls back to json_object, as chat does."""
    response = client.responses.create(model=model, input="A city", text={"format": SCHEMA})  # type: ignore[typeddict-item]
    value = json.loads(response.output_text)
    assert isinstance(value, dict)
    if model == PRO:
        assert set(value) == {"name", "population"}
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"


def test_text_format_json_object(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=PRO, input="Answer in JSON", text={"format": {"type": "json_object"}}
    )
    assert isinstance(json.loads(response.output_text), dict)


def test_max_output_tokens_cuts_as_incomplete(client: openai.OpenAI) -> None:
    story = "Tell me a long story about the sea"
    response = client.responses.create(model=PRO, input=story, max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert response.usage is not None and response.usage.output_tokens == 16
    chat = _chat_text(client, [{"role": "user", "content": story}], max_tokens=16)
    assert response.output_text == chat.choices[0].message.content


# ------------------------------------------------------------------ streaming ----


def test_stream_text_equals_the_non_streaming_text(client: openai.OpenAI) -> None:
    whole = client.responses.create(model=PRO, input="Tell me a story", instructions="Be kind.")
    deltas = []
    with client.responses.stream(
        model=PRO, input="Tell me a story", instructions="Be kind."
    ) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert "".join(deltas) == whole.output_text
    assert final.output_text == whole.output_text
    assert final.status == "completed"
    assert final.usage is not None and whole.usage is not None
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_stream_function_call(client: openai.OpenAI) -> None:
    question = "Use get_weather for Rome."
    whole = client.responses.create(model=PRO, input=question, tools=[WEATHER])  # type: ignore[list-item]
    with client.responses.stream(model=PRO, input=question, tools=[WEATHER]) as stream:  # type: ignore[list-item]
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    (call,) = final.output
    (expected,) = whole.output
    assert call.type == expected.type == "function_call"
    assert (call.name, call.arguments, call.call_id) == (
        expected.name,  # type: ignore[union-attr]
        expected.arguments,  # type: ignore[union-attr]
        expected.call_id,  # type: ignore[union-attr]
    )


def test_stream_cut_by_max_output_tokens_ends_incomplete(client: openai.OpenAI) -> None:
    with client.responses.create(
        model=PRO, input="Tell me a long story about the sea", max_output_tokens=16, stream=True
    ) as stream:
        events = list(stream)
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert [e.sequence_number for e in events] == list(range(len(events)))


# ------------------------------------------------------------------ refusals ----

BUILT_IN = ["web_search", "file_search", "computer_use_preview", "code_interpreter", "mcp"]
REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("previous-response-id", {"previous_response_id": "resp_abc"}, "previous_response_id"),
    ("conversation", {"conversation": "conv_abc"}, "conversation"),
    ("conversation-object", {"conversation": {"id": "conv_abc"}}, "conversation"),
    ("background", {"background": True}, "background"),
    ("prompt-template", {"prompt": {"id": "pmpt_abc"}}, "prompt"),
    *(
        (f"built-in-{kind}", {"tools": [WEATHER, {"type": kind}]}, "tools[1].type")
        for kind in [*BUILT_IN, "image_generation"]
    ),
    ("hosted-tool-choice", {"tool_choice": {"type": "file_search"}}, "tool_choice.type"),
    (
        "item-reference",
        {"input": [{"type": "item_reference", "id": "msg_abc"}]},
        "input[0].type",
    ),
    ("top-logprobs", {"top_logprobs": 2}, "top_logprobs"),
    ("missing-input", {"input": None}, "input"),
    ("max-output-tokens-below-16", {"max_output_tokens": 15}, "max_output_tokens"),
    ("image-on-mini", {"model": MINI, "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": PNG, "detail": "auto"}]}]}, "input[0].content[0]"),
    ("tools-on-mini", {"model": MINI, "tools": [WEATHER]}, "tools"),
    ("bad-part-type", {"input": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
     "input[0].content[0].type"),
    ("unknown-function-choice",
     {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice.name"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "fields", "param"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_over_raw_http(
    http: httpx.Client, mesh: RunningMesh, name: str, fields: dict[str, Any], param: str
) -> None:
    body = {"model": PRO, "input": "hi", **fields}
    response = http.post(
        "/v1/responses", json=body, headers={"Authorization": f"Bearer {mesh.api_key}"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (IRE, param, None)
    assert response.headers["x-ratelimit-limit-requests"]


@pytest.mark.parametrize(
    ("name", "fields", "param"), REFUSALS[:6], ids=[r[0] for r in REFUSALS[:6]]
)
def test_refusals_through_the_sdk(
    client: openai.OpenAI, name: str, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(**{"model": PRO, "input": "hi", **fields})
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.type == IRE and caught.value.code is None


def test_stored_responses_are_refused(client: openai.OpenAI) -> None:
    for call in (
        lambda: client.responses.retrieve("resp_abc"),
        lambda: client.responses.delete("resp_abc"),
        lambda: client.responses.cancel("resp_abc"),
        lambda: client.responses.input_items.list("resp_abc"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        assert caught.value.param == "response_id"
        assert caught.value.type == IRE and caught.value.code is None
        assert "resp_abc" in caught.value.message


def test_a_model_without_chat_is_refused_on_responses(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="bge-m3", input="hi")
    assert caught.value.param == "model"
    assert "/v1/responses" in caught.value.message


def test_unknown_model_is_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="nope", input="hi")
    assert caught.value.code == "model_not_found"


# ------------------------------------------------------------ raw SSE bytes ----


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _frame(kind: str, sequence: int, **fields: object) -> str:
    data = {"type": kind, "sequence_number": sequence, **fields}
    return f"event: {kind}\ndata: {_dumps(data)}\n\n"


def test_stream_bytes_are_the_responses_event_sequence(
    http: httpx.Client, mesh: RunningMesh
) -> None:
    """Every event, its order, its `sequence_number` and OpenAI's `event:`/`data:` framing,
    byte for byte; the text is the reference engine's plan for the translated request."""
    from services.engines.reference import generator
    from services.validation.responses import validate_response

    body = {"model": PRO, "input": "Tell me a story", "instructions": "Be kind.", "stream": True}
    response = http.post(
        "/v1/responses", json=body, headers={"Authorization": f"Bearer {mesh.api_key}"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    raw = response.content.decode()
    plan = generator.plan_chat(validate_response(body).request)
    assert plan.finish_reason == "stop" and plan.pieces

    first = json.loads(raw.split("\n\n", 1)[0].split("\ndata: ", 1)[1])
    started = first["response"]
    assert started["id"].startswith("resp_") and started["status"] == "in_progress"
    assert started["output"] == [] and started["usage"] is None
    assert started["instructions"] == "Be kind." and started["store"] is False
    item_id = json.loads(raw.split("\n\n")[2].split("\ndata: ", 1)[1])["item"]["id"]
    assert item_id.startswith("msg_")

    text = "".join(plan.pieces)
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    item = {"id": item_id, "type": "message", "status": "completed", "content": [part], "role": "assistant"}  # fmt: skip
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    usage = {
        "input_tokens": plan.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": plan.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": plan.prompt_tokens + plan.completion_tokens,
    }
    events = [
        ("response.created", {"response": started}),
        ("response.in_progress", {"response": started}),
        (
            "response.output_item.added",
            {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}},
        ),
        ("response.content_part.added", {**where, "part": {**part, "text": ""}}),
        *(
            ("response.output_text.delta", {**where, "delta": piece, "logprobs": []})
            for piece in plan.pieces
        ),
        ("response.output_text.done", {**where, "text": text, "logprobs": []}),
        ("response.content_part.done", {**where, "part": part}),
        ("response.output_item.done", {"output_index": 0, "item": item}),
        (
            "response.completed",
            {"response": {**started, "status": "completed", "output": [item], "usage": usage}},
        ),
    ]
    expected = "".join(_frame(kind, n, **fields) for n, (kind, fields) in enumerate(events))
    assert raw == expected
    assert "[DONE]" not in raw


def test_stream_bytes_of_a_function_call(http: httpx.Client, mesh: RunningMesh) -> None:
    from services.engines.reference import generator
    from services.validation.responses import validate_response

    body = {"model": PRO, "input": "Use get_weather.", "tools": [WEATHER], "stream": True}
    raw = http.post(
        "/v1/responses", json=body, headers={"Authorization": f"Bearer {mesh.api_key}"}
    ).content.decode()
    plan = generator.plan_chat(validate_response(body).request)
    assert plan.tool_call is not None
    frames = [f.split("\ndata: ", 1) for f in raw.split("\n\n") if f]
    kinds = [kind.removeprefix("event: ") for kind, _ in frames]
    data = [json.loads(d) for _, d in frames]
    assert [d["type"] for d in data] == kinds
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
    deltas = kinds.count("response.function_call_arguments.delta")
    assert deltas >= 1
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * deltas,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, done = data[2]["item"], data[-2]["item"]
    assert added | {"status": "completed", "arguments": done["arguments"]} == done
    assert added["type"] == "function_call" and added["arguments"] == ""
    assert (done["name"], done["arguments"]) == ("get_weather", plan.tool_call.arguments)
    assert done["call_id"] == plan.tool_call.id
    assert "".join(d["delta"] for d in data[3 : 3 + deltas]) == done["arguments"]
    assert data[-3]["arguments"] == done["arguments"]
    assert data[-1]["response"]["output"] == [done]


def test_parse_with_a_pydantic_text_format(client: openai.OpenAI) -> None:
    """The SDK's `responses.parse` sends the model's JSON Schema as text.format json_schema."""
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        population: int

    parsed = client.responses.parse(model=PRO, input="A city", text_format=City)
    assert isinstance(parsed.output_parsed, City)
    assert parsed.output_parsed == City.model_validate_json(parsed.output_text)


def test_a_stream_refused_before_it_starts_is_json_with_its_status(
    http: httpx.Client, mesh: RunningMesh
) -> None:
    """The SDK decides it reads a stream from its own request: the error must be a status."""
    response = http.post(
        "/v1/responses",
        json={"model": "nope", "input": "hi", "stream": True},
        headers={"Authorization": f"Bearer {mesh.api_key}"},
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "model_not_found"
