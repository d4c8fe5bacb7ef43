"""meshgate's own HTTP surface as an OpenAPI 3.0 document, served at `GET /openapi.json`.

The request schemas follow the validation service (services/validation/): what
they accept is what the schemas allow, JSON null counts as omitted except where
the validator says otherwise (`encoding_format`), and unknown fields stay open
because the validators pass them through to the engine. The error responses
are the statuses in meshgate/errors.py's CATALOGUE that each endpoint can give.
The document is built and serialized once, at import.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from edge.headers import request_id_of

JSONObject = dict[str, Any]

OPENAPI_VERSION = "3.0.3"
TOOL_NAME_PATTERN = "^[a-zA-Z0-9_-]{1,64}$"
# cl100k's ordinary tokens: prompts given as token ids are decoded with it.
MAX_TOKEN_ID = 100255


def _version() -> str:
    try:
        return metadata.version("meshgate")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def ref(name: str) -> JSONObject:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(
    properties: JSONObject,
    required: tuple[str, ...] = (),
    *,
    description: str | None = None,
    closed: bool = False,
) -> JSONObject:
    """An object schema; open (extra keys allowed) unless `closed`."""
    schema: JSONObject = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


def nullable(schema: JSONObject) -> JSONObject:
    """A field the validators treat as omitted when it is JSON null (3.0: null joins an enum)."""
    if "enum" in schema:
        return {**schema, "enum": [*schema["enum"], None], "nullable": True}
    return {**schema, "nullable": True}


def const(value: str) -> JSONObject:
    return {"type": "string", "enum": [value]}


def number(minimum: float, maximum: float) -> JSONObject:
    return nullable({"type": "number", "minimum": minimum, "maximum": maximum})


STRING: JSONObject = {"type": "string"}
INTEGER: JSONObject = {"type": "integer"}
# The protobuf field widths behind the validators (meshgate.v1.inference).
INT32: JSONObject = {"type": "integer", "format": "int32", "maximum": 2**31 - 1}
INT64: JSONObject = {"type": "integer", "format": "int64", "maximum": 2**63 - 1}
BOOLEAN: JSONObject = {"type": "boolean"}
ANY_OBJECT: JSONObject = {"type": "object", "additionalProperties": True}
STOP: JSONObject = nullable(
    {
        "description": "A string or up to 4 strings.",
        "anyOf": [STRING, {"type": "array", "items": STRING, "maxItems": 4}],
    }
)
STREAM_OPTIONS: JSONObject = nullable(
    obj(
        {"include_usage": nullable(BOOLEAN)},
        description="Only allowed with `stream: true` (a 400 otherwise).",
    )
)


def prompt_like(*, non_empty_strings: bool) -> JSONObject:
    """`prompt` / `input`: a string, strings, token ids, or lists of token ids."""
    text: JSONObject = {"type": "string", "minLength": 1} if non_empty_strings else STRING
    token: JSONObject = {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID}
    ids: JSONObject = {"type": "array", "items": token, "minItems": 1}
    return {
        "anyOf": [
            text,
            {"type": "array", "items": text, "minItems": 1},
            ids,
            {"type": "array", "items": ids, "minItems": 1},
        ]
    }


# ------------------------------------------------------------ chat requests ----


def _part(kind: str, field: str, value: JSONObject) -> JSONObject:
    return obj({"type": const(kind), field: value}, ("type", field))


TEXT_PART = _part("text", "text", STRING)
REFUSAL_PART = _part("refusal", "refusal", STRING)
IMAGE_PART = _part(
    "image_url",
    "image_url",
    obj(
        {
            "url": {
                "type": "string",
                "pattern": "^(https?://|data:image/)",
                "description": "An http(s) URL or a base64 data URL (data:image/...;base64,...).",
            },
            "detail": nullable({"type": "string", "enum": ["auto", "low", "high"]}),
        },
        ("url",),
    ),
)
AUDIO_PART = _part(
    "input_audio",
    "input_audio",
    obj({"data": STRING, "format": {"type": "string", "enum": ["wav", "mp3"]}}, ("data", "format")),
)
FILE_PART = _part(
    "file",
    "file",
    obj({key: nullable(STRING) for key in ("file_data", "file_id", "filename")}),
)


def _content(*parts: JSONObject) -> JSONObject:
    return {"anyOf": [STRING, {"type": "array", "items": {"anyOf": list(parts)}, "minItems": 1}]}


TOOL_CALL = obj(
    {
        "id": STRING,
        "type": const("function"),
        "function": obj({"name": STRING, "arguments": STRING}, ("name", "arguments")),
    },
    ("id", "type", "function"),
)
NAME: JSONObject = nullable(STRING)


def _message(
    role: str | list[str], properties: JSONObject, required: tuple[str, ...]
) -> JSONObject:
    roles = [role] if isinstance(role, str) else role
    return obj({"role": {"type": "string", "enum": roles}, **properties}, ("role", *required))


ASSISTANT_CONTENT = _content(TEXT_PART, REFUSAL_PART)
ASSISTANT_FIELDS: JSONObject = {
    "content": nullable(ASSISTANT_CONTENT),
    "name": NAME,
    "refusal": nullable(STRING),
    "tool_calls": nullable({"type": "array", "items": TOOL_CALL}),
    "function_call": nullable(ANY_OBJECT),
}
CHAT_MESSAGE: JSONObject = {
    "description": "One message; its role decides the content shapes allowed.",
    "anyOf": [
        _message(
            ["system", "developer"], {"content": _content(TEXT_PART), "name": NAME}, ("content",)
        ),
        _message(
            "user",
            {"content": _content(TEXT_PART, IMAGE_PART, AUDIO_PART, FILE_PART), "name": NAME},
            ("content",),
        ),
        # An assistant message needs content, tool calls, a refusal or a function call.
        *(
            _message("assistant", {**ASSISTANT_FIELDS, field: schema}, (field,))
            for field, schema in (
                ("content", ASSISTANT_CONTENT),
                ("tool_calls", {"type": "array", "items": TOOL_CALL, "minItems": 1}),
                ("refusal", STRING),
                ("function_call", ANY_OBJECT),
            )
        ),
        _message(
            "tool",
            {"content": _content(TEXT_PART), "tool_call_id": STRING, "name": NAME},
            ("content", "tool_call_id"),
        ),
        _message("function", {"content": nullable(STRING), "name": STRING}, ("name",)),
    ],
}
NAMED_FUNCTION = obj({"name": STRING}, ("name",))
TOOL = obj(
    {
        "type": const("function"),
        "function": obj(
            {
                "name": {"type": "string", "pattern": TOOL_NAME_PATTERN},
                "description": nullable(STRING),
                "parameters": nullable(ANY_OBJECT),
                "strict": nullable(BOOLEAN),
            },
            ("name",),
        ),
    },
    ("type", "function"),
)
TOOL_CHOICE: JSONObject = nullable(
    {
        "description": "Only allowed when `tools` is set; a named function must be one of them.",
        "anyOf": [
            {"type": "string", "enum": ["none", "auto", "required"]},
            obj({"type": const("function"), "function": NAMED_FUNCTION}, ("type", "function")),
            obj(
                {
                    "type": const("allowed_tools"),
                    "allowed_tools": obj(
                        {
                            "mode": {"type": "string", "enum": ["auto", "required"]},
                            "tools": {
                                "type": "array",
                                "minItems": 1,
                                "items": obj(
                                    {"type": const("function"), "function": NAMED_FUNCTION},
                                    ("type", "function"),
                                ),
                            },
                        },
                        ("mode", "tools"),
                    ),
                },
                ("type", "allowed_tools"),
            ),
        ],
    }
)
RESPONSE_FORMAT: JSONObject = nullable(
    {
        "anyOf": [
            obj({"type": const("text")}, ("type",)),
            obj({"type": const("json_object")}, ("type",)),
            obj(
                {
                    "type": const("json_schema"),
                    "json_schema": obj(
                        {
                            "name": {"type": "string", "pattern": TOOL_NAME_PATTERN},
                            "description": nullable(STRING),
                            "schema": nullable(ANY_OBJECT),
                            "strict": nullable(BOOLEAN),
                        },
                        ("name",),
                    ),
                },
                ("type", "json_schema"),
            ),
        ]
    }
)
CHAT_REQUEST = obj(
    {
        "model": {"type": "string", "minLength": 1, "example": "meshgate/reference-pro"},
        "messages": {"type": "array", "minItems": 1, "items": ref("ChatMessage")},
        "temperature": number(0, 2),
        "top_p": number(0, 1),
        "presence_penalty": number(-2, 2),
        "frequency_penalty": number(-2, 2),
        "max_tokens": nullable(INT64 | {"minimum": 1}),
        "max_completion_tokens": nullable(INT64 | {"minimum": 1}),
        "stop": STOP,
        "seed": nullable(INT64 | {"minimum": -(2**63)}),
        "user": nullable(STRING),
        "n": nullable(
            {"type": "integer", "minimum": 1, "maximum": 1, "description": "n > 1 is a 400."}
        ),
        "logprobs": nullable(
            {"type": "boolean", "enum": [False], "description": "`true` is a 400."}
        ),
        "stream": nullable(BOOLEAN),
        "stream_options": STREAM_OPTIONS,
        "tools": nullable({"type": "array", "items": TOOL}),
        "tool_choice": TOOL_CHOICE,
        "response_format": RESPONSE_FORMAT,
    },
    ("model", "messages"),
    description=(
        "Fields not listed here (for example `top_k`, `metadata`) are forwarded to the engine "
        "untouched. `top_logprobs` is not supported: any value is a 400."
    ),
)

COMPLETION_REQUEST = obj(
    {
        "model": {"type": "string", "minLength": 1, "example": "meshgate/reference-mini"},
        "prompt": prompt_like(non_empty_strings=False),
        "max_tokens": nullable(INT64 | {"minimum": 0, "description": "Defaults to 16 per prompt."}),
        "temperature": number(0, 2),
        "top_p": number(0, 1),
        "presence_penalty": number(-2, 2),
        "frequency_penalty": number(-2, 2),
        "stop": STOP,
        "seed": nullable(INT64 | {"minimum": -(2**63)}),
        "user": nullable(STRING),
        "echo": nullable(BOOLEAN),
        "suffix": nullable(STRING),
        "n": nullable(
            {"type": "integer", "minimum": 1, "maximum": 1, "description": "n > 1 is a 400."}
        ),
        "stream": nullable(BOOLEAN),
        "stream_options": STREAM_OPTIONS,
    },
    ("model", "prompt"),
    description=(
        "Fields not listed here are forwarded to the engine untouched. `logprobs` is not "
        "supported: any value is a 400."
    ),
)

EMBEDDING_REQUEST = obj(
    {
        "model": {"type": "string", "minLength": 1, "example": "bge-m3"},
        "input": prompt_like(non_empty_strings=True),
        "encoding_format": {
            "type": "string",
            "enum": ["float", "base64"],
            "description": "Omit it for floats; an explicit null is a 400.",
        },
        "dimensions": nullable(INT32 | {"minimum": 1}),
        "user": nullable(STRING),
    },
    ("model", "input"),
    description="Fields not listed here are forwarded to the engine untouched.",
)

# ---------------------------------------------------------------- responses ----

COUNT: JSONObject = {"type": "integer", "minimum": 0}
USAGE = obj(
    {
        "prompt_tokens": COUNT,
        "completion_tokens": COUNT,
        "total_tokens": COUNT,
        "prompt_tokens_details": obj(
            {"cached_tokens": COUNT, "audio_tokens": COUNT}, ("cached_tokens",)
        ),
        "completion_tokens_details": obj(
            {
                "reasoning_tokens": COUNT,
                "audio_tokens": COUNT,
                "accepted_prediction_tokens": COUNT,
                "rejected_prediction_tokens": COUNT,
            }
        ),
        "cache_read_input_tokens": COUNT,
        "cache_creation_input_tokens": COUNT,
    },
    (
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    ),
)
NO_LOGPROBS: JSONObject = {"type": "object", "nullable": True, "description": "Always null."}
CHAT_COMPLETION = obj(
    {
        "id": STRING,
        "object": const("chat.completion"),
        "created": INTEGER,
        "model": STRING,
        "choices": {
            "type": "array",
            "items": obj(
                {
                    "index": COUNT,
                    "message": obj(
                        {
                            "role": const("assistant"),
                            "content": nullable(STRING),
                            "refusal": nullable(STRING),
                            "annotations": {"type": "array", "items": ANY_OBJECT},
                            "tool_calls": {"type": "array", "items": TOOL_CALL},
                        },
                        ("role", "content"),
                    ),
                    "logprobs": NO_LOGPROBS,
                    "finish_reason": STRING,
                },
                ("index", "message", "finish_reason"),
            ),
        },
        "usage": ref("Usage"),
    },
    ("id", "object", "created", "model", "choices", "usage"),
)
COMPLETION = obj(
    {
        "id": STRING,
        "object": const("text_completion"),
        "created": INTEGER,
        "model": STRING,
        "choices": {
            "type": "array",
            "items": obj(
                {
                    "text": STRING,
                    "index": COUNT,
                    "logprobs": NO_LOGPROBS,
                    "finish_reason": STRING,
                },
                ("text", "index", "finish_reason"),
            ),
        },
        "usage": ref("Usage"),
    },
    ("id", "object", "created", "model", "choices", "usage"),
)
EMBEDDINGS = obj(
    {
        "object": const("list"),
        "data": {
            "type": "array",
            "items": obj(
                {
                    "object": const("embedding"),
                    "index": COUNT,
                    "embedding": {
                        "description": "Floats, or base64 of little-endian float32.",
                        "anyOf": [{"type": "array", "items": {"type": "number"}}, STRING],
                    },
                },
                ("object", "index", "embedding"),
            ),
        },
        "model": STRING,
        "usage": obj(
            {"prompt_tokens": COUNT, "total_tokens": COUNT}, ("prompt_tokens", "total_tokens")
        ),
    },
    ("object", "data", "model", "usage"),
)
MODEL = obj(
    {
        "id": STRING,
        "object": const("model"),
        "created": INTEGER,
        "owned_by": STRING,
        "category": STRING,
        "capabilities": {"type": "array", "items": STRING},
        "context_length": COUNT,
    },
    ("id", "object", "created", "owned_by"),
)
MODEL_LIST = obj(
    {"object": const("list"), "data": {"type": "array", "items": ref("Model")}}, ("object", "data")
)
ERROR = obj(
    {
        "error": obj(
            {
                "message": STRING,
                "type": STRING,
                "param": nullable(STRING),
                "code": nullable(STRING),
                "doc_url": STRING,
            },
            ("message", "type", "param", "code"),
        )
    },
    ("error",),
    description="OpenAI's error envelope; all four keys are always present.",
)
STREAM_EVENT = obj(
    {
        "data": {
            "type": "string",
            "description": (
                "A JSON chunk (`chat.completion.chunk` or `text_completion`), a final "
                '`{"error": {...}}` if the engine failed mid-stream, or `[DONE]`.'
            ),
        },
        "event": STRING,
        "id": STRING,
    },
    ("data",),
    description="One server-sent event of a `stream: true` response.",
)
HEALTH = obj({"status": const("ok")}, ("status",))
READY = obj(
    {
        "status": {"type": "string", "enum": ["ok", "unavailable"]},
        "services": {"type": "object", "additionalProperties": BOOLEAN},
    },
    ("status", "services"),
)

# ---------------------------------------------------------------- operations ----

REQUEST_ID_HEADER: JSONObject = {
    "description": "The caller's `X-Request-Id` if it is sane, else a new `req_...`.",
    "required": True,
    "schema": STRING,
}
RATE_LIMIT_HEADERS: JSONObject = {
    f"x-ratelimit-{kind}-{unit}": {"schema": STRING}
    for kind in ("limit", "remaining", "reset")
    for unit in ("requests", "tokens")
}
RETRY_AFTER: JSONObject = {"schema": STRING, "description": "Seconds to wait."}

ERROR_WHEN: dict[int, str] = {
    400: "The body is not valid JSON or breaks a field rule, or the model cannot serve it.",
    401: "The Authorization header is missing, not Bearer, or not a live key.",
    404: "The model is not in the catalog, or the key may not use it (`model_not_found`).",
    413: "The body is larger than `edge.max_body_bytes`.",
    429: "A rate limit, the concurrency limit or the token budget of the key.",
    431: "The request's headers together are larger than `edge.max_header_bytes`.",
    500: "An unexpected failure inside meshgate; never a stack trace.",
    503: "A mesh service or every engine replica is unavailable.",
    504: "The request's deadline passed before the engine answered.",
}


def error_response(status: int) -> JSONObject:
    headers: JSONObject = {"x-request-id": REQUEST_ID_HEADER}
    if status in (429, 503):
        headers["retry-after"] = RETRY_AFTER
    if status in (400, 404, 429):
        headers.update(RATE_LIMIT_HEADERS)
    return {
        "description": ERROR_WHEN[status],
        "headers": headers,
        "content": {"application/json": {"schema": ref("Error")}},
    }


def ok(schema: str, description: str, *, stream: bool = False) -> JSONObject:
    content: JSONObject = {"application/json": {"schema": ref(schema)}}
    if stream:
        # Before OpenAPI 3.2, an event stream's `schema` describes one event.
        content["text/event-stream"] = {"schema": ref("StreamEvent")}
    return {
        "description": description,
        "headers": {"x-request-id": REQUEST_ID_HEADER, **RATE_LIMIT_HEADERS},
        "content": content,
    }


def operation(
    operation_id: str,
    summary: str,
    success: JSONObject,
    errors: tuple[int, ...],
    *,
    body: str | None = None,
    parameters: list[JSONObject] | None = None,
) -> JSONObject:
    op: JSONObject = {
        "operationId": operation_id,
        "summary": summary,
        "responses": {"200": success, **{str(s): error_response(s) for s in errors}},
    }
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(body)}},
        }
    if parameters:
        op["parameters"] = parameters
    return op


def public(
    operation_id: str, summary: str, schema: JSONObject, extra: JSONObject | None = None
) -> JSONObject:
    """An unauthenticated GET: no bearer, no envelope on success."""
    responses: JSONObject = {
        "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
        "431": error_response(431),
    }
    responses.update(extra or {})
    op = {"operationId": operation_id, "summary": summary, "security": [], "responses": responses}
    return {"get": op}


INFERENCE_ERRORS = (400, 401, 404, 413, 429, 431, 500, 503, 504)
MODEL_ERRORS = (401, 431, 500, 503, 504)


def build() -> JSONObject:
    """The whole document, as plain JSON values."""
    model_id = {
        "name": "model_id",
        "in": "path",
        "required": True,
        "description": "A catalog model id; ids containing `/` may be sent raw or as `%2F`.",
        "schema": {"type": "string", "minLength": 1},
        "example": "meshgate/reference-mini",
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "meshgate",
            "version": _version(),
            "description": (
                "meshgate's OpenAI-compatible surface. Every error is OpenAI's envelope "
                '`{"error": {"message", "type", "param", "code"}}`; see docs/errors.md.'
            ),
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            "/v1/chat/completions": {
                "post": operation(
                    "createChatCompletion",
                    "Create a chat completion (JSON, or SSE with `stream: true`).",
                    ok("ChatCompletion", "The completion.", stream=True),
                    INFERENCE_ERRORS,
                    body="ChatCompletionRequest",
                )
            },
            "/v1/completions": {
                "post": operation(
                    "createCompletion",
                    "Create a legacy text completion (JSON, or SSE with `stream: true`).",
                    ok("Completion", "The completion.", stream=True),
                    INFERENCE_ERRORS,
                    body="CompletionRequest",
                )
            },
            "/v1/embeddings": {
                "post": operation(
                    "createEmbedding",
                    "Create embeddings.",
                    ok("CreateEmbeddingResponse", "The embeddings."),
                    INFERENCE_ERRORS,
                    body="EmbeddingRequest",
                )
            },
            "/v1/models": {
                "get": operation(
                    "listModels",
                    "List the models this key may use.",
                    ok("ModelList", "The serving models."),
                    MODEL_ERRORS,
                )
            },
            "/v1/models/{model_id}": {
                "get": operation(
                    "retrieveModel",
                    "Describe one model.",
                    ok("Model", "The model card."),
                    (*MODEL_ERRORS[:1], 404, *MODEL_ERRORS[1:]),
                    parameters=[model_id],
                )
            },
            "/healthz": public("healthz", "Liveness: the process answers.", ref("Health")),
            "/readyz": public(
                "readyz",
                "Readiness: every service the edge calls answers its health check.",
                ref("Ready"),
                {
                    "503": {
                        "description": "A service does not answer its health check.",
                        "content": {"application/json": {"schema": ref("Ready")}},
                    }
                },
            ),
            "/openapi.json": public("openapi", "This document.", ANY_OBJECT),
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer sk-...`",
                }
            },
            "schemas": {
                "ChatMessage": CHAT_MESSAGE,
                "ChatCompletionRequest": CHAT_REQUEST,
                "CompletionRequest": COMPLETION_REQUEST,
                "EmbeddingRequest": EMBEDDING_REQUEST,
                "Usage": USAGE,
                "ChatCompletion": CHAT_COMPLETION,
                "Completion": COMPLETION,
                "CreateEmbeddingResponse": EMBEDDINGS,
                "Model": MODEL,
                "ModelList": MODEL_LIST,
                "Error": ERROR,
                "StreamEvent": STREAM_EVENT,
                "Health": HEALTH,
                "Ready": READY,
            },
        },
    }


DOCUMENT: JSONObject = build()
DOCUMENT_JSON: bytes = orjson.dumps(DOCUMENT)


async def openapi_json(request: Request) -> Response:
    """`GET /openapi.json`: no auth, the same bytes every time."""
    return Response(
        DOCUMENT_JSON,
        media_type="application/json",
        headers={"x-request-id": request_id_of(request)},
    )
