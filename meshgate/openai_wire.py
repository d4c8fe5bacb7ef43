"""meshgate's protobuf <-> the OpenAI JSON that HTTP engines speak.

Requests go out as OpenAI bodies (unmodelled fields merged back at the top
level, as the client sent them); answers come back as protobuf. Engines'
error bodies, which differ from engine to engine, are normalised here into
meshgate's envelope.
"""

from __future__ import annotations

import base64
from typing import Any

from meshgate import errors, vectors
from meshgate.errors import ApiError
from meshgate.structs import to_dict
from meshgate.v1 import common_pb2, inference_pb2

_FORMAT_NAMES = {
    inference_pb2.ResponseFormat.TYPE_TEXT: "text",
    inference_pb2.ResponseFormat.TYPE_JSON_OBJECT: "json_object",
    inference_pb2.ResponseFormat.TYPE_JSON_SCHEMA: "json_schema",
}

# ------------------------------------------------------------- requests ----


def _part(part: inference_pb2.ContentPart) -> dict[str, Any]:
    kind = part.WhichOneof("part")
    if kind == "text":
        return {"type": "text", "text": part.text}
    if kind == "refusal":
        return {"type": "refusal", "refusal": part.refusal}
    if kind == "image_url":
        image: dict[str, Any] = {"url": part.image_url.url}
        if part.image_url.detail:
            image["detail"] = part.image_url.detail
        return {"type": "image_url", "image_url": image}
    if kind == "input_audio":
        return {
            "type": "input_audio",
            "input_audio": {"data": part.input_audio.data, "format": part.input_audio.format},
        }
    file = {
        k: getattr(part.file, k)
        for k in ("file_data", "file_id", "filename")
        if getattr(part.file, k)
    }
    return {"type": "file", "file": file}


def _message(m: inference_pb2.ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role}
    which = m.WhichOneof("content")
    if which == "text":
        out["content"] = m.text
    elif which == "parts":
        out["content"] = [_part(p) for p in m.parts.parts]
    else:
        out["content"] = None
    if m.name:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}
            for t in m.tool_calls
        ]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.HasField("refusal"):
        out["refusal"] = m.refusal
    if m.HasField("extra"):
        out.update(to_dict(m.extra))
    return out


def _sampling(request: Any, body: dict[str, Any]) -> None:
    for name in (
        "temperature",
        "top_p",
        "max_tokens",
        "seed",
        "presence_penalty",
        "frequency_penalty",
    ):
        if request.HasField(name):
            body[name] = getattr(request, name)
    if request.stop:
        body["stop"] = list(request.stop)
    if request.user:
        body["user"] = request.user


def chat_body(
    request: inference_pb2.ChatCompletionRequest, model: str, *, stream: bool
) -> dict[str, Any]:
    """An OpenAI chat body; streams always ask for usage, so billing never depends on the client."""
    body: dict[str, Any] = to_dict(request.extra) if request.HasField("extra") else {}
    body["model"] = model
    body["messages"] = [_message(m) for m in request.messages]
    _sampling(request, body)
    if request.tools:
        tools = []
        for tool in request.tools:
            function: dict[str, Any] = {"name": tool.function.name}
            if tool.function.description:
                function["description"] = tool.function.description
            if tool.function.HasField("parameters"):
                function["parameters"] = to_dict(tool.function.parameters)
            if tool.function.HasField("strict"):
                function["strict"] = tool.function.strict
            tools.append({"type": "function", "function": function})
        body["tools"] = tools
    choice = request.tool_choice.WhichOneof("choice")
    if choice == "mode":
        body["tool_choice"] = request.tool_choice.mode
    elif choice == "function_name":
        body["tool_choice"] = {
            "type": "function",
            "function": {"name": request.tool_choice.function_name},
        }
    fmt = request.response_format
    if fmt.type in _FORMAT_NAMES:
        response_format: dict[str, Any] = {"type": _FORMAT_NAMES[fmt.type]}
        if fmt.type == inference_pb2.ResponseFormat.TYPE_JSON_SCHEMA:
            schema: dict[str, Any] = {"name": fmt.json_schema.name}
            if fmt.json_schema.description:
                schema["description"] = fmt.json_schema.description
            if fmt.json_schema.HasField("schema"):
                schema["schema"] = to_dict(fmt.json_schema.schema)
            if fmt.json_schema.HasField("strict"):
                schema["strict"] = fmt.json_schema.strict
            response_format["json_schema"] = schema
        body["response_format"] = response_format
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def text_body(
    request: inference_pb2.CompletionRequest, model: str, *, stream: bool
) -> dict[str, Any]:
    body: dict[str, Any] = to_dict(request.extra) if request.HasField("extra") else {}
    body["model"] = model
    body["prompt"] = request.prompt[0] if len(request.prompt) == 1 else list(request.prompt)
    _sampling(request, body)
    if request.echo:
        body["echo"] = True
    if request.suffix:
        body["suffix"] = request.suffix
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def embedding_body(
    request: inference_pb2.EmbeddingRequest, model: str, *, native_dimensions: int
) -> dict[str, Any]:
    body: dict[str, Any] = to_dict(request.extra) if request.HasField("extra") else {}
    body["model"] = model
    body["input"] = list(request.input)
    body["encoding_format"] = "float"  # every engine speaks float; not all of them speak base64
    if request.HasField("dimensions") and request.dimensions != native_dimensions:
        body["dimensions"] = request.dimensions
    if request.user:
        body["user"] = request.user
    return body


# ------------------------------------------------------------ responses ----


def usage(raw: Any) -> common_pb2.Usage:
    if not isinstance(raw, dict):
        return common_pb2.Usage()
    details = raw.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return common_pb2.Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cached_tokens=int(cached or raw.get("cache_read_input_tokens") or 0),
        cache_creation_tokens=int(raw.get("cache_creation_input_tokens") or 0),
    )


def _tool_call(raw: dict[str, Any]) -> inference_pb2.ToolCall:
    function = raw.get("function") or {}
    arguments = function.get("arguments", "")
    return inference_pb2.ToolCall(
        id=str(raw.get("id") or ""),
        name=str(function.get("name") or ""),
        arguments=arguments if isinstance(arguments, str) else str(arguments),
    )


def chat_completion(raw: dict[str, Any]) -> inference_pb2.ChatCompletion:
    """An engine's chat answer; `system_fingerprint` and other extras are dropped."""
    out = inference_pb2.ChatCompletion(usage=usage(raw.get("usage")))
    for i, choice in enumerate(raw.get("choices") or []):
        message = choice.get("message") or {}
        assistant = inference_pb2.AssistantMessage(
            tool_calls=[_tool_call(t) for t in message.get("tool_calls") or []]
        )
        if message.get("content") is not None:
            assistant.content = str(message["content"])
        if message.get("refusal") is not None:
            assistant.refusal = str(message["refusal"])
        out.choices.append(
            inference_pb2.ChatChoice(
                index=int(choice.get("index", i)),
                message=assistant,
                finish_reason=choice.get("finish_reason") or "stop",
            )
        )
    return out


def chat_chunk(raw: dict[str, Any]) -> inference_pb2.ChatCompletionChunk:
    out = inference_pb2.ChatCompletionChunk()
    for i, choice in enumerate(raw.get("choices") or []):
        delta = choice.get("delta") or {}
        d = inference_pb2.ChoiceDelta(role=delta.get("role") or "")
        if delta.get("content") is not None:
            d.content = str(delta["content"])
        if delta.get("refusal") is not None:
            d.refusal = str(delta["refusal"])
        for t in delta.get("tool_calls") or []:
            function = t.get("function") or {}
            d.tool_calls.append(
                inference_pb2.ToolCallDelta(
                    index=int(t.get("index", 0)),
                    id=str(t.get("id") or ""),
                    name=str(function.get("name") or ""),
                    arguments=str(function.get("arguments") or ""),
                )
            )
        out.choices.append(
            inference_pb2.ChunkChoice(
                index=int(choice.get("index", i)),
                delta=d,
                finish_reason=choice.get("finish_reason") or "",
            )
        )
    if raw.get("usage"):
        out.usage.CopyFrom(usage(raw["usage"]))
    return out


def _text_choices(raw: dict[str, Any]) -> list[inference_pb2.CompletionChoice]:
    return [
        inference_pb2.CompletionChoice(
            index=int(c.get("index", i)),
            text=str(c.get("text") or ""),
            finish_reason=c.get("finish_reason") or "",
        )
        for i, c in enumerate(raw.get("choices") or [])
    ]


def completion(raw: dict[str, Any]) -> inference_pb2.Completion:
    out = inference_pb2.Completion(choices=_text_choices(raw), usage=usage(raw.get("usage")))
    for choice in out.choices:
        choice.finish_reason = choice.finish_reason or "stop"
    return out


def completion_chunk(raw: dict[str, Any]) -> inference_pb2.CompletionChunk:
    out = inference_pb2.CompletionChunk(choices=_text_choices(raw))
    if raw.get("usage"):
        out.usage.CopyFrom(usage(raw["usage"]))
    return out


def embeddings(raw: dict[str, Any]) -> inference_pb2.EmbeddingList:
    out = inference_pb2.EmbeddingList(usage=usage(raw.get("usage")))
    for i, item in enumerate(raw.get("data") or []):
        vector = item.get("embedding")
        if isinstance(vector, str):
            packed = base64.b64decode(vector)
        else:
            packed = vectors.pack(vector or [])
        out.data.append(
            inference_pb2.Embedding(index=int(item.get("index", i)), vector_f32le=packed)
        )
    return out


# --------------------------------------------------------------- errors ----


def _fastapi_param(loc: Any) -> str | None:
    """FastAPI's 422 `loc` (["body", "messages", 0, "role"]) as a bracket path."""
    if not isinstance(loc, list):
        return None
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or None


def engine_error(status: int, body: Any, engine: str) -> ApiError:
    """An engine's 4xx, whatever its shape, as meshgate's 400 (or 404) envelope.

    Shapes seen: OpenAI's `{"error": {...}}`; vLLM's `{"object": "error",
    "message", "type": "BadRequestError", "code": 400}`; FastAPI's 422
    `{"detail": [{"loc", "msg"}]}` (SGLang, llama-cpp-python); TGI's
    `{"error": "...", "error_type": "validation"}`; Ollama's `{"error": "..."}`.
    """
    message, param = "", None
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict):
            message, param = str(inner.get("message") or ""), inner.get("param")
        elif isinstance(inner, str):
            message = inner
        elif isinstance(body.get("message"), str):
            message, param = body["message"], body.get("param")
        elif isinstance(body.get("detail"), list) and body["detail"]:
            first = body["detail"][0]
            if isinstance(first, dict):
                message, param = str(first.get("msg") or ""), _fastapi_param(first.get("loc"))
        elif isinstance(body.get("detail"), str):
            message = body["detail"]
    elif isinstance(body, str):
        message = body.strip()
    message = message or f"The engine rejected the request (HTTP {status})."
    param = param if isinstance(param, str) else None
    lowered = message.lower()
    if "maximum context length" in lowered or ("context length" in lowered and "exceed" in lowered):
        return ApiError(
            400,
            "invalid_request_error",
            message,
            param=param or "messages",
            code="context_length_exceeded",
        )
    if status == 404:
        return ApiError(
            502, "server_error", f"The engine at {engine} does not serve this model: {message}"
        )
    if status in (401, 403):
        return ApiError(
            502, "server_error", f"The engine at {engine} refused meshgate's credentials."
        )
    return errors.invalid_request(message, param)
