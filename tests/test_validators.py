"""The validators as pure functions: a parsed body in, typed protobuf or `Invalid` out.

No processes start here. Every refusal of the end-to-end table (tests/test_validation.py)
that the body alone decides is replayed against the validator with its exact param and
message; the cases the model's catalog entry decides (unknown model, wrong endpoint, tools,
vision, dimensions, context length) stay end to end only. Then come the accepted shapes,
with the typed request they become, and the refusals only a unit test reaches cheaply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from meshgate import tokens
from meshgate.structs import to_dict
from meshgate.v1 import inference_pb2
from services.validation import checks as c
from services.validation.chat import validate_chat
from services.validation.completions import validate_completion
from services.validation.embeddings import validate_embedding
from tests.test_validation import CASES, C, E, T

MODEL = "meshgate/reference-pro"
U = [{"role": "user", "content": "hi"}]
FN = {"type": "function", "function": {"name": "get_weather"}}
RF = inference_pb2.ResponseFormat
VALIDATORS: dict[str, Callable[[dict[str, Any]], Any]] = {
    C: validate_chat,
    T: validate_completion,
    E: validate_embedding,
}

# Cases of the end-to-end table that the model's catalog entry decides, not the body.
CATALOG_CASES = frozenset(
    {
        "unknown-model",
        "tools-on-model-without-tool-use",
        "image-on-model-without-vision",
        "context-length",
        "context-length-prompt",
        "chat-on-embeddings-model",
        "completions-unknown-model",
        "embeddings-dimensions-too-many",
        "embeddings-on-chat-model",
        "embeddings-unknown-model",
    }
)


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": U, **fields}


def msg(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": list(messages), **fields}


def refusal(validate: Callable[[dict[str, Any]], Any], body: dict[str, Any]) -> c.Invalid:
    with pytest.raises(c.Invalid) as info:
        validate(body)
    return info.value


# ------------------------------------------------- the end-to-end table ----

_BODY_CASES = [case for case in CASES if case[0] not in CATALOG_CASES]


@pytest.mark.parametrize(
    ("case", "path", "body", "status", "param", "code", "message"),
    _BODY_CASES,
    ids=[case[0] for case in _BODY_CASES],
)
def test_each_body_refusal_of_the_end_to_end_table_comes_from_the_validator(
    case: str,
    path: str,
    body: Any,
    status: int,
    param: str | None,
    code: str | None,
    message: str,
) -> None:
    assert (status, code) == (400, None)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(c.Invalid) as info:
        VALIDATORS[path](c.parse_body(raw))
    assert (info.value.param, info.value.message) == (param, message)


_CATALOG = [case for case in CASES if case[0] in CATALOG_CASES]


def test_every_catalog_case_is_in_the_end_to_end_table() -> None:
    assert {case[0] for case in _CATALOG} == CATALOG_CASES


@pytest.mark.parametrize(
    ("path", "body"), [case[1:3] for case in _CATALOG], ids=[case[0] for case in _CATALOG]
)
def test_the_catalog_cases_pass_the_body_validators(path: str, body: Any) -> None:
    VALIDATORS[path](c.parse_body(json.dumps(body).encode()))


# ------------------------------------------------------------ checks.py ----


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("x", "a string"),
        (1, "an integer"),
        (1.5, "a number"),
        (True, "a boolean"),
        ([], "an array"),
        ({}, "an object"),
        (None, "null"),
    ],
)
def test_describe_names_json_kinds_as_openai_does(value: object, kind: str) -> None:
    assert c.describe(value) == kind


@pytest.mark.parametrize(
    ("path", "key", "joined"),
    [
        ("", "model", "model"),
        ("messages", 0, "messages[0]"),
        ("messages[0]", "role", "messages[0].role"),
    ],
)
def test_join_builds_bracket_paths(path: str, key: str | int, joined: str) -> None:
    assert c.join(path, key) == joined


def test_invalid_becomes_a_400_invalid_request_error_with_a_null_code() -> None:
    error = c.Invalid("Missing required parameter: 'model'.", "model").to_api_error()
    assert (error.status, error.type, error.message, error.param, error.code) == (
        400,
        "invalid_request_error",
        "Missing required parameter: 'model'.",
        "model",
        None,
    )


def test_parse_body_returns_the_object() -> None:
    assert c.parse_body(b'{"model": "m", "n": 1}') == {"model": "m", "n": 1}


def test_parse_body_refuses_json_nested_deeper_than_protobuf_carries() -> None:
    deep: Any = "x"
    for _ in range(c.MAX_DEPTH):
        deep = [deep]
    c.parse_body(json.dumps({"metadata": deep[0]}).encode())  # exactly MAX_DEPTH levels
    error = refusal(lambda body: c.parse_body(json.dumps(body).encode()), {"metadata": deep})
    path = "metadata" + "[0]" * c.MAX_DEPTH
    assert (error.param, error.message) == (
        path,
        f"Invalid '{path}': nested too deeply. Expected at most 42 levels of arrays and objects.",
    )


def _raises(call: Callable[[], object]) -> tuple[str | None, str]:
    with pytest.raises(c.Invalid) as info:
        call()
    return info.value.param, info.value.message


@pytest.mark.parametrize(
    ("call", "param", "message"),
    [
        (lambda: c.require({"a": None}, "a", "x"), "x.a", "Missing required parameter: 'x.a'."),
        (lambda: c.string(1, "s"), "s", "Invalid type for 's': expected a string, but got an integer instead."),
        (lambda: c.string("", "s", non_empty=True), "s", "Invalid 's': empty string. Expected a non-empty string."),
        (lambda: c.string("abc", "s", max_length=2), "s", "Invalid 's': string too long. Expected a string with maximum length 2, but got a string with length 3 instead."),
        (lambda: c.boolean(0, "b"), "b", "Invalid type for 'b': expected a boolean, but got an integer instead."),
        (lambda: c.integer(True, "i"), "i", "Invalid type for 'i': expected an integer, but got a boolean instead."),
        (lambda: c.integer(1.5, "i"), "i", "Invalid type for 'i': expected an integer, but got a number instead."),
        (lambda: c.integer(2**63, "i"), "i", "Invalid 'i': integer above maximum value. Expected a value <= 9223372036854775807, but got 9223372036854775808 instead."),
        (lambda: c.integer(-1, "i", minimum=0), "i", "Invalid 'i': integer below minimum value. Expected a value >= 0, but got -1 instead."),
        (lambda: c.number("1", "f"), "f", "Invalid type for 'f': expected a number, but got a string instead."),
        (lambda: c.number(0.5, "f", maximum=0.25), "f", "Invalid 'f': decimal above maximum value. Expected a value <= 0.25, but got 0.5 instead."),
        (lambda: c.array({}, "a"), "a", "Invalid type for 'a': expected an array, but got an object instead."),
        (lambda: c.array([], "a", min_length=1), "a", "Invalid 'a': empty array. Expected an array with minimum length 1, but got an empty array instead."),
        (lambda: c.array([1, 2, 3], "a", max_length=2), "a", "Invalid 'a': array too long. Expected an array with maximum length 2, but got an array with length 3 instead."),
        (lambda: c.obj([], "o"), "o", "Invalid type for 'o': expected an object, but got an array instead."),
        (lambda: c.one_of(1, "e", ("a",)), "e", "Invalid type for 'e': expected a string, but got an integer instead."),
        (lambda: c.one_of("z", "e", ("a",)), "e", "Invalid value: 'z'. Supported values are: 'a'."),
        (lambda: c.one_of("z", "e", ("a", "b")), "e", "Invalid value: 'z'. Supported values are: 'a' and 'b'."),
        (lambda: c.one_of("z", "e", ("a", "b", "c")), "e", "Invalid value: 'z'. Supported values are: 'a', 'b', and 'c'."),
        (lambda: c.one_of("PIN" + "x" * 40 + "def", "e", ("a",)), "e", "Invalid value: 'PINxxxxxxxxxxxxxxxxx...xxxxxxxdef'. Supported values are: 'a'."),
        (lambda: c.matches("a b", "n", re.compile(r"^[a-z]+$")), "n", "Invalid 'n': string does not match pattern. Expected a string that matches the pattern '^[a-z]+$'."),
    ],
)  # fmt: skip
def test_each_check_refuses_with_openais_wording(
    call: Callable[[], object], param: str, message: str
) -> None:
    assert _raises(call) == (param, message)


@pytest.mark.parametrize(
    ("call", "value"),
    [
        (lambda: c.require({"a": 0}, "a"), 0),
        (lambda: c.string("", "s"), ""),
        (lambda: c.string("ab", "s", non_empty=True, max_length=2), "ab"),
        (lambda: c.integer(3.0, "i"), 3),
        (lambda: c.integer(-(2**63), "i"), -(2**63)),
        (lambda: c.number(1, "f"), 1.0),
        (lambda: c.array([1], "a", min_length=1, max_length=1), [1]),
        (lambda: c.one_of("b", "e", ("a", "b")), "b"),
    ],
)
def test_each_check_returns_what_it_accepts(call: Callable[[], object], value: object) -> None:
    result = call()
    assert result == value and type(result) is type(value)


def test_sampling_copies_the_four_ranges_and_skips_nulls() -> None:
    out = inference_pb2.ChatCompletionRequest()
    c.sampling(
        {"temperature": 2, "top_p": 0, "presence_penalty": -2, "frequency_penalty": None}, out
    )
    assert (out.temperature, out.top_p, out.presence_penalty) == (2.0, 0.0, -2.0)
    assert not out.HasField("frequency_penalty")


# ------------------------------------------------------ chat: accepted ----


def test_a_minimal_chat_request_sets_nothing_it_was_not_given() -> None:
    out = validate_chat(chat())
    assert out.model == MODEL
    assert [(m.role, m.text) for m in out.messages] == [("user", "hi")]
    for field in (
        "temperature",
        "top_p",
        "max_tokens",
        "seed",
        "presence_penalty",
        "frequency_penalty",
    ):
        assert not out.HasField(field), field
    assert (out.stream, out.include_usage, out.user, list(out.stop)) == (False, False, "", [])
    assert not out.tools and out.tool_choice.WhichOneof("choice") is None
    assert out.response_format.type == RF.TYPE_UNSPECIFIED
    assert not out.HasField("extra")


def test_nulls_count_as_omitted() -> None:
    nulls = dict.fromkeys(
        ("temperature", "top_p", "max_tokens", "stop", "seed", "user", "stream", "stream_options",
         "tools", "tool_choice", "response_format", "n", "logprobs", "top_logprobs"),
    )  # fmt: skip
    assert validate_chat(chat(**nulls)) == validate_chat(chat())


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"role": "system", "content": "s"}, {"role": "system", "text": "s"}),
        ({"role": "developer", "content": "d"}, {"role": "developer", "text": "d"}),
        ({"role": "user", "content": "u", "name": "ann"}, {"role": "user", "text": "u", "name": "ann"}),
        ({"role": "assistant", "content": "a"}, {"role": "assistant", "text": "a"}),
        ({"role": "assistant", "content": None, "refusal": "no"}, {"role": "assistant", "refusal": "no"}),
        ({"role": "tool", "content": "42", "tool_call_id": "call_1"}, {"role": "tool", "text": "42", "tool_call_id": "call_1"}),
        ({"role": "function", "content": "{}", "name": "f"}, {"role": "function", "text": "{}", "name": "f"}),
        ({"role": "function", "content": None, "name": "f"}, {"role": "function", "name": "f"}),
    ],
)  # fmt: skip
def test_every_role_becomes_a_typed_message(
    message: dict[str, Any], expected: dict[str, Any]
) -> None:
    out = validate_chat(msg(message)).messages[0]
    assert out == inference_pb2.ChatMessage(**expected)


def test_an_assistant_turn_with_tool_calls_needs_no_content() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    out = validate_chat(msg({"role": "assistant", "content": None, "tool_calls": [call]}))
    message = out.messages[0]
    assert message.WhichOneof("content") is None
    assert list(message.tool_calls) == [
        inference_pb2.ToolCall(id="call_1", name="f", arguments='{"a":1}')
    ]


def test_message_fields_meshgate_does_not_model_travel_in_extra() -> None:
    legacy = {"name": "f", "arguments": "{}"}
    out = validate_chat(msg({"role": "assistant", "content": None, "function_call": legacy}))
    assert to_dict(out.messages[0].extra) == {"function_call": legacy}


PNG = "data:image/png;base64,iVBORw0KGgo="


@pytest.mark.parametrize(
    ("role", "part", "expected"),
    [
        ("user", {"type": "text", "text": "t"}, inference_pb2.ContentPart(text="t")),
        ("user", {"type": "image_url", "image_url": {"url": "https://a/b.png"}}, inference_pb2.ContentPart(image_url=inference_pb2.ImageUrl(url="https://a/b.png"))),
        ("user", {"type": "image_url", "image_url": {"url": "http://a/b.png", "detail": "low"}}, inference_pb2.ContentPart(image_url=inference_pb2.ImageUrl(url="http://a/b.png", detail="low"))),
        ("user", {"type": "image_url", "image_url": {"url": PNG, "detail": "high"}}, inference_pb2.ContentPart(image_url=inference_pb2.ImageUrl(url=PNG, detail="high"))),
        ("user", {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, inference_pb2.ContentPart(input_audio=inference_pb2.InputAudio(data="AAAA", format="wav"))),
        ("user", {"type": "file", "file": {"file_id": "file-1", "filename": "a.pdf"}}, inference_pb2.ContentPart(file=inference_pb2.FileInput(file_id="file-1", filename="a.pdf"))),
        ("system", {"type": "text", "text": "s"}, inference_pb2.ContentPart(text="s")),
        ("developer", {"type": "text", "text": "d"}, inference_pb2.ContentPart(text="d")),
        ("tool", {"type": "text", "text": "42"}, inference_pb2.ContentPart(text="42")),
        ("assistant", {"type": "refusal", "refusal": "no"}, inference_pb2.ContentPart(refusal="no")),
    ],
)  # fmt: skip
def test_content_parts_become_typed_parts(
    role: str, part: dict[str, Any], expected: inference_pb2.ContentPart
) -> None:
    message = {"role": role, "content": [part], "tool_call_id": "call_1"}
    out = validate_chat(msg(message)).messages[0]
    assert out.WhichOneof("content") == "parts"
    assert list(out.parts.parts) == [expected]


def test_sampling_limits_and_identity_fields() -> None:
    out = validate_chat(
        chat(temperature=0.5, top_p=1, presence_penalty=2, frequency_penalty=-2, max_tokens=5.0,
             seed=-7, user="u-1", n=1, logprobs=False)
    )  # fmt: skip
    assert (out.temperature, out.top_p, out.presence_penalty, out.frequency_penalty) == (
        0.5,
        1,
        2,
        -2,
    )
    assert (out.max_tokens, out.seed, out.user) == (5, -7, "u-1")


def test_max_completion_tokens_is_max_tokens() -> None:
    assert validate_chat(chat(max_completion_tokens=9)).max_tokens == 9


@pytest.mark.parametrize(
    ("stop", "expected"), [("END", ["END"]), (["a", "b", "c", "d"], ["a", "b", "c", "d"]), ([], [])]
)
def test_stop_is_a_string_or_up_to_four_strings(stop: Any, expected: list[str]) -> None:
    assert list(validate_chat(chat(stop=stop)).stop) == expected


@pytest.mark.parametrize(
    ("fields", "stream", "include_usage"),
    [
        ({"stream": True}, True, False),
        ({"stream": True, "stream_options": {"include_usage": True}}, True, True),
        ({"stream": True, "stream_options": {}}, True, False),
        ({"stream": False}, False, False),
    ],
)
def test_stream_and_stream_options(
    fields: dict[str, Any], stream: bool, include_usage: bool
) -> None:
    out = validate_chat(chat(**fields))
    assert (out.stream, out.include_usage) == (stream, include_usage)


def test_a_function_tool_keeps_its_description_parameters_and_strictness() -> None:
    parameters = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    tool = {
        "type": "function",
        "function": {
            "name": "get-weather_2",
            "description": "d",
            "parameters": parameters,
            "strict": True,
        },
    }
    (out,) = validate_chat(chat(tools=[tool])).tools
    assert (out.function.name, out.function.description) == ("get-weather_2", "d")
    assert to_dict(out.function.parameters) == parameters
    assert out.function.HasField("strict") and out.function.strict


def test_a_tool_name_of_sixty_four_characters_is_accepted() -> None:
    name = "a" * 64
    assert (
        validate_chat(chat(tools=[{"type": "function", "function": {"name": name}}]))
        .tools[0]
        .function.name
        == name
    )


@pytest.mark.parametrize("mode", ["none", "auto", "required"])
def test_tool_choice_modes(mode: str) -> None:
    choice = validate_chat(chat(tools=[FN], tool_choice=mode)).tool_choice
    assert (choice.WhichOneof("choice"), choice.mode) == ("mode", mode)


def test_tool_choice_names_a_provided_function() -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    choice = validate_chat(chat(tools=[FN], tool_choice=named)).tool_choice
    assert (choice.WhichOneof("choice"), choice.function_name) == ("function_name", "get_weather")


def test_allowed_tools_narrows_the_tools_and_keeps_the_mode() -> None:
    other = {"type": "function", "function": {"name": "get_time"}}
    allowed = {
        "mode": "required",
        "tools": [{"type": "function", "function": {"name": "get_time"}}],
    }
    out = validate_chat(
        chat(tools=[FN, other], tool_choice={"type": "allowed_tools", "allowed_tools": allowed})
    )
    assert [t.function.name for t in out.tools] == ["get_time"]
    assert out.tool_choice.mode == "required"


@pytest.mark.parametrize(
    ("response_format", "kind"),
    [({"type": "text"}, RF.TYPE_TEXT), ({"type": "json_object"}, RF.TYPE_JSON_OBJECT)],
)
def test_response_format_text_and_json_object(response_format: dict[str, Any], kind: int) -> None:
    out = validate_chat(chat(response_format=response_format)).response_format
    assert out.type == kind and not out.HasField("json_schema")


def test_response_format_json_schema_keeps_its_parts() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    rf = {
        "type": "json_schema",
        "json_schema": {"name": "person", "description": "d", "schema": schema, "strict": False},
    }
    out = validate_chat(chat(response_format=rf)).response_format
    assert out.type == RF.TYPE_JSON_SCHEMA
    assert (out.json_schema.name, out.json_schema.description) == ("person", "d")
    assert to_dict(out.json_schema.schema) == schema
    assert out.json_schema.HasField("strict") and not out.json_schema.strict


def test_fields_meshgate_does_not_model_pass_through_in_extra() -> None:
    out = validate_chat(chat(top_k=5, metadata={"a": "b"}, parallel_tool_calls=False))
    assert to_dict(out.extra) == {"top_k": 5, "metadata": {"a": "b"}, "parallel_tool_calls": False}


# ---------------------------------------------- chat: further refusals ----

NAME_PATTERN = "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."
IMAGE_URL = "Expected a base64-encoded data URL with an image MIME type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got"
NULL_CONTENT = "Invalid value for 'content': expected a string, got null."


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        # OpenAI's wording, as its API returns it
        (chat(tools=[{"type": "function", "function": {"name": "a" * 65}}]), "tools[0].function.name", "Invalid 'tools[0].function.name': string too long. Expected a string with maximum length 64, but got a string with length 65 instead."),
        (chat(tools=[{"type": "function", "function": {"name": ""}}]), "tools[0].function.name", f"Invalid 'tools[0].function.name': string does not match pattern. {NAME_PATTERN}"),
        (chat(tools=[{"type": "function", "function": {"name": "f\n"}}]), "tools[0].function.name", f"Invalid 'tools[0].function.name': string does not match pattern. {NAME_PATTERN}"),
        (chat(tools=[FN, {"type": "function", "function": {"name": "a.b"}}]), "tools[1].function.name", f"Invalid 'tools[1].function.name': string does not match pattern. {NAME_PATTERN}"),
        (chat(response_format={"type": "json_schema", "json_schema": {"name": "my schema"}}), "response_format.json_schema.name", f"Invalid 'response_format.json_schema.name': string does not match pattern. {NAME_PATTERN}"),
        (chat(response_format={"type": "json_schema", "json_schema": {"name": "s" * 65}}), "response_format.json_schema.name", "Invalid 'response_format.json_schema.name': string too long. Expected a string with maximum length 64, but got a string with length 65 instead."),
        (msg({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "iVBORw0KGgo="}}]}), "messages[0].content[0].image_url.url", f"Invalid image URL: 'messages[0].content[0].image_url.url'. {IMAGE_URL} a value without the 'data:' prefix."),
        (msg({"role": "user", "content": None}), "messages[0].content", NULL_CONTENT),
        (msg(U[0], {"role": "tool", "content": None, "tool_call_id": "c"}), "messages[1].content", NULL_CONTENT),
        (msg({"role": "assistant", "content": None}), "messages[0].content", NULL_CONTENT),
        (msg({"role": "user"}, {"role": "user", "content": "x"}), "messages[0].content", "Missing required parameter: 'messages[0].content'."),
        (chat(stream=False, stream_options={"include_usage": True}), "stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled."),
        (chat(stop=["a", "b", "c", "d", "e", "f"]), "stop", "Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array with length 6 instead."),
        (chat(seed=2**63), "seed", "Invalid 'seed': integer above maximum value. Expected a value <= 9223372036854775807, but got 9223372036854775808 instead."),
        (chat(top_logprobs=21), "top_logprobs", "Invalid 'top_logprobs': integer above maximum value. Expected a value <= 20, but got 21 instead."),
        (msg({"role": "a" * 50, "content": "x"}), "messages[0].role", "Invalid value: 'aaaaaaaaaaaaaaaaaaaa...aaaaaaaaaa'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."),
        (msg({"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "custom": {}}]}), "messages[0].tool_calls[0].type", "Invalid value: 'custom'. Supported values are: 'function'."),
        (msg({"role": "assistant", "tool_calls": {"id": "c"}}), "messages[0].tool_calls", "Invalid type for 'messages[0].tool_calls': expected an array, but got an object instead."),
        (msg({"role": "function", "content": [{"type": "text", "text": "x"}], "name": "f"}), "messages[0].content", "Invalid type for 'messages[0].content': expected a string, but got an array instead."),
        (msg({"role": "developer", "content": [{"type": "image_url", "image_url": {"url": "https://a/b.png"}}]}), "messages[0].content[0].type", "Invalid value: 'image_url'. Supported values are: 'text'."),
        (msg({"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "https://a/b.png"}}]}), "messages[0].content[0].type", "Invalid value: 'image_url'. Supported values are: 'text' and 'refusal'."),
        (chat(tools=[FN], tool_choice={"function": {"name": "get_weather"}}), "tool_choice.type", "Missing required parameter: 'tool_choice.type'."),
        (chat(tools=[FN], tool_choice=1), "tool_choice", "Invalid type for 'tool_choice': expected an object, but got an integer instead."),
        (chat(tool_choice="none"), "tool_choice", "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified."),
        (chat(tools=[], tool_choice="auto"), "tool_choice", "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified."),
        # meshgate's own: OpenAI does not make these checks, or the page marks the field "No"
        (msg({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}]}), "messages[0].content[0].image_url.url", f"Invalid image URL: 'messages[0].content[0].image_url.url'. {IMAGE_URL} a value without an image MIME type."),
        (chat(tools=[FN], tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}), "tool_choice.allowed_tools.tools", "Invalid 'tool_choice.allowed_tools.tools': empty array. Expected an array with minimum length 1, but got an empty array instead."),
        (chat(tools=[FN], tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "nope"}}]}}), "tool_choice.allowed_tools.tools[0].function.name", "Invalid value for 'tool_choice.allowed_tools.tools[0].function.name': function 'nope' is not among the provided tools."),
        (chat(logprobs=False, top_logprobs=0), "top_logprobs", "Unsupported parameter: 'top_logprobs' is not supported."),
        (chat(n=5), "n", "Invalid 'n': meshgate returns a single choice; n > 1 is not supported."),
    ],
)  # fmt: skip
def test_chat_refusals(body: dict[str, Any], param: str, message: str) -> None:
    error = refusal(validate_chat, body)
    assert (error.param, error.message) == (param, message)


def test_a_missing_model_is_reported_before_anything_else() -> None:
    error = refusal(validate_chat, {"messages": [], "temperature": 9})
    assert (error.param, error.message) == ("model", "Missing required parameter: 'model'.")


# ----------------------------------------------------------- completions ----


def _ids(text: str) -> list[int]:
    return tokens.encoding().encode(text)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("once", ["once"]),
        ("", [""]),
        (["a", "b"], ["a", "b"]),
        (_ids("hello world"), ["hello world"]),
        ([_ids("one"), _ids("two")], ["one", "two"]),
    ],
    ids=["string", "empty-string", "strings", "token-ids", "lists-of-token-ids"],
)
def test_a_prompt_in_each_of_its_four_shapes(prompt: Any, expected: list[str]) -> None:
    assert list(validate_completion({"model": MODEL, "prompt": prompt}).prompt) == expected


def test_a_completion_request_keeps_its_fields() -> None:
    out = validate_completion(
        {"model": MODEL, "prompt": "p", "max_tokens": 0, "temperature": 1, "stop": "\n", "seed": 3,
         "user": "u", "echo": True, "suffix": "s", "stream": True, "stream_options": {"include_usage": True},
         "n": 1, "best_of": 1}
    )  # fmt: skip
    assert (out.max_tokens, out.temperature, list(out.stop), out.seed, out.user) == (
        0,
        1,
        ["\n"],
        3,
        "u",
    )
    assert (out.echo, out.suffix, out.stream, out.include_usage) == (True, "s", True, True)
    assert to_dict(out.extra) == {"best_of": 1}


def test_an_omitted_max_tokens_is_left_for_the_catalog() -> None:
    assert not validate_completion({"model": MODEL, "prompt": "p"}).HasField("max_tokens")


PROMPT_TYPE = (
    "expected one of a string, array of strings, array of integers, or array of arrays of integers"
)


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"prompt": "p"}, "model", "Missing required parameter: 'model'."),
        ({"model": MODEL, "prompt": []}, "prompt", "Invalid 'prompt': empty array. Expected an array with minimum length 1, but got an empty array instead."),
        ({"model": MODEL, "prompt": [[1], []]}, "prompt[1]", "Invalid 'prompt[1]': empty array. Expected an array with minimum length 1, but got an empty array instead."),
        ({"model": MODEL, "prompt": [True]}, "prompt", f"Invalid type for 'prompt': {PROMPT_TYPE}, but got an array instead."),
        ({"model": MODEL, "prompt": 5}, "prompt", f"Invalid type for 'prompt': {PROMPT_TYPE}, but got an integer instead."),
        ({"model": MODEL, "prompt": [1, -1]}, "prompt[1]", "Invalid 'prompt[1]': integer below minimum value. Expected a value >= 0, but got -1 instead."),
        ({"model": MODEL, "prompt": [[10**9]]}, "prompt[0]", "Invalid 'prompt[0]': contains token ids outside the vocabulary."),
        ({"model": MODEL, "prompt": "p", "max_tokens": -1}, "max_tokens", "Invalid 'max_tokens': integer below minimum value. Expected a value >= 0, but got -1 instead."),
        ({"model": MODEL, "prompt": "p", "suffix": 1}, "suffix", "Invalid type for 'suffix': expected a string, but got an integer instead."),
        ({"model": MODEL, "prompt": "p", "top_p": 2}, "top_p", "Invalid 'top_p': decimal above maximum value. Expected a value <= 1, but got 2 instead."),
        ({"model": MODEL, "prompt": "p", "stream_options": {"include_usage": True}}, "stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled."),
        ({"model": MODEL, "prompt": "p", "logprobs": 6}, "logprobs", "Invalid 'logprobs': integer above maximum value. Expected a value <= 5, but got 6 instead."),
        ({"model": MODEL, "prompt": "p", "logprobs": 0}, "logprobs", "Unsupported parameter: 'logprobs' is not supported."),
        ({"model": MODEL, "prompt": "p", "n": 2}, "n", "Invalid 'n': meshgate returns a single choice per prompt; n > 1 is not supported."),
    ],
)  # fmt: skip
def test_completion_refusals(body: dict[str, Any], param: str, message: str) -> None:
    error = refusal(validate_completion, body)
    assert (error.param, error.message) == (param, message)


# ------------------------------------------------------------ embeddings ----


@pytest.mark.parametrize(
    ("fields", "base64"),
    [({}, False), ({"encoding_format": "float"}, False), ({"encoding_format": "base64"}, True)],
)
def test_encoding_format_omitted_float_or_base64(fields: dict[str, Any], base64: bool) -> None:
    out = validate_embedding({"model": "bge-m3", "input": "a", **fields})
    assert out.base64 is base64


def test_an_embedding_request_keeps_its_fields() -> None:
    out = validate_embedding(
        {"model": "bge-m3", "input": ["a", "b"], "dimensions": 256, "user": "u", "extra_field": 1}
    )
    assert (list(out.input), out.dimensions, out.user) == (["a", "b"], 256, "u")
    assert to_dict(out.extra) == {"extra_field": 1}
    assert not validate_embedding({"model": "bge-m3", "input": "a"}).HasField("dimensions")


def test_embedding_input_may_be_token_ids() -> None:
    out = validate_embedding({"model": "bge-m3", "input": [_ids("one"), _ids("two")]})
    assert list(out.input) == ["one", "two"]


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"model": "bge-m3", "input": "a", "encoding_format": 1}, "encoding_format", "Invalid type for 'encoding_format': expected a string, but got an integer instead."),
        ({"model": "bge-m3", "input": "a", "dimensions": 2**31}, "dimensions", "Invalid 'dimensions': integer above maximum value. Expected a value <= 2147483647, but got 2147483648 instead."),
        ({"model": "bge-m3", "input": "a", "dimensions": "8"}, "dimensions", "Invalid type for 'dimensions': expected an integer, but got a string instead."),
        ({"model": "bge-m3", "input": "a", "user": 1}, "user", "Invalid type for 'user': expected a string, but got an integer instead."),
        ({"model": "", "input": "a"}, "model", "Invalid 'model': empty string. Expected a non-empty string."),
        ({"model": "bge-m3", "input": [""]}, "input[0]", "Invalid 'input[0]': empty string. Expected a non-empty string."),
    ],
)  # fmt: skip
def test_embedding_refusals(body: dict[str, Any], param: str, message: str) -> None:
    error = refusal(validate_embedding, body)
    assert (error.param, error.message) == (param, message)


def test_token_ids_may_be_written_as_whole_floats_as_json_schema_allows() -> None:
    """`602.0` is an integer to JSON Schema (and to the SDK's types); `602.5` is not."""
    whole = validate_completion({"model": "m", "prompt": [602.0, 1]})
    assert list(whole.prompt) == list(
        validate_completion({"model": "m", "prompt": [602, 1]}).prompt
    )
    nested = validate_embedding({"model": "m", "input": [[602.0]]})
    assert list(nested.input) == list(validate_embedding({"model": "m", "input": [[602]]}).input)
    with pytest.raises(c.Invalid) as caught:
        validate_completion({"model": "m", "prompt": [602.5]})
    assert (caught.value.param, caught.value.message) == (
        "prompt[0]",
        "Invalid type for 'prompt[0]': expected an integer, but got a number instead.",
    )
