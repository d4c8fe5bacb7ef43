"""meshgate's HTTP surface as an OpenAPI 3.1 document, served at `GET /openapi.json`.

The request and response schemas are not written here: they are pydantic's JSON
Schema of openai-python's own types (the params TypedDicts the validators are
authored against, and the response models the SDK parses), for the SDK version
pinned in pyproject.toml and recorded in services/validation/sdk_snapshot.json.
edge/openapi_overlay.py then applies what meshgate refuses or adds, from the
compatibility tables in services/validation/surface.py. OpenAPI 3.1, because
its schemas are JSON Schema 2020-12, the dialect pydantic writes.

The paths, the bearer scheme, the headers and the error responses (the statuses
in meshgate/errors.py's CATALOGUE that each endpoint can give) are meshgate's
own and are written below. The document is built and serialized once, on first
use (`document()`, `document_json()`), never per request.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from importlib import metadata
from typing import Any

import openai
import orjson
from openai.pagination import SyncPage
from openai.types import (
    Completion,
    CreateEmbeddingResponse,
    ErrorObject,
    Model,
    completion_create_params,
    embedding_create_params,
)
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat import completion_create_params as chat
from openai.types.responses import Response as ResponseObject
from openai.types.responses import ResponseStreamEvent, response_create_params
from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import Response

from edge import openapi_overlay as overlay
from services.validation import surface
from services.validation.sdk_snapshot import SNAPSHOT

JSONObject = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = overlay.REF_PREFIX + "{model}"


def _version() -> str:
    try:
        return metadata.version("meshgate")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def pinned_sdk() -> str:
    """The openai-python version the validators were audited against (the snapshot's)."""
    version: str = json.loads(SNAPSHOT.read_text())["openai_version"]
    return version


def ref(name: str) -> JSONObject:
    return {"$ref": overlay.REF_PREFIX + name}


def const(value: str) -> JSONObject:
    return {"type": "string", "const": value}


STRING: JSONObject = {"type": "string"}
BOOLEAN: JSONObject = {"type": "boolean"}
ANY_OBJECT: JSONObject = {"type": "object", "additionalProperties": True}

# ------------------------------------------------------------- from the SDK ----

# Component name -> the SDK type whose JSON Schema it is.
SDK_TYPES: dict[str, Any] = {
    "CreateChatCompletionRequest": chat.CompletionCreateParams,
    "CreateCompletionRequest": completion_create_params.CompletionCreateParams,
    "CreateEmbeddingRequest": embedding_create_params.EmbeddingCreateParams,
    "CreateResponseRequest": response_create_params.ResponseCreateParams,
    "Response": ResponseObject,
    "ResponseStreamEvent": ResponseStreamEvent,
    "ChatCompletion": ChatCompletion,
    "ChatCompletionChunk": ChatCompletionChunk,
    "Completion": Completion,
    "CreateEmbeddingResponse": CreateEmbeddingResponse,
    "Model": Model,
    "ModelList": SyncPage[Model],
    "ErrorObject": ErrorObject,
}


def _short(name: str) -> str:
    """`openai__types__chat__chat_completion__Choice` -> `ChatCompletionChoice`."""
    parts = name.split("__")[2:]
    if not parts:
        return name
    camel = [p.replace("_", " ").title().replace(" ", "") for p in parts[:-1]]
    module = camel[-1] if camel else ""
    prefix = "".join(camel[:-1]) if parts[-1].startswith(module) else module
    return prefix + parts[-1]


def _renamed(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, dict):
        out = {k: _renamed(v, names) for k, v in value.items()}
        target = out.get("$ref")
        if isinstance(target, str) and target.startswith(overlay.REF_PREFIX):
            out["$ref"] = overlay.REF_PREFIX + names[target.removeprefix(overlay.REF_PREFIX)]
        return out
    if isinstance(value, list):
        return [_renamed(v, names) for v in value]
    return value


def sdk_schemas() -> JSONObject:
    """pydantic's JSON Schema of SDK_TYPES, one component per type and per nested type."""
    adapters = [(name, "validation", TypeAdapter(tp)) for name, tp in SDK_TYPES.items()]
    tops, defs = TypeAdapter.json_schemas(adapters, ref_template=REF_TEMPLATE)  # type: ignore[arg-type]
    components: JSONObject = defs.get("$defs", {})
    names = {
        name: name if name.isidentifier() and "__" not in name else _short(name)
        for name in components
    }
    names = {old: (re.sub(r"\W", "", new) or old) for old, new in names.items()}
    taken = Counter(names.values())
    for old, new in names.items():
        # The Responses types bring models (`shared`) whose request twins (`shared_params`)
        # chat already had under the same short name: the request twin is the `...Param`.
        if taken[new] > 1 and "__shared_params__" in old:
            names[old] = new + "Param"
    for (name, _), top in tops.items():
        target = top.get("$ref", "").removeprefix(overlay.REF_PREFIX)
        if target:
            names[target] = name  # the type itself takes the component's name
    assert len(set(names.values())) == len(names), "two SDK types map to one component name"
    schemas: JSONObject = {names[old]: schema for old, schema in components.items()}
    for (name, _), top in tops.items():
        if "$ref" not in top:
            schemas[name] = top
    renamed: JSONObject = _renamed(schemas, names)
    return renamed


def schemas() -> JSONObject:
    """The SDK's schemas with meshgate's overlay applied, plus meshgate's own."""
    s = sdk_schemas()
    overlay.chat_rules(s, s["CreateChatCompletionRequest"])
    overlay.completion_rules(s, s["CreateCompletionRequest"])
    overlay.embedding_rules(s, s["CreateEmbeddingRequest"])
    overlay.response_rules(s, s["CreateResponseRequest"])
    overlay.requests(s, s["CreateChatCompletionRequest"], surface.CHAT_FIELDS)
    overlay.requests(s, s["CreateCompletionRequest"], surface.COMPLETIONS_FIELDS)
    overlay.requests(s, s["CreateEmbeddingRequest"], surface.EMBEDDINGS_FIELDS)
    overlay.requests(s, s["CreateResponseRequest"], surface.RESPONSES_FIELDS)
    overlay.responses(
        s,
        (s["ChatCompletion"], s["ChatCompletionChunk"], s["Completion"]),
        s["CompletionUsage"],
    )
    # Not Completion: it is also the shape of /v1/completions stream chunks (usage null).
    overlay.always_usage(s, s["ChatCompletion"])
    overlay.completion_stream_choices(s)
    overlay.model_card(s["Model"])
    overlay.base64_embedding(s["Embedding"])
    overlay.error_object(s["ErrorObject"])
    s["Error"] = {
        "type": "object",
        "properties": {"error": ref("ErrorObject")},
        "required": ["error"],
        "description": "OpenAI's error envelope; all four keys are always present.",
    }
    s["StreamEvent"] = STREAM_EVENT
    s["ResponseStreamFrame"] = RESPONSE_STREAM_FRAME
    s["Health"] = HEALTH
    s["Ready"] = READY
    return s


# ------------------------------------------------------------ meshgate's own ----

STREAM_EVENT: JSONObject = {
    "type": "object",
    "properties": {
        "data": {
            "description": (
                "A JSON chunk (`chat.completion.chunk`, or a `text_completion` on "
                '/v1/completions), a final `{"error": {...}}` if the engine failed '
                "mid-stream, or `[DONE]`."
            ),
            "anyOf": [
                const("[DONE]"),
                {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "anyOf": [ref("ChatCompletionChunk"), ref("Completion"), ref("Error")]
                    },
                },
            ],
        },
        "event": STRING,
        "id": STRING,
    },
    "required": ["data"],
    "description": "One server-sent event of a `stream: true` response.",
}
RESPONSE_STREAM_FRAME: JSONObject = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "description": "The event's `type`."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": ref("ResponseStreamEvent"),
            "description": "One Responses event, with its `sequence_number`; no `[DONE]`.",
        },
    },
    "required": ["event", "data"],
    "description": "One server-sent event of a `stream: true` `POST /v1/responses`.",
}
HEALTH: JSONObject = {
    "type": "object",
    "properties": {"status": const("ok")},
    "required": ["status"],
}
READY: JSONObject = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]},
        "services": {"type": "object", "additionalProperties": BOOLEAN},
    },
    "required": ["status", "services"],
}

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
SERVED_BY_HEADER: JSONObject = {
    "description": "The catalog model that answered: the one asked for (an alias resolved to "
    "its id), or the fallback that took over before the first token.",
    "required": True,
    "schema": STRING,
}

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


def ok(
    schema: str,
    description: str,
    *,
    stream: bool = False,
    events: str = "StreamEvent",
    served: bool = False,
) -> JSONObject:
    """A success; `served` for the answers a model gave (they name it in `x-meshgate-model`)."""
    content: JSONObject = {"application/json": {"schema": ref(schema)}}
    if stream:
        # Before OpenAPI 3.2, an event stream's `schema` describes one event.
        content["text/event-stream"] = {"schema": ref(events)}
    headers: JSONObject = {"x-request-id": REQUEST_ID_HEADER, **RATE_LIMIT_HEADERS}
    if served:
        headers["x-meshgate-model"] = SERVED_BY_HEADER
    return {"description": description, "headers": headers, "content": content}


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
STORED = (("get", "Retrieve"), ("delete", "Delete"))


def stored_response(verb: str, parameter: JSONObject) -> JSONObject:
    """A stored-response operation: always the 400 naming `response_id`, since nothing is
    stored; listed so that clients reading the document learn it is refused, and why."""
    return {
        "operationId": f"{verb.lower()}Response",
        "summary": f"{verb} a stored response: refused, meshgate stores none "
        '(400, `param: "response_id"`).',
        "security": [],
        "parameters": [parameter],
        "responses": {"400": error_response(400), "431": error_response(431)},
    }


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
    response_id = {
        "name": "response_id",
        "in": "path",
        "required": True,
        "description": "A response id; none is ever stored.",
        "schema": {"type": "string", "minLength": 1},
        "example": "resp_abc",
    }
    document: JSONObject = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "meshgate",
            "version": _version(),
            "description": (
                "meshgate's OpenAI-compatible surface. The request and response schemas are "
                f"openai-python {openai.__version__}'s own types, narrowed where meshgate "
                "refuses a field (`x-meshgate-support`) and extended where it adds one; fields "
                "marked `x-meshgate-pass-through` are forwarded to the engine untouched. Every "
                'error is OpenAI\'s envelope `{"error": {"message", "type", "param", "code"}}`; '
                "see docs/errors.md and docs/compatibility.md."
            ),
            "x-openai-python": openai.__version__,
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            "/v1/chat/completions": {
                "post": operation(
                    "createChatCompletion",
                    "Create a chat completion (JSON, or SSE with `stream: true`).",
                    ok("ChatCompletion", "The completion.", stream=True, served=True),
                    INFERENCE_ERRORS,
                    body="CreateChatCompletionRequest",
                )
            },
            "/v1/completions": {
                "post": operation(
                    "createCompletion",
                    "Create a legacy text completion (JSON, or SSE with `stream: true`).",
                    ok("Completion", "The completion.", stream=True, served=True),
                    INFERENCE_ERRORS,
                    body="CreateCompletionRequest",
                )
            },
            "/v1/embeddings": {
                "post": operation(
                    "createEmbedding",
                    "Create embeddings.",
                    ok("CreateEmbeddingResponse", "The embeddings.", served=True),
                    INFERENCE_ERRORS,
                    body="CreateEmbeddingRequest",
                )
            },
            "/v1/responses": {
                "post": operation(
                    "createResponse",
                    "Create a response, statelessly (JSON, or SSE events with `stream: true`).",
                    ok(
                        "Response",
                        "The response.",
                        stream=True,
                        events="ResponseStreamFrame",
                        served=True,
                    ),
                    INFERENCE_ERRORS,
                    body="CreateResponseRequest",
                )
            },
            "/v1/responses/{response_id}": {
                method: stored_response(verb, response_id) for method, verb in STORED
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
            "schemas": schemas(),
        },
    }
    for path, refusals in overlay.REFUSALS.items():
        document["paths"][path]["post"][overlay.REFUSALS_KEY] = [
            {"match": match, "why": why} for match, why in refusals
        ]
    return document


@functools.cache
def document() -> JSONObject:
    """The document, built on first use (about 0.1 s of pydantic) and kept."""
    return build()


@functools.cache
def document_json() -> bytes:
    return orjson.dumps(document())


def __getattr__(name: str) -> Any:
    """`DOCUMENT` and `DOCUMENT_JSON`, built on first access rather than at import."""
    if name == "DOCUMENT":
        return document()
    if name == "DOCUMENT_JSON":
        return document_json()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def openapi_json(request: Request) -> Response:
    """`GET /openapi.json`: no auth, the same bytes every time."""
    return Response(document_json(), media_type="application/json")
