"""The Responses validator as a pure function: a parsed body in, the chat request that serves
it (and the settings the answer repeats) out, or `Invalid` with the body's own param path.

No processes start here; tests/test_responses.py runs the same translation end to end.
"""

from __future__ import annotations

from typing import Any

import pytest

from meshgate.structs import to_dict
from meshgate.v1 import inference_pb2
from services.validation import checks as c
from services.validation.responses import Translated, validate_response

MODEL = "meshgate/reference-pro"
FN = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": True}
RF = inference_pb2.ResponseFormat


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": "hi", **fields}


def roles(translated: Translated) -> list[str]:
    return [m.role for m in translated.request.messages]


def test_a_string_input_is_one_user_message() -> None:
    out = validate_response(body())
    (message,) = out.request.messages
    assert (message.role, message.text) == ("user", "hi")
    assert out.sources == ["input"]
    assert out.echo["store"] is False and out.echo["tool_choice"] == "auto"


def test_instructions_come_first_as_a_system_message() -> None:
    out = validate_response(body(instructions="Be brief."))
    assert roles(out) == ["system", "user"]
    assert out.request.messages[0].text == "Be brief."
    assert out.echo["instructions"] == "Be brief."
    assert out.sources == ["instructions", "input"]


def test_items_become_chat_messages_with_their_paths() -> None:
    items = [
        {"role": "developer", "content": "Rules."},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Look"},
                {"type": "input_image", "image_url": "https://x/y.png", "detail": "high"},
            ],
        },
        # The SDK's own output message, sent back as input (the Agents SDK does this).
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Let me check.", "annotations": []}],
        },
        {"type": "function_call", "call_id": "call_1", "name": "a", "arguments": "{}"},
        {"type": "function_call", "call_id": "call_2", "name": "b", "arguments": '{"x":1}'},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call_output", "call_id": "call_1", "output": "one"},
        {"type": "function_call_output", "call_id": "call_2", "output": "two"},
    ]
    out = validate_response(body(input=items))
    assert roles(out) == ["developer", "user", "assistant", "tool", "tool"]
    user = out.request.messages[1]
    assert [p.WhichOneof("part") for p in user.parts.parts] == ["text", "image_url"]
    assert user.parts.parts[1].image_url.detail == "high"
    assistant = out.request.messages[2]
    assert assistant.text == "Let me check."  # the function calls join the message before them
    assert [(t.id, t.name, t.arguments) for t in assistant.tool_calls] == [
        ("call_1", "a", "{}"),
        ("call_2", "b", '{"x":1}'),
    ]
    assert [(m.tool_call_id, m.text) for m in out.request.messages[3:]] == [
        ("call_1", "one"),
        ("call_2", "two"),
    ]
    assert out.sources == ["input[0]", "input[1]", "input[2]", "input[6]", "input[7]"]


def test_a_function_call_after_a_user_message_opens_an_assistant_message() -> None:
    items = [
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c", "name": "a", "arguments": "{}"},
    ]
    out = validate_response(body(input=items))
    assert roles(out) == ["user", "assistant"]
    assert not out.request.messages[1].HasField("text")


def test_catalog_params_are_located_in_the_body() -> None:
    items = [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x"}]}]
    out = validate_response(body(input=items, instructions="x"))
    assert out.locate("messages[1].content[0]") == "input[0].content[0]"
    assert out.locate("messages") == "input"
    assert out.locate("tools") == "tools"
    assert out.locate(None) is None


def test_settings_translate_and_are_echoed() -> None:
    out = validate_response(
        body(
            temperature=0.2,
            top_p=0.5,
            max_output_tokens=100,
            user="u",
            metadata={"a": "b"},
            tools=[FN],
            tool_choice="required",
            parallel_tool_calls=False,
            text={"format": {"type": "json_object"}, "verbosity": "low"},
            reasoning={"effort": "low"},
            stream=True,
            store=True,
            truncation="auto",
            include=["reasoning.encrypted_content"],
            top_k=5,
            prompt_cache_key="k",
            service_tier="flex",
        )
    )
    request = out.request
    assert (request.temperature, request.top_p, request.max_tokens) == (0.2, 0.5, 100)
    assert request.user == "u" and request.stream and not request.include_usage
    assert request.tool_choice.mode == "required"
    assert request.tools[0].function.name == "get_weather"
    assert request.tools[0].function.strict is True
    assert request.response_format.type == RF.TYPE_JSON_OBJECT
    assert to_dict(request.extra) == {
        "parallel_tool_calls": False,
        "reasoning_effort": "low",
        "top_k": 5,  # an unknown field passes through to the engine, as on chat
        "prompt_cache_key": "k",
        "service_tier": "flex",
    }
    echo = out.echo
    assert echo["tools"] == [
        {
            "type": "function",
            "name": "get_weather",
            "description": None,
            "parameters": {"type": "object"},
            "strict": True,
        }
    ]
    assert echo["text"] == {"format": {"type": "json_object"}, "verbosity": "low"}
    assert echo["metadata"] == {"a": "b"} and echo["parallel_tool_calls"] is False
    assert echo["store"] is False and echo["truncation"] == "auto"
    assert echo["reasoning"] == {"effort": "low", "summary": None}
    assert (echo["prompt_cache_key"], echo["service_tier"]) == ("k", "flex")
    assert echo["safety_identifier"] is None and echo["top_logprobs"] == 0


def test_json_schema_becomes_chats_response_format() -> None:
    fmt = {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True}
    out = validate_response(body(text={"format": fmt}))
    response_format = out.request.response_format
    assert response_format.type == RF.TYPE_JSON_SCHEMA
    assert response_format.json_schema.name == "city"
    assert response_format.json_schema.strict is True
    assert to_dict(response_format.json_schema.schema) == {"type": "object"}
    assert out.echo["text"]["format"] == fmt


def test_allowed_tools_narrows_the_tools() -> None:
    other = {**FN, "name": "other"}
    choice = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "other"}]}  # fmt: skip
    out = validate_response(body(tools=[FN, other], tool_choice=choice))
    assert [t.function.name for t in out.request.tools] == ["other"]
    assert out.request.tool_choice.mode == "auto"
    assert len(out.echo["tools"]) == 2  # the response lists the tools as they were sent


def test_nulls_count_as_omitted() -> None:
    fields = ("instructions", "temperature", "top_p", "max_output_tokens", "tools", "text",
              "previous_response_id", "conversation", "background", "store", "metadata")  # fmt: skip
    out = validate_response(body(**dict.fromkeys(fields)))
    assert roles(out) == ["user"] and not out.request.HasField("max_tokens")


def test_no_tools_with_auto_or_none_tool_choice_is_fine() -> None:
    for mode in ("auto", "none"):
        out = validate_response(body(tool_choice=mode))
        assert not out.request.HasField("tool_choice")
        assert out.echo["tool_choice"] == mode


REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    ("missing-input", {"input": None}, "input", "Missing required parameter: 'input'."),
    ("input-number", {"input": 3}, "input",
     "Invalid type for 'input': expected one of a string or array of objects, but got an integer instead."),
    ("empty-items", {"input": []}, "input",
     "Invalid 'input': empty array. Expected an array with minimum length 1, but got an empty array instead."),
    ("only-reasoning", {"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input",
     "Invalid 'input': it has no message or function call, only reasoning items."),
    ("bad-role", {"input": [{"role": "tool", "content": "x"}]}, "input[0].role",
     "Invalid value: 'tool'. Supported values are: 'user', 'assistant', 'system', and 'developer'."),
    ("bad-item-type", {"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input[0].type",
     "Invalid value: 'computer_call_output'. Supported values are: 'message', 'function_call', and 'function_call_output'."),
    ("item-reference", {"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type",
     "Unsupported parameter: 'input[0].type'. meshgate is stateless: send the item itself instead of a reference to it."),
    ("input-file", {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0].type", "Unsupported content type: 'input_file'. Send text or images."),
    ("image-file-id", {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f", "detail": "auto"}]}]},
     "input[0].content[0].file_id",
     "Unsupported parameter: 'input[0].content[0].file_id'. meshgate is stateless: send the image inline as `image_url`."),
    ("image-bad-url", {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "ftp://x"}]}]},
     "input[0].content[0].image_url",
     "Invalid image URL: 'input[0].content[0].image_url'. Expected a base64-encoded data URL with an image MIME type "
     "(e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got a value without the 'data:' prefix."),
    ("call-without-id", {"input": [{"type": "function_call", "name": "a", "arguments": "{}"}]},
     "input[0].call_id", "Missing required parameter: 'input[0].call_id'."),
    ("output-not-string", {"input": [{"type": "function_call_output", "call_id": "c", "output": 1}]},
     "input[0].output", "Invalid type for 'input[0].output': expected a string, but got an integer instead."),
    ("previous-response", {"previous_response_id": "resp_1"}, "previous_response_id",
     "Unsupported parameter: 'previous_response_id'. meshgate is stateless: send the whole conversation as `input` items."),
    ("background", {"background": True}, "background",
     "Unsupported parameter: 'background'. meshgate is stateless: a response is answered on its request, never stored."),
    ("web-search", {"tools": [{"type": "web_search"}]}, "tools[0].type",
     "Unsupported tool type: 'web_search'. meshgate serves `function` tools only; built-in tools need OpenAI's hosted services."),
    ("unknown-tool", {"tools": [{"type": "robot"}]}, "tools[0].type", None),
    ("chat-shaped-tool", {"tools": [{"type": "function", "function": {"name": "a"}}]}, "tools[0].name",
     "Missing required parameter: 'tools[0].name'."),
    ("required-without-tools", {"tool_choice": "required"}, "tool_choice",
     "Invalid 'tool_choice': 'required' needs 'tools'."),
    ("mcp-choice", {"tool_choice": {"type": "mcp", "server_label": "x"}}, "tool_choice.type",
     "Unsupported tool_choice type: 'mcp'. meshgate serves `function` tools only."),
    ("format-type", {"text": {"format": {"type": "yaml"}}}, "text.format.type",
     "Invalid value: 'yaml'. Supported values are: 'text', 'json_schema', and 'json_object'."),
    ("schema-missing", {"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema",
     "Missing required parameter: 'text.format.schema'."),
    ("max-output-tokens", {"max_output_tokens": 8}, "max_output_tokens",
     "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got 8 instead."),
    ("temperature", {"temperature": 3}, "temperature",
     "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 3 instead."),
    ("metadata-value", {"metadata": {"a": 1}}, "metadata.a",
     "Invalid type for 'metadata.a': expected a string, but got an integer instead."),
    ("too-much-metadata", {"metadata": {str(i): "v" for i in range(17)}}, "metadata",
     "Invalid 'metadata': too many properties. Expected an object with at most 16 properties, but got an object with 17 properties."),
    ("store-type", {"store": "no"}, "store",
     "Invalid type for 'store': expected a boolean, but got a string instead."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "fields", "param", "message"), REFUSED, ids=[r[0] for r in REFUSED]
)
def test_refusals_name_the_field(
    name: str, fields: dict[str, Any], param: str, message: str | None
) -> None:
    with pytest.raises(c.Invalid) as caught:
        validate_response(body(**fields))
    assert caught.value.param == param
    if message is not None:
        assert caught.value.message == message
