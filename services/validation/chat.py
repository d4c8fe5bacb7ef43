"""`POST /v1/chat/completions` bodies, checked against openai-python 1.109.1's
`CompletionCreateParamsBase` and turned into `meshgate.v1.ChatCompletionRequest`.

JSON null counts as omitted (the SDK sends Python None as null). Fields that
meshgate does not model travel untouched in `extra`.
"""

from __future__ import annotations

import re
from typing import Any

from meshgate.structs import from_dict
from meshgate.v1 import inference_pb2
from services.validation import checks as c

ROLES = ("system", "assistant", "user", "function", "tool", "developer")
# OpenAI checks a name against this pattern and, separately, against a length of at most 64.
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]+$")
NAME_MAX_LENGTH = 64
# OpenAI's own example of an image data URL, quoted in its message for a URL it cannot use.
_DATA_URL_EXAMPLE = "data:image/png;base64,aW1nIGJ5dGVzIGhlcmU="
MODELLED = frozenset(
    {
        "model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop",
        "seed", "user", "stream", "stream_options", "tools", "tool_choice", "response_format", "n",
        "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
    }
)  # fmt: skip
_MESSAGE_FIELDS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "refusal"})
_PART_TYPES = {
    "system": ("text",),
    "developer": ("text",),
    "tool": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
}


def image_part(raw: object, url_path: str) -> inference_pb2.ContentPart:
    """An image part from its URL (https, http or an image data URL): one rule for chat's
    `image_url` parts and the Responses API's `input_image` parts."""
    url = c.string(raw, url_path)
    if not url.startswith(("https://", "http://", "data:image/")):
        got = (
            "a value without an image MIME type"
            if url.startswith("data:")
            else "a value without the 'data:' prefix"
        )
        raise c.Invalid(
            f"Invalid image URL: '{url_path}'. Expected a base64-encoded data URL with an "
            f"image MIME type (e.g. '{_DATA_URL_EXAMPLE}'), but got {got}.",
            url_path,
        )
    out = inference_pb2.ContentPart()
    out.image_url.url = url
    return out


def _part(raw: object, path: str, role: str) -> inference_pb2.ContentPart:
    part = c.obj(raw, path)
    kind = c.one_of(c.require(part, "type", path), c.join(path, "type"), _PART_TYPES[role])
    out = inference_pb2.ContentPart()
    if kind == "text":
        out.text = c.string(c.require(part, "text", path), c.join(path, "text"))
    elif kind == "refusal":
        out.refusal = c.string(c.require(part, "refusal", path), c.join(path, "refusal"))
    elif kind == "image_url":
        image_path = c.join(path, "image_url")
        image = c.obj(c.require(part, "image_url", path), image_path)
        out = image_part(c.require(image, "url", image_path), c.join(image_path, "url"))
        if image.get("detail") is not None:
            out.image_url.detail = c.one_of(
                image["detail"], c.join(image_path, "detail"), ("auto", "low", "high")
            )
    elif kind == "input_audio":
        audio_path = c.join(path, "input_audio")
        audio = c.obj(c.require(part, "input_audio", path), audio_path)
        out.input_audio.data = c.string(
            c.require(audio, "data", audio_path), c.join(audio_path, "data")
        )
        out.input_audio.format = c.one_of(
            c.require(audio, "format", audio_path), c.join(audio_path, "format"), ("wav", "mp3")
        )
    else:
        file_path = c.join(path, "file")
        file = c.obj(c.require(part, "file", path), file_path)
        for key in ("file_data", "file_id", "filename"):
            if file.get(key) is not None:
                setattr(out.file, key, c.string(file[key], c.join(file_path, key)))
    return out


def _tool_call(raw: object, path: str) -> inference_pb2.ToolCall:
    call = c.obj(raw, path)
    c.one_of(c.require(call, "type", path), c.join(path, "type"), ("function",))
    function_path = c.join(path, "function")
    function = c.obj(c.require(call, "function", path), function_path)
    return inference_pb2.ToolCall(
        id=c.string(c.require(call, "id", path), c.join(path, "id")),
        name=c.string(c.require(function, "name", function_path), c.join(function_path, "name")),
        arguments=c.string(
            c.require(function, "arguments", function_path), c.join(function_path, "arguments")
        ),
    )


def _message(raw: object, path: str) -> inference_pb2.ChatMessage:
    message = c.obj(raw, path)
    role = c.one_of(c.require(message, "role", path), c.join(path, "role"), ROLES)
    out = inference_pb2.ChatMessage(role=role)
    content_path = c.join(path, "content")
    content = message.get("content")
    if content is None:
        if role not in ("assistant", "function") or (
            role == "assistant"
            and not message.get("tool_calls")
            and message.get("refusal") is None
            and message.get("function_call") is None
        ):
            if "content" in message:  # OpenAI names the field, not its path, for a null
                raise c.Invalid(
                    "Invalid value for 'content': expected a string, got null.", content_path
                )
            c.missing(content_path)
    elif isinstance(content, str):
        out.text = content
    elif isinstance(content, list) and role != "function":
        parts = c.array(content, content_path, min_length=1)
        out.parts.SetInParent()
        out.parts.parts.extend(_part(p, c.join(content_path, i), role) for i, p in enumerate(parts))
    else:
        expected = "a string" if role == "function" else "one of a string or array of objects"
        c.wrong_type(content_path, expected, content)
    if message.get("name") is not None:
        out.name = c.string(message["name"], c.join(path, "name"))
    elif role == "function":
        c.missing(c.join(path, "name"))
    if role == "tool":
        out.tool_call_id = c.string(
            c.require(message, "tool_call_id", path), c.join(path, "tool_call_id")
        )
    if role == "assistant":
        if message.get("tool_calls") is not None:
            calls_path = c.join(path, "tool_calls")
            calls = c.array(message["tool_calls"], calls_path)
            out.tool_calls.extend(_tool_call(t, c.join(calls_path, i)) for i, t in enumerate(calls))
        if message.get("refusal") is not None:
            out.refusal = c.string(message["refusal"], c.join(path, "refusal"))
    extra = {k: v for k, v in message.items() if k not in _MESSAGE_FIELDS}
    if extra:
        out.extra.CopyFrom(from_dict(extra))
    return out


def function_name(raw: object, path: str) -> str:
    """A function or schema name: OpenAI's pattern, then its length."""
    name = c.matches(c.string(raw, path), path, NAME_PATTERN)
    return c.string(name, path, max_length=NAME_MAX_LENGTH)


def _tool(raw: object, path: str) -> inference_pb2.Tool:
    tool = c.obj(raw, path)
    c.one_of(c.require(tool, "type", path), c.join(path, "type"), ("function",))
    function_path = c.join(path, "function")
    function = c.obj(c.require(tool, "function", path), function_path)
    name_path = c.join(function_path, "name")
    name = function_name(c.require(function, "name", function_path), name_path)
    out = inference_pb2.Tool()
    out.function.name = name
    if function.get("description") is not None:
        out.function.description = c.string(
            function["description"], c.join(function_path, "description")
        )
    if function.get("parameters") is not None:
        out.function.parameters.CopyFrom(
            from_dict(c.obj(function["parameters"], c.join(function_path, "parameters")))
        )
    if function.get("strict") is not None:
        out.function.strict = c.boolean(function["strict"], c.join(function_path, "strict"))
    return out


def _named(tools: list[inference_pb2.Tool], name: str, path: str) -> str:
    if name not in {t.function.name for t in tools}:
        raise c.Invalid(
            f"Invalid value for '{path}': function '{name}' is not among the provided tools.", path
        )
    return name


def _apply_tool_choice(raw: object, out: inference_pb2.ChatCompletionRequest) -> None:
    """Set `out.tool_choice`; `allowed_tools` narrows `out.tools` to the allowed ones."""
    tools = list(out.tools)
    if not tools:
        raise c.Invalid(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            "tool_choice",
        )
    if isinstance(raw, str):
        out.tool_choice.mode = c.one_of(raw, "tool_choice", ("none", "auto", "required"))
        return
    choice = c.obj(raw, "tool_choice")
    kind = c.one_of(
        c.require(choice, "type", "tool_choice"), "tool_choice.type", ("function", "allowed_tools")
    )
    if kind == "function":
        function = c.obj(c.require(choice, "function", "tool_choice"), "tool_choice.function")
        name = c.string(
            c.require(function, "name", "tool_choice.function"), "tool_choice.function.name"
        )
        out.tool_choice.function_name = _named(tools, name, "tool_choice.function.name")
        return
    allowed = c.obj(c.require(choice, "allowed_tools", "tool_choice"), "tool_choice.allowed_tools")
    mode = c.one_of(
        c.require(allowed, "mode", "tool_choice.allowed_tools"),
        "tool_choice.allowed_tools.mode",
        ("auto", "required"),
    )
    listed_path = "tool_choice.allowed_tools.tools"
    listed = c.array(
        c.require(allowed, "tools", "tool_choice.allowed_tools"), listed_path, min_length=1
    )
    names = set()
    for i, item in enumerate(listed):
        path = c.join(listed_path, i)
        entry = c.obj(item, path)
        c.one_of(c.require(entry, "type", path), c.join(path, "type"), ("function",))
        function = c.obj(c.require(entry, "function", path), c.join(path, "function"))
        name_path = c.join(c.join(path, "function"), "name")
        names.add(
            _named(
                tools,
                c.string(c.require(function, "name", c.join(path, "function")), name_path),
                name_path,
            )
        )
    kept = [t for t in tools if t.function.name in names]
    del out.tools[:]
    out.tools.extend(kept)
    out.tool_choice.mode = mode


def _response_format(raw: object) -> inference_pb2.ResponseFormat:
    rf = c.obj(raw, "response_format")
    kind = c.one_of(
        c.require(rf, "type", "response_format"),
        "response_format.type",
        ("text", "json_object", "json_schema"),
    )
    out = inference_pb2.ResponseFormat()
    if kind == "text":
        out.type = inference_pb2.ResponseFormat.TYPE_TEXT
    elif kind == "json_object":
        out.type = inference_pb2.ResponseFormat.TYPE_JSON_OBJECT
    else:
        out.type = inference_pb2.ResponseFormat.TYPE_JSON_SCHEMA
        schema = c.obj(
            c.require(rf, "json_schema", "response_format"), "response_format.json_schema"
        )
        name_path = "response_format.json_schema.name"
        out.json_schema.name = function_name(
            c.require(schema, "name", "response_format.json_schema"), name_path
        )
        if schema.get("description") is not None:
            out.json_schema.description = c.string(
                schema["description"], "response_format.json_schema.description"
            )
        if schema.get("schema") is not None:
            out.json_schema.schema.CopyFrom(
                from_dict(c.obj(schema["schema"], "response_format.json_schema.schema"))
            )
        if schema.get("strict") is not None:
            out.json_schema.strict = c.boolean(
                schema["strict"], "response_format.json_schema.strict"
            )
    return out


def streaming(
    body: dict[str, Any], out: inference_pb2.ChatCompletionRequest | inference_pb2.CompletionRequest
) -> None:
    """`stream` and `stream_options.include_usage`, the same on chat and legacy completions."""
    if body.get("stream") is not None:
        out.stream = c.boolean(body["stream"], "stream")
    if body.get("stream_options") is not None:
        options = c.obj(body["stream_options"], "stream_options")
        if not out.stream:
            c.unsupported(
                "stream_options",
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            )
        if options.get("include_usage") is not None:
            out.include_usage = c.boolean(options["include_usage"], "stream_options.include_usage")


def stop_sequences(raw: object) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list):
        c.wrong_type("stop", "one of a string or array of strings", raw)
    items = c.array(raw, "stop", max_length=4)
    return [c.string(s, c.join("stop", i)) for i, s in enumerate(items)]


def validate_chat(body: dict[str, Any]) -> inference_pb2.ChatCompletionRequest:
    """The typed request, or `checks.Invalid` naming the first offending field."""
    out = inference_pb2.ChatCompletionRequest(
        model=c.string(c.require(body, "model"), "model", non_empty=True)
    )
    messages = c.array(c.require(body, "messages"), "messages", min_length=1)
    out.messages.extend(_message(m, c.join("messages", i)) for i, m in enumerate(messages))

    get = body.get
    c.sampling(body, out)
    for name in ("max_tokens", "max_completion_tokens"):
        if get(name) is not None:
            out.max_tokens = c.integer(body[name], name, minimum=1)
    if get("stop") is not None:
        out.stop.extend(stop_sequences(body["stop"]))
    if get("seed") is not None:
        out.seed = c.integer(body["seed"], "seed")
    if get("user") is not None:
        out.user = c.string(body["user"], "user")
    if get("n") is not None and c.integer(body["n"], "n", minimum=1) > 1:
        c.unsupported("n", "Invalid 'n': meshgate returns a single choice; n > 1 is not supported.")
    if get("logprobs") is not None and c.boolean(body["logprobs"], "logprobs"):
        c.unsupported("logprobs", "Unsupported parameter: 'logprobs' is not supported.")
    if get("top_logprobs") is not None:
        c.integer(body["top_logprobs"], "top_logprobs", minimum=0, maximum=20)
        c.unsupported("top_logprobs", "Unsupported parameter: 'top_logprobs' is not supported.")
    streaming(body, out)
    if get("tools") is not None:
        tools = c.array(body["tools"], "tools")
        out.tools.extend(_tool(t, c.join("tools", i)) for i, t in enumerate(tools))
    if get("tool_choice") is not None:
        _apply_tool_choice(body["tool_choice"], out)
    if get("response_format") is not None:
        out.response_format.CopyFrom(_response_format(body["response_format"]))

    extra = {k: v for k, v in body.items() if k not in MODELLED}
    if extra:
        out.extra.CopyFrom(from_dict(extra))
    return out
