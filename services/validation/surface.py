"""meshgate's compatibility matrices: the page's tables, as data.

docs/compatibility.md is generated from these tables (scripts/gen_docs.py) and
tests/test_docs.py checks them against the validators' field sets, so the page
and the code cannot drift apart. A bump of the SDK pin updates both together.
"""

from __future__ import annotations

from typing import Literal

Support = Literal["Yes", "Partial", "No"]
Row = tuple[str, Support, str]

ENDPOINTS: tuple[Row, ...] = (
    (
        "POST /v1/chat/completions",
        "Yes",
        "Streaming, tools, vision (on models with `vision`), seed, response_format.",
    ),
    (
        "POST /v1/completions",
        "Yes",
        "Legacy; prefer chat completions. A list prompt gives one choice per prompt.",
    ),
    (
        "POST /v1/embeddings",
        "Yes",
        '`encoding_format` omitted → floats, `"base64"` → little-endian float32; an explicit null is a 400.',
    ),
    (
        "GET /v1/models",
        "Yes",
        "Only serving models, each with `category`, `capabilities` and `context_length`.",
    ),
    ("GET /v1/models/{id}", "Yes", "Ids may contain `/`, raw or as `%2F`."),
    (
        "POST /v1/responses",
        "Partial",
        "Stateless: served as the chat completion it translates into (same auth, quota, "
        "routing and billing; the ledger says `responses`). Streaming, function tools, "
        "vision, `text.format`. Not on the gRPC entry point, which serves chat.",
    ),
    (
        "GET, DELETE /v1/responses/{id}",
        "No",
        'Nothing is stored: 400 with `param: "response_id"` (also `/cancel` and `/input_items`).',
    ),
    (
        "POST /v1/fine-tuning",
        "No",
        "404: fine-tune elsewhere, then add the model to the catalog (the message is `edge.unsupported.fine_tuning`).",
    ),
    ("POST /v1/assistants, /v1/threads, /v1/runs", "No", "404: not planned."),
    ("POST /v1/batches", "No", "404: use client-side fan-out instead."),
    ("GET /v1/files, /v1/files/*", "No", "404: use inline request payloads."),
)

# Request fields of POST /v1/chat/completions. The first word of each name is the body field.
CHAT_FIELDS: tuple[Row, ...] = (
    ("model", "Yes", "Required; unknown ids get 404 `model_not_found`."),
    (
        "messages",
        "Yes",
        "Required, non-empty; every role (system, developer, user, assistant, tool, function) and content-part shape.",
    ),
    ("temperature", "Yes", "0..2."),
    ("top_p", "Yes", "0..1."),
    (
        "max_tokens",
        "Yes",
        "≥ 1; prompt + max_tokens beyond the context is 400 `context_length_exceeded`.",
    ),
    ("max_completion_tokens", "Yes", "Same as max_tokens."),
    ("stop", "Yes", "A string or up to 4 strings."),
    ("seed", "Yes", "Deterministic on the reference engine."),
    ("user", "Yes", "Forwarded to the engine."),
    ("stream", "Yes", "Server-sent events, byte for byte as OpenAI frames them."),
    (
        "stream_options",
        "Yes",
        "`include_usage: true` adds the final usage chunk; only with `stream: true`.",
    ),
    ("tools", "Yes", "Function tools, on models labeled `tool_use`; `custom` tools are a 400."),
    ("tool_choice", "Yes", "`none`, `auto`, `required`, a named function, or `allowed_tools`."),
    ("response_format: json_object", "Yes", "On every chat model."),
    (
        "response_format: json_schema",
        "Partial",
        "Where the model has `json_schema`; otherwise downgraded to json_object, with the "
        "schema given to the model as a system message so that it can still follow it.",
    ),
    ("logprobs", "No", '`true` is a 400 with `param: "logprobs"`.'),
    ("top_logprobs", "No", 'Any value is a 400 with `param: "top_logprobs"`.'),
    ("n", "No", 'A single choice; n > 1 is a 400 with `param: "n"`.'),
    ("presence_penalty", "Yes", "-2..2."),
    ("frequency_penalty", "Yes", "-2..2."),
)

# Request fields of POST /v1/responses (openai-python's ResponseCreateParams).
RESPONSES_FIELDS: tuple[Row, ...] = (
    ("model", "Yes", "Required; a chat model."),
    (
        "input",
        "Yes",
        "Required: a string, or items: messages (`input_text`, `input_image` by URL, and "
        "assistant `output_text`), `function_call` and `function_call_output`. "
        "`item_reference` is a 400; `reasoning` items are dropped; `input_file` and "
        "`file_id` images are a 400.",
    ),
    ("instructions", "Yes", "Sent as the first (system) message."),
    (
        "tools",
        "Partial",
        "`function` tools, on models labeled `tool_use`. Built-in tools (web_search, "
        "file_search, computer_use_preview, code_interpreter, mcp, image_generation, "
        'local_shell) and `custom` are a 400 with `param: "tools[i].type"`.',
    ),
    (
        "tool_choice",
        "Partial",
        "`none`, `auto`, `required`, a named function, or `allowed_tools`; hosted tool types "
        'are a 400 with `param: "tool_choice.type"`.',
    ),
    ("text: format json_object", "Yes", "On every chat model."),
    (
        "text: format json_schema",
        "Partial",
        "As chat's response_format json_schema: downgraded to json_object, with the schema "
        "as a system message, on models without `json_schema`.",
    ),
    ("max_output_tokens", "Yes", "≥ 16, as OpenAI's; a cut answer is `incomplete`."),
    ("temperature", "Yes", "0..2."),
    ("top_p", "Yes", "0..1."),
    ("metadata", "Yes", "Up to 16 string pairs; repeated in the answer, not sent to the engine."),
    ("user", "Yes", "Forwarded to the engine."),
    ("parallel_tool_calls", "Yes", "Forwarded to the engine with tools."),
    ("stream", "Yes", "The Responses event sequence, each event with `sequence_number`."),
    ("store", "Partial", "Accepted; the answer says `store: false`, nothing is stored."),
    ("previous_response_id", "No", 'Stateless: a 400 with `param: "previous_response_id"`.'),
    ("conversation", "No", 'Stateless: a 400 with `param: "conversation"`.'),
    ("prompt", "No", 'Stored prompt templates: a 400 with `param: "prompt"`.'),
    ("background", "No", '`true` is a 400 with `param: "background"`.'),
    ("top_logprobs", "No", 'Any value is a 400 with `param: "top_logprobs"`.'),
    ("reasoning", "Partial", "`effort` is forwarded as chat's `reasoning_effort`."),
    ("include", "Partial", "Accepted; there is nothing extra to include."),
    ("truncation", "Partial", "Accepted; nothing is truncated (a long input is a 400)."),
    ("max_tool_calls", "Partial", "Accepted; it bounds built-in tools, of which there are none."),
    ("stream_options", "Partial", "Accepted; events are never obfuscated."),
    ("service_tier", "Yes", "Forwarded to the engine."),
    ("prompt_cache_key", "Yes", "Forwarded to the engine."),
    ("safety_identifier", "Yes", "Forwarded to the engine."),
)

COMPLETIONS_FIELDS: tuple[Row, ...] = (
    ("model", "Yes", "Required."),
    ("prompt", "Yes", "A string, strings, token ids or lists of token ids."),
    ("max_tokens", "Yes", "Defaults to 16, as OpenAI's does."),
    ("temperature", "Yes", "0..2."),
    ("top_p", "Yes", "0..1."),
    ("stop", "Yes", "A string or up to 4 strings."),
    ("seed", "Yes", ""),
    ("user", "Yes", ""),
    ("stream", "Yes", ""),
    ("stream_options", "Yes", "`include_usage`."),
    ("echo", "Yes", ""),
    ("suffix", "Yes", "Forwarded to the engine."),
    ("presence_penalty", "Yes", "-2..2."),
    ("frequency_penalty", "Yes", "-2..2."),
    ("n", "No", 'n > 1 is a 400 with `param: "n"`.'),
    ("logprobs", "No", 'Any value is a 400 with `param: "logprobs"`.'),
)

EMBEDDINGS_FIELDS: tuple[Row, ...] = (
    ("model", "Yes", "Required."),
    ("input", "Yes", "A string, strings, token ids or lists of token ids; no empty strings."),
    ("encoding_format", "Yes", "`float` (default) or `base64`; an explicit null is a 400."),
    ("dimensions", "Yes", "Up to the model's native size."),
    ("user", "Yes", ""),
)

RESPONSE_FIELDS: tuple[Row, ...] = (
    ("id, created, model, choices, usage", "Yes", "`model` is the catalog id you asked for."),
    (
        "usage.cache_read_input_tokens, usage.cache_creation_input_tokens",
        "Yes",
        "Always present; zero on models without prompt caching. `usage.prompt_tokens_details.cached_tokens` carries the same number.",
    ),
    ("system_fingerprint", "No", "Never sent, even when an engine sends one."),
)

PASS_THROUGH = (
    "Fields outside these tables (for example `top_k`, `metadata`, `parallel_tool_calls`, "
    "`reasoning_effort`) are forwarded to the engine untouched, which accepts or rejects them."
)


RESPONSES_NOTE = (
    "A `response` answer has `id` (`resp_...`), `status` (`completed`, or `incomplete` with "
    "`incomplete_details.reason: max_output_tokens`), `output` items (`message` with "
    "`output_text`, and `function_call`), `usage` (`input_tokens`, `output_tokens`, "
    "`total_tokens`, `input_tokens_details.cached_tokens`) and the request's settings. "
    "A failure after a stream began is a `response.failed` event. "
    "The gRPC entry point for internal consumers does not offer Responses: it serves chat, "
    "which is what every Responses request becomes."
)


def field_names(rows: tuple[Row, ...]) -> set[str]:
    """Body fields named by a table's rows (`response_format: json_object` → response_format)."""
    return {name.split(":")[0].strip() for name, _, _ in rows}


def _table(title: str, header: str, rows: tuple[Row, ...]) -> list[str]:
    lines = [f"## {title}", "", f"| {header} | Supported | Notes |", "|---|---|---|"]
    lines += [f"| `{name}` | {support} | {notes} |" for name, support, notes in rows]
    return [*lines, ""]


def compatibility_markdown(sdk_version: str) -> str:
    lines = [
        "# Compatibility",
        "",
        "<!-- Generated by `python scripts/gen_docs.py` from services/validation/surface.py; do not edit by hand. -->",
        "",
        f"meshgate implements a subset of OpenAI's v1 surface. Its validators are authored against openai-python {sdk_version}",
        "(`CompletionCreateParamsBase`; `ResponseCreateParamsBase` for Responses), pinned in pyproject.toml; `services/validation/sdk_snapshot.json` records that",
        "SDK's request shape, and a test fails when the installed SDK differs. Code written against api.openai.com works by",
        "changing only `base_url` and `model` for everything marked Yes.",
        "",
        *_table("Endpoints", "Endpoint", ENDPOINTS),
        *_table("Request fields: POST /v1/chat/completions", "Field", CHAT_FIELDS),
        *_table("Request fields: POST /v1/responses", "Field", RESPONSES_FIELDS),
        RESPONSES_NOTE,
        "",
        *_table("Request fields: POST /v1/completions", "Field", COMPLETIONS_FIELDS),
        *_table("Request fields: POST /v1/embeddings", "Field", EMBEDDINGS_FIELDS),
        PASS_THROUGH,
        "",
        *_table("Response fields", "Field", RESPONSE_FIELDS),
        "## Bumping the SDK pin",
        "",
        "1. Change `openai==` in pyproject.toml (and `openai-agents==` in the test extra, to a release",
        "   that accepts the new pin) and reinstall.",
        "2. Run `.venv/bin/python -m services.validation.sdk_snapshot` to list what changed in the request shape.",
        "3. Audit each change against the validators in `services/validation/` and the tables in `surface.py`.",
        "4. Run `.venv/bin/python -m services.validation.sdk_snapshot --write` and `python scripts/gen_docs.py`,",
        "   and commit the snapshot, the code and the docs together.",
        "",
    ]
    return "\n".join(lines)
