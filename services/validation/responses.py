"""`POST /v1/responses` bodies, checked against openai-python 1.109.1's
`ResponseCreateParamsBase` and translated into the `ChatCompletionRequest` that serves them.

Engines speak chat, so a Responses request becomes a chat request here, once, and
everything after validation (auth, quota, routing, failover, billing) is chat's.
`instructions` is the first (system) message, `input` items are messages,
`text.format` is `response_format` and `max_output_tokens` is `max_tokens`.

meshgate is stateless: what needs stored state or OpenAI-hosted tools
(`previous_response_id`, `conversation`, `prompt`, `background`, built-in tools,
`item_reference` inputs) is a 400 naming the field. `store` is accepted and
answered as false. The echo is what the `response` object repeats of the request,
normalised once here so that the edge only copies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from meshgate.structs import from_dict
from meshgate.v1 import inference_pb2
from services.validation import checks as c
from services.validation.chat import function_name, image_part

# ResponseCreateParamsBase's fields that shape the chat request or the answer.
MODELLED = frozenset(
    {
        "model", "input", "instructions", "tools", "tool_choice", "text", "max_output_tokens",
        "temperature", "top_p", "metadata", "user", "parallel_tool_calls", "store", "stream",
        "previous_response_id", "conversation", "background", "prompt", "top_logprobs",
        "include", "truncation", "stream_options", "max_tool_calls", "reasoning",
        "service_tier", "prompt_cache_key", "safety_identifier",
    }
)  # fmt: skip
# Fields the chat request carries as they are (its `extra`, as chat's pass-through does).
_FORWARDED = ("service_tier", "prompt_cache_key", "safety_identifier")
# Every tool type of the SDK's ToolParam; only `function` can be served by a chat engine.
TOOL_TYPES = (
    "function", "file_search", "computer_use_preview", "web_search", "web_search_2025_08_26",
    "web_search_preview", "web_search_preview_2025_03_11", "mcp", "code_interpreter",
    "image_generation", "local_shell", "custom",
)  # fmt: skip
# tool_choice objects naming a hosted tool (ToolChoiceTypesParam, ToolChoiceMcpParam).
_HOSTED_CHOICES = (
    "file_search", "web_search_preview", "computer_use_preview",
    "web_search_preview_2025_03_11", "image_generation", "code_interpreter", "mcp",
)  # fmt: skip
# OpenAI's own lower bound for max_output_tokens.
MIN_OUTPUT_TOKENS = 16
METADATA_MAX_PAIRS, METADATA_KEY_MAX, METADATA_VALUE_MAX = 16, 64, 512
_ITEM_STATUSES = ("in_progress", "completed", "incomplete")
_INPUT_ROLES = ("user", "assistant", "system", "developer")


@dataclass(frozen=True, slots=True)
class Translated:
    """The chat request that serves the body, and the settings the answer repeats."""

    request: inference_pb2.ChatCompletionRequest
    echo: dict[str, Any]
    # The body path each chat message came from ("instructions", "input", "input[2]"),
    # so that the catalog's errors (which name `messages[i]`) name the body's field.
    sources: list[str]

    def locate(self, param: str | None) -> str | None:
        """A chat request's param path as the path of the Responses body it came from."""
        if param is None or not param.startswith("messages"):
            return param
        head, _, rest = param.partition("]")
        if not rest and head == "messages":
            return "input"
        index = int(head.removeprefix("messages["))
        return self.sources[index] + rest


def _stateless(field: str, message: str) -> NoReturn:
    c.unsupported(field, f"Unsupported parameter: '{field}'. meshgate is stateless: {message}")


def _input_part(raw: object, path: str, role: str) -> inference_pb2.ContentPart:
    """An input message's part: input_text and input_image (user, system, developer), or the
    output_text and refusal parts of an assistant message sent back as input."""
    part = c.obj(raw, path)
    allowed = ("output_text", "refusal") if role == "assistant" else ("input_text", "input_image")
    kind_path = c.join(path, "type")
    kind = c.require(part, "type", path)
    if role != "assistant" and kind in ("input_file", "input_audio"):
        c.unsupported(kind_path, f"Unsupported content type: '{kind}'. Send text or images.")
    kind = c.one_of(kind, kind_path, allowed)
    out = inference_pb2.ContentPart()
    if kind in ("input_text", "output_text"):
        out.text = c.string(c.require(part, "text", path), c.join(path, "text"))
    elif kind == "refusal":
        out.refusal = c.string(c.require(part, "refusal", path), c.join(path, "refusal"))
    else:
        if part.get("file_id") is not None:
            _stateless(c.join(path, "file_id"), "send the image inline as `image_url`.")
        url = c.require(part, "image_url", path)
        out.CopyFrom(image_part(url, c.join(path, "image_url")))
        if part.get("detail") is not None:  # required by the SDK's type; OpenAI defaults it
            out.image_url.detail = c.one_of(
                part["detail"], c.join(path, "detail"), ("low", "high", "auto")
            )
    return out


def _message(item: dict[str, Any], path: str) -> inference_pb2.ChatMessage:
    role = c.one_of(c.require(item, "role", path), c.join(path, "role"), _INPUT_ROLES)
    if item.get("status") is not None:
        c.one_of(item["status"], c.join(path, "status"), _ITEM_STATUSES)
    content_path = c.join(path, "content")
    content = c.require(item, "content", path)
    out = inference_pb2.ChatMessage(role=role)
    if isinstance(content, str):
        out.text = content
    elif isinstance(content, list):
        parts = [_input_part(p, c.join(content_path, i), role) for i, p in enumerate(content)]
        if role == "assistant":  # chat's assistant parts are text and refusal, as here
            texts = [p.text for p in parts if p.WhichOneof("part") == "text"]
            refusals = [p.refusal for p in parts if p.WhichOneof("part") == "refusal"]
            out.text = "".join(texts)
            if refusals:
                out.refusal = "".join(refusals)
        else:
            out.parts.SetInParent()
            out.parts.parts.extend(parts)
    else:
        c.wrong_type(content_path, "one of a string or array of objects", content)
    return out


def _function_call(item: dict[str, Any], path: str) -> inference_pb2.ToolCall:
    if item.get("status") is not None:
        c.one_of(item["status"], c.join(path, "status"), _ITEM_STATUSES)
    return inference_pb2.ToolCall(
        id=c.string(c.require(item, "call_id", path), c.join(path, "call_id")),
        name=c.string(c.require(item, "name", path), c.join(path, "name")),
        arguments=c.string(c.require(item, "arguments", path), c.join(path, "arguments")),
    )


def _function_output(item: dict[str, Any], path: str) -> inference_pb2.ChatMessage:
    if item.get("status") is not None:
        c.one_of(item["status"], c.join(path, "status"), _ITEM_STATUSES)
    return inference_pb2.ChatMessage(
        role="tool",
        tool_call_id=c.string(c.require(item, "call_id", path), c.join(path, "call_id")),
        text=c.string(c.require(item, "output", path), c.join(path, "output")),
    )


def _items(raw: list[Any], sources: list[str]) -> list[inference_pb2.ChatMessage]:
    """Input items as chat messages: consecutive function calls (after an assistant message
    or not) are one assistant message with tool calls, as a chat engine expects them.
    Each new message's body path is appended to `sources`."""
    messages: list[inference_pb2.ChatMessage] = []
    before = len(sources)
    for i, entry in enumerate(raw):
        path = c.join("input", i)
        item = c.obj(entry, path)
        kind = item.get("type")
        if kind is None and "role" in item:
            kind = "message"  # EasyInputMessageParam: `type` is optional
        kind_path = c.join(path, "type")
        if kind == "item_reference":
            _stateless(kind_path, "send the item itself instead of a reference to it.")
        if kind == "reasoning":
            continue  # a reasoning model's own notes, sent back; chat engines take none
        kind = c.one_of(
            c.require(item, "type", path) if kind is None else kind,
            kind_path,
            ("message", "function_call", "function_call_output"),
        )
        if kind == "message":
            messages.append(_message(item, path))
        elif kind == "function_call":
            call = _function_call(item, path)
            last = messages[-1] if messages else None
            if last is None or last.role != "assistant" or last.refusal:
                last = inference_pb2.ChatMessage(role="assistant")
                messages.append(last)
            last.tool_calls.append(call)
        else:
            messages.append(_function_output(item, path))
        sources.extend([path] * (before + len(messages) - len(sources)))
    return messages


def _tool(raw: object, path: str) -> tuple[inference_pb2.Tool, dict[str, Any]]:
    """A function tool, and how the `response` object lists it."""
    tool = c.obj(raw, path)
    kind_path = c.join(path, "type")
    kind = c.one_of(c.require(tool, "type", path), kind_path, TOOL_TYPES)
    if kind != "function":
        c.unsupported(
            kind_path,
            f"Unsupported tool type: '{kind}'. meshgate serves `function` tools only; "
            "built-in tools need OpenAI's hosted services.",
        )
    out = inference_pb2.Tool()
    out.function.name = function_name(c.require(tool, "name", path), c.join(path, "name"))
    echo: dict[str, Any] = {
        "type": "function",
        "name": out.function.name,
        "description": None,
        "parameters": None,
        "strict": None,
    }
    if tool.get("description") is not None:
        out.function.description = c.string(tool["description"], c.join(path, "description"))
        echo["description"] = out.function.description
    if tool.get("parameters") is not None:
        parameters = c.obj(tool["parameters"], c.join(path, "parameters"))
        out.function.parameters.CopyFrom(from_dict(parameters))
        echo["parameters"] = parameters
    if tool.get("strict") is not None:
        out.function.strict = c.boolean(tool["strict"], c.join(path, "strict"))
        echo["strict"] = out.function.strict
    return out, echo


def _tool_name(tools: list[inference_pb2.Tool], name: object, path: str) -> str:
    name = c.string(name, path)
    if name not in {t.function.name for t in tools}:
        raise c.Invalid(
            f"Invalid value for '{path}': function '{name}' is not among the provided tools.", path
        )
    return name


def _tool_choice(raw: object, out: inference_pb2.ChatCompletionRequest) -> object:
    """Set `out.tool_choice` (narrowing `out.tools` for allowed_tools); the echo's value."""
    tools = list(out.tools)
    if isinstance(raw, str):
        mode = c.one_of(raw, "tool_choice", ("none", "auto", "required"))
        if tools:  # without tools, chat refuses a tool_choice; here "none"/"auto" mean nothing
            out.tool_choice.mode = mode
        elif mode == "required":
            c.unsupported("tool_choice", "Invalid 'tool_choice': 'required' needs 'tools'.")
        return mode
    choice = c.obj(raw, "tool_choice")
    kind = c.require(choice, "type", "tool_choice")
    if kind in _HOSTED_CHOICES:
        c.unsupported(
            "tool_choice.type",
            f"Unsupported tool_choice type: '{kind}'. meshgate serves `function` tools only.",
        )
    kind = c.one_of(kind, "tool_choice.type", ("function", "allowed_tools"))
    if kind == "function":
        name = _tool_name(tools, c.require(choice, "name", "tool_choice"), "tool_choice.name")
        out.tool_choice.function_name = name
        return {"type": "function", "name": name}
    mode = c.one_of(
        c.require(choice, "mode", "tool_choice"), "tool_choice.mode", ("auto", "required")
    )
    listed = c.array(c.require(choice, "tools", "tool_choice"), "tool_choice.tools", min_length=1)
    names = []
    for i, entry in enumerate(listed):
        path = c.join("tool_choice.tools", i)
        tool = c.obj(entry, path)
        c.one_of(c.require(tool, "type", path), c.join(path, "type"), ("function",))
        names.append(_tool_name(tools, c.require(tool, "name", path), c.join(path, "name")))
    kept = [t for t in tools if t.function.name in names]
    del out.tools[:]
    out.tools.extend(kept)
    out.tool_choice.mode = mode
    return {"type": "allowed_tools", "mode": mode, "tools": listed}


def _text_format(raw: object) -> tuple[inference_pb2.ResponseFormat, dict[str, Any]]:
    """`text.format` as chat's response_format (so the catalog's json_schema fallback
    applies), and the format as the answer's `text.format` repeats it."""
    path = "text.format"
    fmt = c.obj(raw, path)
    kind = c.one_of(
        c.require(fmt, "type", path), "text.format.type", ("text", "json_schema", "json_object")
    )
    out = inference_pb2.ResponseFormat()
    if kind == "text":
        out.type = inference_pb2.ResponseFormat.TYPE_TEXT
        return out, {"type": "text"}
    if kind == "json_object":
        out.type = inference_pb2.ResponseFormat.TYPE_JSON_OBJECT
        return out, {"type": "json_object"}
    out.type = inference_pb2.ResponseFormat.TYPE_JSON_SCHEMA
    schema = out.json_schema
    schema.name = function_name(c.require(fmt, "name", path), "text.format.name")
    body = c.obj(c.require(fmt, "schema", path), "text.format.schema")
    schema.schema.CopyFrom(from_dict(body))
    echo: dict[str, Any] = {"type": "json_schema", "name": schema.name, "schema": body}
    if fmt.get("description") is not None:
        schema.description = c.string(fmt["description"], "text.format.description")
        echo["description"] = schema.description
    if fmt.get("strict") is not None:
        schema.strict = c.boolean(fmt["strict"], "text.format.strict")
    echo["strict"] = schema.strict if fmt.get("strict") is not None else None
    return out, echo


def _metadata(raw: object) -> dict[str, str]:
    metadata = c.obj(raw, "metadata")
    if len(metadata) > METADATA_MAX_PAIRS:
        raise c.Invalid(
            f"Invalid 'metadata': too many properties. Expected an object with at most "
            f"{METADATA_MAX_PAIRS} properties, but got an object with {len(metadata)} properties.",
            "metadata",
        )
    for key, value in metadata.items():
        c.string(key, "metadata", max_length=METADATA_KEY_MAX)
        c.string(value, c.join("metadata", key), max_length=METADATA_VALUE_MAX)
    return metadata


def _refuse_stateful(body: dict[str, Any]) -> None:
    if body.get("previous_response_id") is not None:
        c.string(body["previous_response_id"], "previous_response_id")
        _stateless("previous_response_id", "send the whole conversation as `input` items.")
    if body.get("conversation") is not None:
        _stateless("conversation", "send the whole conversation as `input` items.")
    if body.get("prompt") is not None:
        _stateless("prompt", "send the prompt's text as `instructions` and `input`.")
    if body.get("background") is not None and c.boolean(body["background"], "background"):
        _stateless("background", "a response is answered on its request, never stored.")
    if body.get("top_logprobs") is not None:
        c.integer(body["top_logprobs"], "top_logprobs", minimum=0, maximum=20)
        c.unsupported("top_logprobs", "Unsupported parameter: 'top_logprobs' is not supported.")


def _accepted(body: dict[str, Any], echo: dict[str, Any]) -> None:
    """Fields that change nothing a chat engine does, checked for shape and echoed."""
    get = body.get
    if get("store") is not None:
        c.boolean(body["store"], "store")  # answered as false: nothing is stored
    if get("include") is not None:
        includes = c.array(body["include"], "include")
        for i, value in enumerate(includes):  # nothing to include: no hosted tools, no logprobs
            c.string(value, c.join("include", i))
    if get("truncation") is not None:
        echo["truncation"] = c.one_of(body["truncation"], "truncation", ("auto", "disabled"))
    if get("max_tool_calls") is not None:  # bounds built-in tool calls, of which there are none
        echo["max_tool_calls"] = c.integer(body["max_tool_calls"], "max_tool_calls", minimum=1)
    if get("stream_options") is not None:
        options = c.obj(body["stream_options"], "stream_options")
        if options.get("include_obfuscation") is not None:  # never obfuscated
            c.boolean(options["include_obfuscation"], "stream_options.include_obfuscation")
    if get("reasoning") is not None:
        reasoning = c.obj(body["reasoning"], "reasoning")
        effort = reasoning.get("effort")
        if effort is not None:
            effort = c.one_of(effort, "reasoning.effort", ("minimal", "low", "medium", "high"))
        echo["reasoning"] = {"effort": effort, "summary": None}


def _echo_defaults() -> dict[str, Any]:
    """The `response` object's request settings when the body leaves them out (OpenAI's)."""
    return {
        "instructions": None,
        "metadata": {},
        "tools": [],
        "tool_choice": "auto",
        "temperature": 1.0,
        "top_p": 1.0,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "truncation": "disabled",
        "user": None,
        "store": False,
        "background": False,
        "service_tier": "default",
        "prompt_cache_key": None,
        "safety_identifier": None,
        "top_logprobs": 0,
    }


def validate_response(body: dict[str, Any]) -> Translated:
    """The chat request for a Responses body, or `checks.Invalid` naming the first bad field."""
    out = inference_pb2.ChatCompletionRequest(
        model=c.string(c.require(body, "model"), "model", non_empty=True)
    )
    echo = _echo_defaults()
    sources: list[str] = []
    _refuse_stateful(body)
    get = body.get
    if get("instructions") is not None:
        instructions = c.string(body["instructions"], "instructions")
        out.messages.append(inference_pb2.ChatMessage(role="system", text=instructions))
        sources.append("instructions")
        echo["instructions"] = instructions
    raw_input = c.require(body, "input")
    if isinstance(raw_input, str):
        out.messages.append(inference_pb2.ChatMessage(role="user", text=raw_input))
        sources.append("input")
    elif isinstance(raw_input, list):
        out.messages.extend(_items(c.array(raw_input, "input", min_length=1), sources))
        if sources[-1:] in ([], ["instructions"]):  # only reasoning items: nothing to answer
            raise c.Invalid(
                "Invalid 'input': it has no message or function call, only reasoning items.",
                "input",
            )
    else:
        c.wrong_type("input", "one of a string or array of objects", raw_input)

    for name in ("temperature", "top_p"):
        if get(name) is not None:
            value = c.number(body[name], name, minimum=0, maximum=2 if name == "temperature" else 1)
            setattr(out, name, value)
            echo[name] = value
    if get("max_output_tokens") is not None:
        out.max_tokens = c.integer(
            body["max_output_tokens"], "max_output_tokens", minimum=MIN_OUTPUT_TOKENS
        )
        echo["max_output_tokens"] = out.max_tokens
    if get("user") is not None:
        out.user = echo["user"] = c.string(body["user"], "user")
    if get("metadata") is not None:
        echo["metadata"] = _metadata(body["metadata"])
    if get("stream") is not None:
        out.stream = c.boolean(body["stream"], "stream")

    if get("tools") is not None:
        tools = c.array(body["tools"], "tools")
        translated = [_tool(t, c.join("tools", i)) for i, t in enumerate(tools)]
        out.tools.extend(tool for tool, _ in translated)
        echo["tools"] = [listed for _, listed in translated]
    if get("tool_choice") is not None:
        echo["tool_choice"] = _tool_choice(body["tool_choice"], out)
    extra: dict[str, Any] = {}
    if get("parallel_tool_calls") is not None:
        parallel = c.boolean(body["parallel_tool_calls"], "parallel_tool_calls")
        echo["parallel_tool_calls"] = parallel
        if out.tools:  # chat engines refuse parallel_tool_calls without tools
            extra["parallel_tool_calls"] = parallel
    if get("text") is not None:
        text = c.obj(body["text"], "text")
        if text.get("format") is not None:
            response_format, echo["text"]["format"] = _text_format(text["format"])
            out.response_format.CopyFrom(response_format)
        if text.get("verbosity") is not None:
            echo["text"]["verbosity"] = c.one_of(
                text["verbosity"], "text.verbosity", ("low", "medium", "high")
            )
    _accepted(body, echo)
    if echo["reasoning"]["effort"] is not None:
        extra["reasoning_effort"] = echo["reasoning"]["effort"]
    for name in _FORWARDED:
        if get(name) is not None:
            extra[name] = echo[name] = c.string(body[name], name)
    extra.update({k: v for k, v in body.items() if k not in MODELLED})  # chat's pass-through
    if extra:
        out.extra.CopyFrom(from_dict(extra))
    return Translated(out, echo, sources)
