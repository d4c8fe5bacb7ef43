"""What meshgate's surface adds to, or takes from, openai-python's types.

edge/openapi.py derives the request and response schemas from the pinned SDK;
this module narrows and extends them where meshgate differs, and nowhere else.
Which fields differ comes from the compatibility tables in
services/validation/surface.py (the page's single source), so a row added
there changes the document too:

- a request field marked "No" accepts only JSON null (omitted) or OpenAI's
  default value, which asks for nothing (`n: 1`, `logprobs: false`); anything
  else is a 400 naming the field;
- a request field outside the tables is marked `x-meshgate-pass-through`: the
  validators forward it to the engine untouched, which accepts or rejects it;
- a request field in the tables carries its row's support and notes;
- a response field marked "No" is never sent; the usage fields marked "Yes"
  are always sent (with `prompt_tokens_details.cached_tokens`);
- `POST /v1/responses` takes function tools and the input items a chat engine
  can be given, and nothing that needs stored state (response_rules).

What no table holds is written here once: the model card's extra keys
(edge/render.py's model_card) and the error envelope's `doc_url` and always-
present keys (the page's "Error shape").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from services.validation import surface

JSONObject = dict[str, Any]
REF_PREFIX = "#/components/schemas/"
SUPPORT = "x-meshgate-support"
PASS_THROUGH = "x-meshgate-pass-through"
REFUSALS_KEY = "x-meshgate-refusals"
# OpenAI's defaults of the fields meshgate does not support: sending one asks for nothing.
NEUTRAL: dict[str, object] = {"n": 1, "logprobs": False, "background": False}
COUNT: JSONObject = {"type": "integer", "minimum": 0}
NULL: JSONObject = {"type": "null"}


def resolve(schemas: JSONObject, schema: JSONObject) -> JSONObject:
    """The component a `$ref` names, or the schema itself."""
    ref = schema.get("$ref")
    return schemas[ref.removeprefix(REF_PREFIX)] if isinstance(ref, str) else schema


def variants(schemas: JSONObject, schema: JSONObject) -> Iterator[JSONObject]:
    """The object schemas behind a schema: each branch of an anyOf, refs resolved."""
    target = resolve(schemas, schema)
    if "anyOf" in target:
        for branch in target["anyOf"]:
            yield from variants(schemas, branch)
    elif target.get("type") == "object":
        yield target


def _accepts(schemas: JSONObject, schema: JSONObject, value: object) -> bool:
    """Whether `value` fits a (pydantic-made) scalar schema: enough for NEUTRAL's values."""
    target = resolve(schemas, schema)
    if "anyOf" in target:
        return any(_accepts(schemas, branch, value) for branch in target["anyOf"])
    kinds: dict[str, type | tuple[type, ...]] = {
        "boolean": bool,
        "integer": int,
        "number": (int, float),
        "null": type(None),
    }
    kind = kinds.get(target.get("type", ""))
    if kind is None or not isinstance(value, kind):
        return False
    return isinstance(value, bool) == (target["type"] == "boolean")


def _refused(schemas: JSONObject, schema: JSONObject, name: str, notes: str) -> JSONObject:
    """A "No" field: the SDK's shape, narrowed to null and OpenAI's default (if it fits)."""
    allowed: list[object] = [None]
    if name in NEUTRAL and _accepts(schemas, schema, NEUTRAL[name]):
        allowed.insert(0, NEUTRAL[name])
    return {
        "allOf": [schema, {"enum": allowed}],
        "description": f"Not supported by meshgate: {notes}",
        SUPPORT: "No",
    }


def requests(schemas: JSONObject, request: JSONObject, rows: tuple[surface.Row, ...]) -> None:
    """Apply one endpoint's field table to every variant of its request schema."""
    table: dict[str, list[surface.Row]] = {name.split(":")[0].strip(): [] for name, _, _ in rows}
    for name, support, notes in rows:
        table[name.split(":")[0].strip()].append((name, support, notes))
    for variant in variants(schemas, request):
        properties: JSONObject = variant["properties"]
        for field, schema in list(properties.items()):
            entries = table.get(field)
            if entries is None:
                properties[field] = {
                    **schema,
                    "description": surface.PASS_THROUGH,
                    PASS_THROUGH: True,
                }
            elif any(support == "No" for _, support, _ in entries):
                properties[field] = _refused(schemas, schema, field, entries[0][2])
            else:
                notes = " ".join(f"`{n}`: {s}. {t}" if ":" in n else t for n, s, t in entries)
                support = "Partial" if any(s == "Partial" for _, s, _ in entries) else "Yes"
                properties[field] = {**schema, SUPPORT: support}
                if notes.strip():
                    properties[field]["description"] = notes.strip()


def _response_rows() -> Iterator[tuple[str, surface.Support, str]]:
    """(dotted field, support, notes) for each field named by the response table."""
    for names, support, notes in surface.RESPONSE_FIELDS:
        for name in names.split(","):
            yield name.strip(), support, notes


def responses(schemas: JSONObject, roots: tuple[JSONObject, ...], usage: JSONObject) -> None:
    """The response table: "No" fields are never sent; usage's "Yes" fields always are."""
    for field, support, notes in _response_rows():
        if support == "No":
            for root in roots:
                for variant in variants(schemas, root):
                    if field in variant.get("properties", {}):
                        variant["properties"][field] = {
                            "not": {},
                            "description": f"Never sent: {notes}",
                            SUPPORT: "No",
                        }
        elif field.startswith("usage."):
            key = field.removeprefix("usage.")
            usage["properties"][key] = {**COUNT, "description": notes, SUPPORT: support}
            usage["required"] = [*usage["required"], key]
    # "usage.prompt_tokens_details.cached_tokens carries the same number": always there.
    details = usage["properties"]["prompt_tokens_details"]
    usage["properties"]["prompt_tokens_details"] = next(
        branch for branch in details["anyOf"] if branch != NULL
    )
    usage["required"] = [*usage["required"], "prompt_tokens_details"]
    cached = resolve(schemas, usage["properties"]["prompt_tokens_details"])
    cached["required"] = ["cached_tokens"]
    cached["properties"]["cached_tokens"] = COUNT


def always_usage(schemas: JSONObject, *roots: JSONObject) -> None:
    """A non-streaming completion always carries usage (the SDK's type has it optional)."""
    for root in roots:
        target = resolve(schemas, root)
        target["properties"]["usage"] = next(
            b for b in target["properties"]["usage"]["anyOf"] if b != NULL
        )
        target["required"] = [*target["required"], "usage"]


def model_card(model: JSONObject) -> None:
    """edge/render.py's model_card: the catalog's keys after OpenAI's four."""
    model["properties"].update(
        {
            "category": {
                "type": "string",
                "description": "The kind of model, to pick the matching endpoint.",
            },
            "capabilities": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Labels such as `tool_use`, `vision`, `json_schema`.",
            },
            "context_length": {**COUNT, "description": "Prompt plus completion, in tokens."},
        }
    )
    model["required"] = [*model["required"], "category", "capabilities", "context_length"]


def base64_embedding(embedding: JSONObject) -> None:
    """`encoding_format: "base64"` answers with a string, as OpenAI does; the SDK's type
    has only the list because the SDK decodes the string before its users see it."""
    floats = embedding["properties"]["embedding"]
    embedding["properties"]["embedding"] = {
        "anyOf": [
            floats,
            {
                "type": "string",
                "contentEncoding": "base64",
                "description": 'Little-endian float32, for `encoding_format: "base64"`.',
            },
        ],
        "title": floats.get("title", "Embedding"),
    }


def error_object(error: JSONObject) -> None:
    """The page's error shape: the four keys always present, and the `doc_url` extension."""
    error["properties"]["doc_url"] = {
        "type": "string",
        "description": "meshgate's extension on auth and quota failures: where to fix it.",
    }
    error["required"] = ["message", "type", "param", "code"]


# ------------------------------------------- rules the SDK's types do not carry ----
#
# openai-python's TypedDicts say which types a field takes, not the bounds OpenAI's API
# enforces on them (its ranges, non-empty arrays, at most 4 stops, tool-name patterns)
# nor meshgate's own (no `custom` tools, token ids of cl100k, integers that fit the
# protobuf fields behind the validators). Each is written here once, as JSON Schema, so
# a request the document allows is one meshgate serves: REFUSALS lists the few rules
# that depend on the model or on another field's value, which a schema cannot state.

BOUNDS: dict[str, tuple[float, float]] = {
    "temperature": (0, 2),
    "top_p": (0, 1),
    "presence_penalty": (-2, 2),
    "frequency_penalty": (-2, 2),
}
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# cl100k's ordinary tokens: prompts given as token ids are decoded with it.
MAX_TOKEN_ID = 100255
NAME_PATTERN = "^[a-zA-Z0-9_-]+$"
NAME_MAX_LENGTH = 64
IMAGE_URL_PATTERN = "^(https?://|data:image/)"

# Refusals of bodies the document allows: (error code, or a regex over "param: message",
# why). The schemathesis test accepts a 400 for a valid body naming a catalog model only
# for these.
REFUSALS: dict[str, tuple[tuple[str, str], ...]] = {
    "/v1/chat/completions": (
        ("context_length_exceeded", "The prompt plus max_tokens exceed the model's context."),
        ("^tools: ", "The model lacks the `tool_use` capability."),
        (r"^messages\[\d+\]\.content\[\d+\]: ", "An image part, on a model without `vision`."),
        (r"^tool_choice\.", "A named function that is not among `tools`."),
    ),
    "/v1/completions": (
        ("context_length_exceeded", "The prompt plus max_tokens exceed the model's context."),
    ),
    "/v1/embeddings": (
        ("context_length_exceeded", "An input longer than the model's context."),
        ("^dimensions: ", "More dimensions than the model's native size."),
    ),
    "/v1/responses": (
        ("context_length_exceeded", "The input plus max_output_tokens exceed the model's context."),
        ("^tools: ", "The model lacks the `tool_use` capability."),
        (r"^input\[\d+\]\.content\[\d+\]: ", "An image part, on a model without `vision`."),
        (
            "^tool_choice",
            "A function that is not among `tools`, or `required` without tools.",
        ),
        ("^model: ", "A model that is not a chat model."),
    ),
}
# The input items a chat engine can be given (the rest need OpenAI's stored state or hosted
# tools); reasoning items are accepted and dropped.
RESPONSE_ITEMS = (
    "EasyInputMessageParam",
    "ResponseInputParamMessage",
    "ResponseOutputMessageParam",
    "ResponseFunctionToolCallParam",
    "ResponseInputParamFunctionCallOutput",
    "ResponseReasoningItemParam",  # last: see response_rules' `contains`
)
RESPONSE_PARTS = ("ResponseInputTextParam", "ResponseInputImageParam")
HOSTED_TOOL_CHOICES = ("ToolChoiceTypesParam", "ToolChoiceMcpParam", "ToolChoiceCustomParam")


def branches(schema: JSONObject, kind: str) -> Iterator[JSONObject]:
    """The branches of a (pydantic-made) schema that are of JSON type `kind`."""
    if "anyOf" in schema:
        for branch in schema["anyOf"]:
            yield from branches(branch, kind)
    elif "allOf" in schema:
        yield from branches(schema["allOf"][0], kind)
    elif schema.get("type") == kind:
        yield schema


def _drop(schema: JSONObject, predicate: Any) -> None:
    """Remove the anyOf branches for which `predicate(branch)` holds."""
    schema["anyOf"] = [b for b in schema["anyOf"] if not predicate(b)]


def _is_ref(branch: JSONObject, *names: str) -> bool:
    return branch.get("$ref") in {REF_PREFIX + n for n in names}


def _not_null(properties: JSONObject, field: str) -> None:
    _drop(properties[field], lambda b: b == NULL)


def _sampling(properties: JSONObject) -> None:
    for field, (low, high) in BOUNDS.items():
        for branch in branches(properties[field], "number"):
            branch.update(minimum=low, maximum=high)
    for branch in branches(properties["stop"], "array"):
        branch["maxItems"] = 4
    for branch in branches(properties["seed"], "integer"):
        branch.update(minimum=INT64_MIN, maximum=INT64_MAX)


def _token_lists(schema: JSONObject, *, non_empty_strings: bool) -> None:
    """`prompt` / `input`: non-empty lists, cl100k token ids, and (embeddings) no empty strings."""
    for array in branches(schema, "array"):
        array["minItems"] = 1
        items = array["items"]
        for token in branches(items, "integer"):
            token.update(minimum=0, maximum=MAX_TOKEN_ID)
        for inner in branches(items, "array"):
            inner["minItems"] = 1
            inner["items"].update(minimum=0, maximum=MAX_TOKEN_ID)
        for text in branches(items, "string"):
            if non_empty_strings:
                text["minLength"] = 1
    for text in branches(schema, "string"):
        if non_empty_strings:
            text["minLength"] = 1


def _only_when_streaming(schemas: JSONObject, request: JSONObject) -> None:
    """`stream_options` is a 400 unless `stream` is true: null in the non-streaming variant."""
    for variant in variants(schemas, request):
        stream = variant["properties"]["stream"]
        if not any(b.get("const") is True for b in branches(stream, "boolean")):
            options = variant["properties"]["stream_options"]
            options["anyOf"] = [NULL]


def chat_rules(schemas: JSONObject, request: JSONObject) -> None:
    for variant in variants(schemas, request):
        p = variant["properties"]
        p["messages"]["minItems"] = 1
        _sampling(p)
        for field in ("max_tokens", "max_completion_tokens"):
            for branch in branches(p[field], "integer"):
                branch.update(minimum=1, maximum=INT64_MAX)
        # `custom` tools are a 400 (the page's tools row): function tools only.
        p["tools"]["items"] = {"$ref": REF_PREFIX + "ChatCompletionFunctionToolParam"}
        _drop(p["tool_choice"], lambda b: _is_ref(b, "ChatCompletionNamedToolChoiceCustomParam"))
        # tool_choice is only allowed when tools are given.
        variant["if"] = {"required": ["tool_choice"], "properties": {"tool_choice": {"not": NULL}}}
        variant["then"] = {
            "required": ["tools"],
            "properties": {"tools": {"type": "array", "minItems": 1}},
        }
    _only_when_streaming(schemas, request)
    for role in ("Developer", "System", "User", "Tool", "Assistant"):
        message = schemas[f"ChatCompletion{role}MessageParam"]
        for array in branches(message["properties"]["content"], "array"):
            array["minItems"] = 1
    assistant = schemas["ChatCompletionAssistantMessageParam"]
    assistant["properties"]["tool_calls"]["items"] = {
        "$ref": REF_PREFIX + "ChatCompletionMessageFunctionToolCallParam"
    }
    # An assistant message carries content, tool calls, a refusal or a function call.
    assistant["anyOf"] = [
        {"required": [field], "properties": {field: schema}}
        for field, schema in (
            ("content", {"not": NULL}),
            ("tool_calls", {"type": "array", "minItems": 1}),
            ("refusal", {"type": "string"}),
            ("function_call", {"type": "object"}),
        )
    ]
    for component in ("FunctionDefinition", "JSONSchema"):
        schemas[component]["properties"]["name"].update(
            pattern=NAME_PATTERN, maxLength=NAME_MAX_LENGTH
        )
    schemas["ImageURL"]["properties"]["url"]["pattern"] = IMAGE_URL_PATTERN


def response_rules(schemas: JSONObject, request: JSONObject) -> None:
    """services/validation/responses.py's rules: what is stateless and chat-shaped."""
    for variant in variants(schemas, request):
        p = variant["properties"]
        variant["required"] = ["model", "input"]
        for array in branches(p["input"], "array"):
            array["minItems"] = 1
            array["items"] = {"anyOf": [ref_to(name) for name in RESPONSE_ITEMS]}
            # Reasoning items are dropped, so something else must be there to answer.
            array["contains"] = {"anyOf": [ref_to(name) for name in RESPONSE_ITEMS[:-1]]}
        p["tools"]["items"] = ref_to("FunctionToolParam")  # built-in tools are a 400
        _drop(p["tool_choice"], lambda b: _is_ref(b, *HOSTED_TOOL_CHOICES))
        for field, (low, high) in BOUNDS.items():
            for branch in branches(p.get(field, {}), "number"):
                branch.update(minimum=low, maximum=high)
        for branch in branches(p["max_output_tokens"], "integer"):
            branch.update(minimum=16, maximum=INT64_MAX)  # OpenAI's own floor
        for branch in branches(p["max_tool_calls"], "integer"):
            branch.update(minimum=1, maximum=INT64_MAX)
        for branch in branches(p["metadata"], "object"):
            branch.update(
                maxProperties=16,
                propertyNames={"maxLength": 64},
                additionalProperties={"type": "string", "maxLength": 512},
            )
    for name in ("EasyInputMessageParam", "ResponseInputParamMessage"):
        content = schemas[name]["properties"]["content"]
        for array in branches(content, "array"):
            array["items"] = {"anyOf": [ref_to(part) for part in RESPONSE_PARTS]}
    # An assistant message sent back as input has output parts (ResponseOutputMessageParam);
    # the easy form's parts are input parts, so an assistant's easy content is a string.
    schemas["EasyInputMessageParam"]["if"] = {
        "required": ["role"],
        "properties": {"role": {"const": "assistant"}},
    }
    schemas["EasyInputMessageParam"]["then"] = {"properties": {"content": {"type": "string"}}}
    image = schemas["ResponseInputImageParam"]
    image["properties"]["image_url"] = {"type": "string", "pattern": IMAGE_URL_PATTERN}
    image["properties"]["file_id"] = NULL  # stored files: send the image inline
    image["required"] = [*image["required"], "image_url"]
    for component in ("FunctionToolParam", "ResponseFormatTextJSONSchemaConfigParam"):
        schemas[component]["properties"]["name"].update(
            pattern=NAME_PATTERN, maxLength=NAME_MAX_LENGTH
        )


def ref_to(name: str) -> JSONObject:
    return {"$ref": REF_PREFIX + name}


def completion_rules(schemas: JSONObject, request: JSONObject) -> None:
    for variant in variants(schemas, request):
        p = variant["properties"]
        _not_null(p, "prompt")
        _token_lists(p["prompt"], non_empty_strings=False)
        _sampling(p)
        for branch in branches(p["max_tokens"], "integer"):
            branch.update(minimum=0, maximum=INT64_MAX)
    _only_when_streaming(schemas, request)


def embedding_rules(schemas: JSONObject, request: JSONObject) -> None:
    for variant in variants(schemas, request):
        p = variant["properties"]
        _token_lists(p["input"], non_empty_strings=True)
        p["dimensions"].update(minimum=1, maximum=INT32_MAX)


def completion_stream_choices(schemas: JSONObject) -> None:
    """/v1/completions streams `Completion` chunks whose `finish_reason` is null until the last,
    as OpenAI sends them; the SDK's CompletionChoice (parsed without validation) omits that."""
    choice = schemas["CompletionChoice"]["properties"]
    choice["finish_reason"] = {
        "anyOf": [choice["finish_reason"], NULL],
        "description": "null on stream chunks before the last one.",
    }
