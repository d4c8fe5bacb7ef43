"""Client mistakes come back as precise 400s (or the catalog's 404), over raw HTTP and the SDK.

Each case asserts the exact status, `type`, `param`, `code` and `message`; the same
table runs through openai==1.109.1 and asserts the exception class, `.param` and the
message in `.body`. tests/test_validators.py calls the validators directly.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import RunningMesh

PRO = "meshgate/reference-pro"
MINI = "meshgate/reference-mini"
EMB = "bge-m3"
U = [{"role": "user", "content": "hi"}]
IRE = "invalid_request_error"
FN = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": PRO, "messages": U, **fields}


def msg(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"model": PRO, "messages": list(messages)}


C, T, E = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"

# OpenAI's first sentence; the rest points at the API reference rather than OpenAI's help center.
UNPARSABLE = (
    "We could not parse the JSON body of your request. The body must be valid JSON encoded as "
    "UTF-8 (see https://platform.openai.com/docs/api-reference)."
)

# (id, path, body, status, param, code, message); type is invalid_request_error throughout.
# Each message is OpenAI's exact wording where OpenAI has one, else meshgate's own (a "No" row
# of the compatibility page, or a check OpenAI does not make).
CASES: list[tuple[str, str, Any, int, str | None, str | None, str]] = [
    # the body itself
    ("not-json", C, b"{oops", 400, None, None, UNPARSABLE),
    ("json-array", C, b"[1]", 400, None, None, "The request body must be a JSON object, but got an array instead."),
    ("json-string", C, b'"hi"', 400, None, None, "The request body must be a JSON object, but got a string instead."),
    ("empty-body", C, b"", 400, None, None, UNPARSABLE),
    ("invalid-utf8", C, b'{"model": "\xff\xfe"}', 400, None, None, UNPARSABLE),
    # required fields
    ("missing-model", C, {"messages": U}, 400, "model", None, "Missing required parameter: 'model'."),
    ("null-model", C, {"model": None, "messages": U}, 400, "model", None, "Missing required parameter: 'model'."),
    ("empty-model", C, {"model": "", "messages": U}, 400, "model", None, "Invalid 'model': empty string. Expected a non-empty string."),
    ("model-int", C, {"model": 3, "messages": U}, 400, "model", None, "Invalid type for 'model': expected a string, but got an integer instead."),
    ("missing-messages", C, {"model": PRO}, 400, "messages", None, "Missing required parameter: 'messages'."),
    ("messages-object", C, {"model": PRO, "messages": {"role": "user"}}, 400, "messages", None, "Invalid type for 'messages': expected an array, but got an object instead."),
    ("messages-empty", C, {"model": PRO, "messages": []}, 400, "messages", None, "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead."),
    # messages
    ("message-string", C, {"model": PRO, "messages": ["hi"]}, 400, "messages[0]", None, "Invalid type for 'messages[0]': expected an object, but got a string instead."),
    ("missing-role", C, msg({"content": "x"}), 400, "messages[0].role", None, "Missing required parameter: 'messages[0].role'."),
    ("bad-role", C, msg({"role": "tooool", "content": "x"}), 400, "messages[0].role", None, "Invalid value: 'tooool'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."),
    ("role-int", C, msg({"role": 1, "content": "x"}), 400, "messages[0].role", None, "Invalid type for 'messages[0].role': expected a string, but got an integer instead."),
    ("user-no-content", C, msg({"role": "user"}), 400, "messages[0].content", None, "Missing required parameter: 'messages[0].content'."),
    ("system-null-content", C, msg({"role": "system", "content": None}), 400, "messages[0].content", None, "Invalid value for 'content': expected a string, got null."),
    ("content-object", C, msg({"role": "user", "content": {}}), 400, "messages[0].content", None, "Invalid type for 'messages[0].content': expected one of a string or array of objects, but got an object instead."),
    ("content-number", C, msg({"role": "user", "content": 5}), 400, "messages[0].content", None, "Invalid type for 'messages[0].content': expected one of a string or array of objects, but got an integer instead."),
    ("content-empty-array", C, msg({"role": "user", "content": []}), 400, "messages[0].content", None, "Invalid 'messages[0].content': empty array. Expected an array with minimum length 1, but got an empty array instead."),
    ("part-not-object", C, msg({"role": "user", "content": ["x"]}), 400, "messages[0].content[0]", None, "Invalid type for 'messages[0].content[0]': expected an object, but got a string instead."),
    ("part-missing-type", C, msg({"role": "user", "content": [{"text": "x"}]}), 400, "messages[0].content[0].type", None, "Missing required parameter: 'messages[0].content[0].type'."),
    ("part-bad-type", C, msg({"role": "user", "content": [{"type": "video", "video": {}}]}), 400, "messages[0].content[0].type", None, "Invalid value: 'video'. Supported values are: 'text', 'image_url', 'input_audio', and 'file'."),
    ("part-text-missing", C, msg({"role": "user", "content": [{"type": "text"}]}), 400, "messages[0].content[0].text", None, "Missing required parameter: 'messages[0].content[0].text'."),
    ("part-text-int", C, msg({"role": "user", "content": [{"type": "text", "text": 1}]}), 400, "messages[0].content[0].text", None, "Invalid type for 'messages[0].content[0].text': expected a string, but got an integer instead."),
    ("system-image-part", C, msg({"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://a/b.png"}}]}), 400, "messages[0].content[0].type", None, "Invalid value: 'image_url'. Supported values are: 'text'."),
    ("image-url-missing", C, msg({"role": "user", "content": [{"type": "image_url"}]}), 400, "messages[0].content[0].image_url", None, "Missing required parameter: 'messages[0].content[0].image_url'."),
    ("image-url-url-missing", C, msg({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}), 400, "messages[0].content[0].image_url.url", None, "Missing required parameter: 'messages[0].content[0].image_url.url'."),
    ("image-url-bad-scheme", C, msg(U[0], {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y"}}]}), 400, "messages[1].content[0].image_url.url", None, "Invalid image URL: 'messages[1].content[0].image_url.url'. Expected a base64-encoded data URL with an image MIME type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got a value without the 'data:' prefix."),
    ("image-detail", C, msg({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://a/b.png", "detail": "ultra"}}]}), 400, "messages[0].content[0].image_url.detail", None, "Invalid value: 'ultra'. Supported values are: 'auto', 'low', and 'high'."),
    ("audio-format", C, msg({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "ogg"}}]}), 400, "messages[0].content[0].input_audio.format", None, "Invalid value: 'ogg'. Supported values are: 'wav' and 'mp3'."),
    ("assistant-refusal-part-in-user", C, msg({"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}), 400, "messages[0].content[0].type", None, "Invalid value: 'refusal'. Supported values are: 'text', 'image_url', 'input_audio', and 'file'."),
    ("tool-missing-call-id", C, msg(U[0], {"role": "tool", "content": "42"}), 400, "messages[1].tool_call_id", None, "Missing required parameter: 'messages[1].tool_call_id'."),
    ("function-missing-name", C, msg({"role": "function", "content": "x"}), 400, "messages[0].name", None, "Missing required parameter: 'messages[0].name'."),
    ("assistant-no-content", C, msg({"role": "assistant"}), 400, "messages[0].content", None, "Missing required parameter: 'messages[0].content'."),
    ("tool-call-missing-id", C, msg({"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}), 400, "messages[0].tool_calls[0].id", None, "Missing required parameter: 'messages[0].tool_calls[0].id'."),
    ("tool-call-args-object", C, msg({"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {}}}]}), 400, "messages[0].tool_calls[0].function.arguments", None, "Invalid type for 'messages[0].tool_calls[0].function.arguments': expected a string, but got an object instead."),
    ("name-int", C, msg({"role": "user", "content": "x", "name": 5}), 400, "messages[0].name", None, "Invalid type for 'messages[0].name': expected a string, but got an integer instead."),
    # sampling and limits
    ("temperature-high", C, chat(temperature=2.5), 400, "temperature", None, "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 2.5 instead."),
    ("temperature-negative", C, chat(temperature=-0.1), 400, "temperature", None, "Invalid 'temperature': decimal below minimum value. Expected a value >= 0, but got -0.1 instead."),
    ("temperature-string", C, chat(temperature="hot"), 400, "temperature", None, "Invalid type for 'temperature': expected a number, but got a string instead."),
    ("temperature-bool", C, chat(temperature=True), 400, "temperature", None, "Invalid type for 'temperature': expected a number, but got a boolean instead."),
    ("top-p-high", C, chat(top_p=1.5), 400, "top_p", None, "Invalid 'top_p': decimal above maximum value. Expected a value <= 1, but got 1.5 instead."),
    ("top-p-negative", C, chat(top_p=-1), 400, "top_p", None, "Invalid 'top_p': decimal below minimum value. Expected a value >= 0, but got -1 instead."),
    ("presence-high", C, chat(presence_penalty=2.1), 400, "presence_penalty", None, "Invalid 'presence_penalty': decimal above maximum value. Expected a value <= 2, but got 2.1 instead."),
    ("presence-low", C, chat(presence_penalty=-3), 400, "presence_penalty", None, "Invalid 'presence_penalty': decimal below minimum value. Expected a value >= -2, but got -3 instead."),
    ("frequency-high", C, chat(frequency_penalty=9), 400, "frequency_penalty", None, "Invalid 'frequency_penalty': decimal above maximum value. Expected a value <= 2, but got 9 instead."),
    ("frequency-string", C, chat(frequency_penalty="x"), 400, "frequency_penalty", None, "Invalid type for 'frequency_penalty': expected a number, but got a string instead."),
    ("max-tokens-string", C, chat(max_tokens="5"), 400, "max_tokens", None, "Invalid type for 'max_tokens': expected an integer, but got a string instead."),
    ("max-tokens-zero", C, chat(max_tokens=0), 400, "max_tokens", None, "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got 0 instead."),
    ("max-tokens-float", C, chat(max_tokens=1.5), 400, "max_tokens", None, "Invalid type for 'max_tokens': expected an integer, but got a number instead."),
    ("max-completion-tokens-negative", C, chat(max_completion_tokens=-1), 400, "max_completion_tokens", None, "Invalid 'max_completion_tokens': integer below minimum value. Expected a value >= 1, but got -1 instead."),
    ("seed-string", C, chat(seed="1"), 400, "seed", None, "Invalid type for 'seed': expected an integer, but got a string instead."),
    ("user-int", C, chat(user=5), 400, "user", None, "Invalid type for 'user': expected a string, but got an integer instead."),
    ("stop-int", C, chat(stop=5), 400, "stop", None, "Invalid type for 'stop': expected one of a string or array of strings, but got an integer instead."),
    ("stop-five", C, chat(stop=["a", "b", "c", "d", "e"]), 400, "stop", None, "Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array with length 5 instead."),
    ("stop-item-int", C, chat(stop=["a", 1]), 400, "stop[1]", None, "Invalid type for 'stop[1]': expected a string, but got an integer instead."),
    # unsupported by the page
    ("n-2", C, chat(n=2), 400, "n", None, "Invalid 'n': meshgate returns a single choice; n > 1 is not supported."),
    ("n-0", C, chat(n=0), 400, "n", None, "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead."),
    ("logprobs-true", C, chat(logprobs=True), 400, "logprobs", None, "Unsupported parameter: 'logprobs' is not supported."),
    ("top-logprobs", C, chat(top_logprobs=2), 400, "top_logprobs", None, "Unsupported parameter: 'top_logprobs' is not supported."),
    ("logprobs-string", C, chat(logprobs="yes"), 400, "logprobs", None, "Invalid type for 'logprobs': expected a boolean, but got a string instead."),
    # streaming
    ("stream-string", C, chat(stream="yes"), 400, "stream", None, "Invalid type for 'stream': expected a boolean, but got a string instead."),
    ("stream-options-without-stream", C, chat(stream_options={"include_usage": True}), 400, "stream_options", None, "The 'stream_options' parameter is only allowed when 'stream' is enabled."),
    ("include-usage-string", C, chat(stream=True, stream_options={"include_usage": "yes"}), 400, "stream_options.include_usage", None, "Invalid type for 'stream_options.include_usage': expected a boolean, but got a string instead."),
    ("stream-options-list", C, chat(stream=True, stream_options=[1]), 400, "stream_options", None, "Invalid type for 'stream_options': expected an object, but got an array instead."),
    # tools
    ("tools-object", C, chat(tools={"type": "function"}), 400, "tools", None, "Invalid type for 'tools': expected an array, but got an object instead."),
    ("tool-type", C, chat(tools=[{"type": "web", "function": {"name": "f"}}]), 400, "tools[0].type", None, "Invalid value: 'web'. Supported values are: 'function'."),
    ("tool-custom", C, chat(tools=[{"type": "custom", "custom": {"name": "f"}}]), 400, "tools[0].type", None, "Invalid value: 'custom'. Supported values are: 'function'."),
    ("tool-missing-function", C, chat(tools=[{"type": "function"}]), 400, "tools[0].function", None, "Missing required parameter: 'tools[0].function'."),
    ("tool-missing-name", C, chat(tools=[{"type": "function", "function": {}}]), 400, "tools[0].function.name", None, "Missing required parameter: 'tools[0].function.name'."),
    ("tool-name-pattern", C, chat(tools=[{"type": "function", "function": {"name": "get weather"}}]), 400, "tools[0].function.name", None, "Invalid 'tools[0].function.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."),
    ("tool-parameters-list", C, chat(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]), 400, "tools[0].function.parameters", None, "Invalid type for 'tools[0].function.parameters': expected an object, but got an array instead."),
    ("tool-choice-without-tools", C, chat(tool_choice="auto"), 400, "tool_choice", None, "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified."),
    ("tool-choice-bad-mode", C, chat(tools=[FN], tool_choice="always"), 400, "tool_choice", None, "Invalid value: 'always'. Supported values are: 'none', 'auto', and 'required'."),
    ("tool-choice-unknown-function", C, chat(tools=[FN], tool_choice={"type": "function", "function": {"name": "nope"}}), 400, "tool_choice.function.name", None, "Invalid value for 'tool_choice.function.name': function 'nope' is not among the provided tools."),
    ("tool-choice-bad-type", C, chat(tools=[FN], tool_choice={"type": "custom", "custom": {"name": "x"}}), 400, "tool_choice.type", None, "Invalid value: 'custom'. Supported values are: 'function' and 'allowed_tools'."),
    ("allowed-tools-bad-mode", C, chat(tools=[FN], tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "none", "tools": []}}), 400, "tool_choice.allowed_tools.mode", None, "Invalid value: 'none'. Supported values are: 'auto' and 'required'."),
    # response_format
    ("response-format-string", C, chat(response_format="json"), 400, "response_format", None, "Invalid type for 'response_format': expected an object, but got a string instead."),
    ("response-format-type", C, chat(response_format={"type": "xml"}), 400, "response_format.type", None, "Invalid value: 'xml'. Supported values are: 'text', 'json_object', and 'json_schema'."),
    ("json-schema-missing", C, chat(response_format={"type": "json_schema"}), 400, "response_format.json_schema", None, "Missing required parameter: 'response_format.json_schema'."),
    ("json-schema-no-name", C, chat(response_format={"type": "json_schema", "json_schema": {"schema": {}}}), 400, "response_format.json_schema.name", None, "Missing required parameter: 'response_format.json_schema.name'."),
    ("json-schema-schema-list", C, chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": []}}), 400, "response_format.json_schema.schema", None, "Invalid type for 'response_format.json_schema.schema': expected an object, but got an array instead."),
    # catalog semantics (router)
    ("unknown-model", C, chat(model="gpt-nope"), 404, None, "model_not_found", "The model `gpt-nope` does not exist or you do not have access to it."),
    ("tools-on-model-without-tool-use", C, chat(model=MINI, tools=[FN]), 400, "tools", None, "The model `meshgate/reference-mini` does not support tools."),
    ("image-on-model-without-vision", C, {"model": MINI, "messages": [U[0], {"role": "user", "content": [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "https://a/b.png"}}]}]}, 400, "messages[1].content[1]", None, "The model `meshgate/reference-mini` does not support image inputs."),
    ("context-length", C, chat(model=MINI, max_tokens=4096), 400, "messages", "context_length_exceeded", "This model's maximum context length is 4096 tokens. However, you requested 4104 tokens (8 in the messages, 4096 in the completion). Please reduce the length of the messages or completion."),
    ("context-length-prompt", C, {"model": MINI, "messages": [{"role": "user", "content": "word " * 5000}]}, 400, "messages", "context_length_exceeded", "This model's maximum context length is 4096 tokens. However, your messages resulted in 5008 tokens. Please reduce the length of the messages."),
    ("chat-on-embeddings-model", C, chat(model=EMB), 400, "model", None, "The model `bge-m3` is an embeddings model and is not supported on /v1/chat/completions."),
    # legacy completions
    ("completions-missing-prompt", T, {"model": MINI}, 400, "prompt", None, "Missing required parameter: 'prompt'."),
    ("completions-prompt-object", T, {"model": MINI, "prompt": {"a": 1}}, 400, "prompt", None, "Invalid type for 'prompt': expected one of a string, array of strings, array of integers, or array of arrays of integers, but got an object instead."),
    ("completions-prompt-mixed", T, {"model": MINI, "prompt": ["a", 1]}, 400, "prompt", None, "Invalid type for 'prompt': expected one of a string, array of strings, array of integers, or array of arrays of integers, but got an array instead."),
    ("completions-max-tokens-string", T, {"model": MINI, "prompt": "a", "max_tokens": "x"}, 400, "max_tokens", None, "Invalid type for 'max_tokens': expected an integer, but got a string instead."),
    ("completions-n", T, {"model": MINI, "prompt": "a", "n": 3}, 400, "n", None, "Invalid 'n': meshgate returns a single choice per prompt; n > 1 is not supported."),
    ("completions-logprobs", T, {"model": MINI, "prompt": "a", "logprobs": 2}, 400, "logprobs", None, "Unsupported parameter: 'logprobs' is not supported."),
    ("completions-echo-string", T, {"model": MINI, "prompt": "a", "echo": "yes"}, 400, "echo", None, "Invalid type for 'echo': expected a boolean, but got a string instead."),
    ("completions-unknown-model", T, {"model": "nope", "prompt": "a"}, 404, None, "model_not_found", "The model `nope` does not exist or you do not have access to it."),
    # embeddings
    ("embeddings-missing-input", E, {"model": EMB}, 400, "input", None, "Missing required parameter: 'input'."),
    ("embeddings-null-encoding", E, {"model": EMB, "input": "a", "encoding_format": None}, 400, "encoding_format", None, "Invalid 'encoding_format': expected 'float' or 'base64', but got null instead. Omit the field to get floats."),
    ("embeddings-bad-encoding", E, {"model": EMB, "input": "a", "encoding_format": "int8"}, 400, "encoding_format", None, "Invalid value: 'int8'. Supported values are: 'float' and 'base64'."),
    ("embeddings-empty-list", E, {"model": EMB, "input": []}, 400, "input", None, "Invalid 'input': empty array. Expected an array with minimum length 1, but got an empty array instead."),
    ("embeddings-empty-string", E, {"model": EMB, "input": ""}, 400, "input", None, "Invalid 'input': empty string. Expected a non-empty string."),
    ("embeddings-empty-item", E, {"model": EMB, "input": ["a", ""]}, 400, "input[1]", None, "Invalid 'input[1]': empty string. Expected a non-empty string."),
    ("embeddings-input-object", E, {"model": EMB, "input": {"text": "a"}}, 400, "input", None, "Invalid type for 'input': expected one of a string, array of strings, array of integers, or array of arrays of integers, but got an object instead."),
    ("embeddings-dimensions-zero", E, {"model": EMB, "input": "a", "dimensions": 0}, 400, "dimensions", None, "Invalid 'dimensions': integer below minimum value. Expected a value >= 1, but got 0 instead."),
    ("embeddings-dimensions-too-many", E, {"model": EMB, "input": "a", "dimensions": 4096}, 400, "dimensions", None, "Invalid 'dimensions': the model `bge-m3` produces at most 1024 dimensions."),
    ("embeddings-on-chat-model", E, {"model": MINI, "input": "a"}, 400, "model", None, "The model `meshgate/reference-mini` is a text model and is not supported on /v1/embeddings."),
    ("embeddings-unknown-model", E, {"model": "nope", "input": "a"}, 404, None, "model_not_found", "The model `nope` does not exist or you do not have access to it."),
]  # fmt: skip


def _ids() -> list[str]:
    return [case[0] for case in CASES]


def test_the_table_is_large_and_unique() -> None:
    assert len(CASES) >= 60
    assert len(set(_ids())) == len(CASES)


@pytest.mark.parametrize(
    ("case", "path", "body", "status", "param", "code", "message"), CASES, ids=_ids()
)
def test_raw_http(
    http: httpx.Client,
    mesh: RunningMesh,
    case: str,
    path: str,
    body: Any,
    status: int,
    param: str | None,
    code: str | None,
    message: str,
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = http.post(
        path,
        content=content,
        headers={"Authorization": f"Bearer {mesh.api_key}", "Content-Type": "application/json"},
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == (IRE, param, code), error
    assert error["message"] == message


_SDK_ERRORS = {400: openai.BadRequestError, 404: openai.NotFoundError}


@pytest.mark.parametrize(
    ("case", "path", "body", "status", "param", "code", "message"),
    [c for c in CASES if not isinstance(c[2], bytes)],
    ids=[c[0] for c in CASES if not isinstance(c[2], bytes)],
)
def test_through_the_sdk(
    client: openai.OpenAI,
    case: str,
    path: str,
    body: Any,
    status: int,
    param: str | None,
    code: str | None,
    message: str,
) -> None:
    with pytest.raises(_SDK_ERRORS[status]) as info:
        client.post(path.removeprefix("/v1"), body=body, cast_to=object)
    assert info.value.status_code == status
    assert info.value.param == param
    assert info.value.code == code
    assert info.value.type == IRE
    assert isinstance(info.value.body, dict) and info.value.body["message"] == message


# ----------------------------------------------------------- good requests ----

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {
                    "type": "string",
                    "description": "The city and state, e.g. San Francisco, CA",
                },
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
PNG_1PX = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c63f8cfc0f01f0005000201e2e6a1d70000000049454e44ae426082"
    )
).decode()


def test_tools_with_tool_choice(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "What's the weather like in Boston today?"}]
    auto = client.chat.completions.create(
        model=PRO, messages=messages, tools=[WEATHER], tool_choice="auto"
    )  # type: ignore[arg-type, list-item]
    assert auto.choices[0].finish_reason == "stop"  # the tool's name is not in the message
    forced = client.chat.completions.create(
        model=PRO, messages=messages, tools=[WEATHER], tool_choice="required"
    )  # type: ignore[arg-type, list-item]
    call = forced.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert forced.choices[0].finish_reason == "tool_calls"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments["location"], str)
    assert arguments.get("unit", "celsius") in ("celsius", "fahrenheit")
    # the conversation continues with the tool's answer
    follow_up = client.chat.completions.create(
        model=PRO,
        messages=[
            *messages,  # type: ignore[list-item]
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 22}'},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert follow_up.choices[0].message.content


def test_allowed_tools_narrows_the_choice(client: openai.OpenAI) -> None:
    other = {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    }
    response = client.chat.completions.create(
        model=PRO,
        messages=U,  # type: ignore[arg-type]
        tools=[WEATHER, other],  # type: ignore[list-item]
        tool_choice={
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": "required",
                "tools": [{"type": "function", "function": {"name": "get_time"}}],
            },
        },  # type: ignore[typeddict-item]
    )
    assert response.choices[0].message.tool_calls[0].function.name == "get_time"  # type: ignore[index, union-attr]


@pytest.mark.parametrize(
    "url",
    [
        f"data:image/png;base64,{PNG_1PX}",
        "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg",
    ],
)
def test_vision_parts(client: openai.OpenAI, url: str) -> None:
    response = client.chat.completions.create(
        model=PRO,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What's in this image?"},
                    {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
                ],
            }
        ],
    )
    assert response.choices[0].message.content
    assert response.usage is not None and response.usage.prompt_tokens > 85  # images are billed


def test_json_schema_on_a_capable_model(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    response = client.chat.completions.create(
        model=PRO,
        messages=U,  # type: ignore[arg-type]
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    data = json.loads(response.choices[0].message.content or "")
    assert (
        isinstance(data["name"], str)
        and isinstance(data["age"], int)
        and isinstance(data["tags"], list)
    )


def test_json_schema_falls_back_to_json_object(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"zzz_only_in_schema": {"type": "integer"}},
        "required": ["zzz_only_in_schema"],
    }
    response = client.chat.completions.create(
        model=MINI,
        messages=U,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    data = json.loads(response.choices[0].message.content or "")
    assert (
        isinstance(data, dict) and "zzz_only_in_schema" not in data
    )  # json_object, not the schema


def test_seed_and_stop(client: openai.OpenAI) -> None:
    base = client.chat.completions.create(model=PRO, messages=U, seed=123)  # type: ignore[arg-type]
    again = client.chat.completions.create(model=PRO, messages=U, seed=123)  # type: ignore[arg-type]
    assert base.choices[0].message.content == again.choices[0].message.content
    text = base.choices[0].message.content or ""
    words = text.split()
    assert len(words) >= 4
    cut = " " + words[2]
    as_string = client.chat.completions.create(model=PRO, messages=U, seed=123, stop=cut)  # type: ignore[arg-type]
    assert as_string.choices[0].message.content == text[: text.index(cut)]
    assert as_string.choices[0].finish_reason == "stop"
    as_list = client.chat.completions.create(
        model=PRO, messages=U, seed=123, stop=["@@never@@", cut]
    )  # type: ignore[arg-type]
    assert as_list.choices[0].message.content == text[: text.index(cut)]


def test_nulls_count_as_omitted(http: httpx.Client, mesh: RunningMesh) -> None:
    body = chat(
        temperature=None,
        top_p=None,
        stop=None,
        max_tokens=None,
        seed=None,
        tools=None,
        n=None,
        logprobs=None,
    )
    response = http.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {mesh.api_key}"}
    )
    assert response.status_code == 200, response.text


def test_unknown_fields_pass_through(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=PRO,
        messages=U,
        extra_body={"top_k": 5, "repetition_penalty": 1.1, "metadata": {"a": "b"}},  # type: ignore[arg-type]
    )
    assert response.choices[0].message.content


def test_organization_and_project_headers_are_ignored(mesh: RunningMesh) -> None:
    with openai.OpenAI(
        base_url=mesh.base_url,
        api_key=mesh.api_key,
        organization="org-x",
        project="proj-y",
        max_retries=0,
    ) as sdk:
        assert sdk.chat.completions.create(model=PRO, messages=U).choices  # type: ignore[arg-type]
