"""The catalog's rules and the billing rule as pure functions: no processes.

The end-to-end side (the same refusals leave a key's buckets untouched) is
tests/test_refuse_before_charging.py; the tables in tests/test_validation.py
keep the wire shape of each refusal.
"""

from __future__ import annotations

import json

import pytest

from meshgate import billing, tokens
from meshgate.config import ModelConfig
from meshgate.errors import ApiError
from meshgate.structs import from_dict
from meshgate.v1 import common_pb2, inference_pb2
from services.validation import catalog
from services.validation.chat import validate_chat
from services.validation.completions import validate_completion
from services.validation.embeddings import validate_embedding

ENGINE = [{"kind": "grpc"}]
PLAIN = ModelConfig.model_validate(
    {"id": "plain", "category": "text", "context_length": 100, "engines": ENGINE}
)
RICH = ModelConfig.model_validate(
    {
        "id": "rich",
        "category": "multimodal",
        "capabilities": ["tool_use", "vision", "json_schema"],
        "context_length": 1000,
        "engines": ENGINE,
    }
)
EMB = ModelConfig.model_validate(
    {
        "id": "emb",
        "category": "embeddings",
        "context_length": 50,
        "dimensions": 8,
        "engines": ENGINE,
    }
)
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def _chat(**fields: object) -> inference_pb2.ChatCompletionRequest:
    return validate_chat(
        {"model": "plain", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def _refused(call: object) -> ApiError:
    with pytest.raises(ApiError) as caught:
        assert callable(call)
        call()
    return caught.value


def test_an_unknown_model_is_404_model_not_found() -> None:
    error = _refused(lambda: catalog.Catalog([PLAIN]).resolve("other"))
    assert (error.status, error.code) == (404, "model_not_found")
    assert error.message == "The model `other` does not exist or you do not have access to it."


def test_json_schema_without_native_support_becomes_json_object_carrying_the_schema() -> None:
    request = _chat(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "place", "description": "a city", "schema": SCHEMA},
        }
    )
    prompt = catalog.prepare_chat(PLAIN, request)
    assert request.response_format.type == inference_pb2.ResponseFormat.TYPE_JSON_OBJECT
    assert not request.response_format.HasField("json_schema")
    first = request.messages[0]
    assert first.role == "system"
    assert first.text == (
        "Respond with a single JSON object named `place` (a city) that conforms to this "
        "JSON Schema: " + json.dumps(SCHEMA, separators=(",", ":"), sort_keys=True)
    )
    assert [m.role for m in request.messages] == ["system", "user"]
    # The instruction is part of what the engine reads, so it is counted and billed.
    assert prompt == tokens.count_messages(request.messages)


def test_json_schema_with_native_support_is_left_as_it_is() -> None:
    request = _chat(
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}
    )
    catalog.prepare_chat(RICH, request)
    assert request.response_format.type == inference_pb2.ResponseFormat.TYPE_JSON_SCHEMA
    assert [m.role for m in request.messages] == ["user"]


def test_tools_and_images_need_the_capability() -> None:
    tools = _chat(tools=[{"type": "function", "function": {"name": "f"}}])
    error = _refused(lambda: catalog.prepare_chat(PLAIN, tools))
    assert (error.status, error.param, error.message) == (
        400,
        "tools",
        "The model `plain` does not support tools.",
    )
    catalog.prepare_chat(RICH, tools)
    image = _chat(
        messages=[
            {"role": "user", "content": "look"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "this"},
                    {"type": "image_url", "image_url": {"url": "https://a/b.png"}},
                ],
            },
        ]
    )
    error = _refused(lambda: catalog.prepare_chat(PLAIN, image))
    assert (error.param, error.message) == (
        "messages[1].content[1]",
        "The model `plain` does not support image inputs.",
    )


def test_chat_context_counts_prompt_and_max_tokens() -> None:
    fits = _chat(max_tokens=50)
    prompt = catalog.prepare_chat(PLAIN, fits)
    error = _refused(lambda: catalog.prepare_chat(PLAIN, _chat(max_tokens=100 - prompt + 1)))
    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "messages")
    assert error.message == (
        f"This model's maximum context length is 100 tokens. However, you requested 101 tokens "
        f"({prompt} in the messages, {101 - prompt} in the completion). "
        "Please reduce the length of the messages or completion."
    )
    catalog.prepare_chat(PLAIN, _chat(max_tokens=100 - prompt))


def test_a_wrong_endpoint_names_the_category() -> None:
    error = _refused(lambda: catalog.prepare_chat(EMB, _chat()))
    assert (error.param, error.message) == (
        "model",
        "The model `emb` is an embeddings model and is not supported on /v1/chat/completions.",
    )
    error = _refused(
        lambda: catalog.prepare_embedding(
            PLAIN, validate_embedding({"model": "plain", "input": "a"})
        )
    )
    assert (
        error.message == "The model `plain` is a text model and is not supported on /v1/embeddings."
    )


def test_the_legacy_allowance_is_set_once_and_each_prompt_checked_alone() -> None:
    request = validate_completion({"model": "plain", "prompt": ["a", "b c"]})
    assert not request.HasField("max_tokens")
    prompt = catalog.prepare_text(PLAIN, request)
    assert request.max_tokens == billing.LEGACY_DEFAULT_MAX_TOKENS == 16
    assert prompt == tokens.count("a") + tokens.count("b c")
    # Each of two 60-token prompts fits 100 with its 16; together they would not.
    sixty = " ".join(["word"] * 60)
    assert tokens.count(sixty) == 60
    catalog.prepare_text(PLAIN, validate_completion({"model": "plain", "prompt": [sixty, sixty]}))
    long = " ".join(["word"] * 90)
    error = _refused(
        lambda: catalog.prepare_text(
            PLAIN, validate_completion({"model": "plain", "prompt": ["a", long]})
        )
    )
    assert (error.code, error.param) == ("context_length_exceeded", "prompt[1]")
    assert error.message == (
        "This model's maximum context length is 100 tokens, however you requested 106 tokens "
        "(90 in your prompt; 16 for the completion). Please reduce your prompt; or completion length."
    )


def test_each_embedding_input_must_fit_on_its_own() -> None:
    short = validate_embedding({"model": "emb", "input": ["a", "b"]})
    catalog.prepare_embedding(EMB, short)
    assert short.dimensions == 8  # the native size, when the client asks for none
    forty = " ".join(["word"] * 40)
    # 40 + 40 + 40 tokens exceed 50 only in sum: each input alone fits, so it passes.
    catalog.prepare_embedding(EMB, validate_embedding({"model": "emb", "input": [forty] * 3}))
    sixty = " ".join(["word"] * 60)
    request = validate_embedding({"model": "emb", "input": ["a", sixty, "b"]})
    error = _refused(lambda: catalog.prepare_embedding(EMB, request))
    assert (error.code, error.param) == ("context_length_exceeded", "input[1]")
    single = validate_embedding({"model": "emb", "input": sixty})
    assert _refused(lambda: catalog.prepare_embedding(EMB, single)).param == "input"
    too_wide = validate_embedding({"model": "emb", "input": "a", "dimensions": 9})
    assert _refused(lambda: catalog.prepare_embedding(EMB, too_wide)).param == "dimensions"


# ---------------------------------------------------------------- billing ----


def test_billed_is_the_engines_usage_when_it_sent_one() -> None:
    usage = common_pb2.Usage(prompt_tokens=7, completion_tokens=3, cached_tokens=2)
    assert billing.billed(usage, 100, 100) is usage
    assert billing.billed(common_pb2.Usage(), 5, 9) == common_pb2.Usage(
        prompt_tokens=5, completion_tokens=9
    )
    assert billing.billed(None, 5, 0) == common_pb2.Usage(prompt_tokens=5)


def test_fragments_count_text_and_tool_arguments_not_roles() -> None:
    role = inference_pb2.ChatCompletionChunk(
        choices=[inference_pb2.ChunkChoice(delta=inference_pb2.ChoiceDelta(role="assistant"))]
    )
    text = inference_pb2.ChatCompletionChunk(
        choices=[inference_pb2.ChunkChoice(delta=inference_pb2.ChoiceDelta(content="hi"))]
    )
    call = inference_pb2.ChatCompletionChunk(
        choices=[
            inference_pb2.ChunkChoice(
                delta=inference_pb2.ChoiceDelta(
                    tool_calls=[inference_pb2.ToolCallDelta(arguments='{"a"')]
                )
            )
        ]
    )
    legacy = inference_pb2.CompletionChunk(
        choices=[inference_pb2.CompletionChoice(text="x"), inference_pb2.CompletionChoice(text="")]
    )
    assert [billing.fragments(c) for c in (role, text, call, legacy)] == [0, 1, 1, 1]


def test_struct_round_trip_keeps_the_schema_for_the_instruction() -> None:
    fmt = inference_pb2.JsonSchema(name="", schema=from_dict({"type": "object"}))
    assert catalog.schema_instruction(fmt) == (
        'Respond with a single JSON object that conforms to this JSON Schema: {"type":"object"}'
    )
