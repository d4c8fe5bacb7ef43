"""The real openai==1.109.1 SDK against the real mesh: every foundation endpoint."""

from __future__ import annotations

import base64
import json
import math
from array import array

import openai
import pytest

from tests.conftest import RunningMesh

PRO = "meshgate/reference-pro"
MINI = "meshgate/reference-mini"
EMBED = "bge-m3"
HELLO = [{"role": "user", "content": "Hello there"}]


def test_chat_completion_non_streaming(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=PRO, messages=HELLO, seed=7, max_tokens=12)
    assert response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-")
    assert response.model == PRO
    assert response.system_fingerprint is None
    assert len(response.choices) == 1
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage is not None
    assert usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert (
        usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    )
    assert usage.model_extra == {"cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}


def test_chat_is_deterministic_by_seed(client: openai.OpenAI) -> None:
    def answer(seed: int) -> str | None:
        return (
            client.chat.completions.create(model=PRO, messages=HELLO, seed=seed)
            .choices[0]
            .message.content
        )

    assert answer(1) == answer(1)
    assert answer(1) != answer(2)


def test_max_tokens_cuts_with_length(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=PRO, messages=HELLO, seed=3, max_tokens=2)
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None and response.usage.completion_tokens == 2


def test_chat_streaming_with_include_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=PRO, messages=HELLO, seed=11)
    stream = client.chat.completions.create(
        model=PRO, messages=HELLO, seed=11, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == PRO for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [whole.choices[0].finish_reason]
    # usage: null on every chunk but the last, which has empty choices and the totals
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert whole.usage is not None
    assert last.usage.total_tokens == whole.usage.total_tokens


def test_chat_streaming_without_usage_sends_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=PRO, messages=HELLO, seed=5, stream=True))
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stream_helper_accumulates_cleanly(client: openai.OpenAI) -> None:
    """chat.completions.stream() concatenates string fields: role must come once."""
    with client.chat.completions.stream(model=PRO, messages=HELLO, seed=9) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.role == "assistant"
    assert final.choices[0].message.content


def test_forced_tool_call_streams_and_accumulates(client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                    "required": ["city"],
                },
            },
        }
    ]
    choice = {"type": "function", "function": {"name": "get_weather"}}
    whole = client.chat.completions.create(
        model=PRO, messages=HELLO, tools=tools, tool_choice=choice
    )
    call = whole.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert whole.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str)

    with client.chat.completions.stream(
        model=PRO, messages=HELLO, tools=tools, tool_choice=choice
    ) as stream:
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert streamed.function.name == "get_weather"  # not "get_weatherget_weather"
    assert streamed.id.startswith("call_") and streamed.id.count("call_") == 1
    assert json.loads(streamed.function.arguments) == args


def test_json_object_output_is_json(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=PRO, messages=HELLO, response_format={"type": "json_object"}, seed=4
    )
    assert isinstance(json.loads(response.choices[0].message.content or ""), dict)


def test_legacy_completion(client: openai.OpenAI) -> None:
    response = client.completions.create(
        model=MINI, prompt="Once upon a time", max_tokens=5, seed=1
    )
    assert response.object == "text_completion"
    assert response.id.startswith("cmpl-")
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None and response.usage.completion_tokens == 5
    streamed = client.completions.create(
        model=MINI, prompt="Once upon a time", max_tokens=5, seed=1, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == response.choices[0].text


def test_legacy_completion_list_prompt(client: openai.OpenAI) -> None:
    response = client.completions.create(model=MINI, prompt=["a", "b"], max_tokens=3)
    assert [c.index for c in response.choices] == [0, 1]


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_embeddings_sdk_default_is_base64_and_decodes(
    client: openai.OpenAI, mesh: RunningMesh
) -> None:
    """The SDK sends encoding_format=base64 when omitted and decodes little-endian float32."""
    response = client.embeddings.create(model=EMBED, input=["hello", "world"])
    assert [d.index for d in response.data] == [0, 1]
    vector = response.data[0].embedding
    assert len(vector) == 1024
    assert abs(_norm(vector) - 1.0) < 1e-3
    assert response.usage.prompt_tokens == 2


def test_embeddings_float_and_base64_agree(client: openai.OpenAI) -> None:
    floats = (
        client.embeddings.create(model=EMBED, input="hello", encoding_format="float")
        .data[0]
        .embedding
    )
    raw = (
        client.embeddings.create(model=EMBED, input="hello", encoding_format="base64")
        .data[0]
        .embedding
    )
    assert isinstance(raw, str)  # asked for explicitly: the SDK hands the string over untouched
    decoded = array("f")
    decoded.frombytes(base64.b64decode(raw))
    assert len(floats) == len(decoded) == 1024
    assert floats == pytest.approx(decoded.tolist(), rel=1e-6)


def test_embeddings_dimensions(client: openai.OpenAI) -> None:
    response = client.embeddings.create(
        model=EMBED, input="hi", dimensions=256, encoding_format="float"
    )
    assert len(response.data[0].embedding) == 256


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {PRO, MINI, EMBED}
    pro = models[PRO]
    assert pro.object == "model" and pro.owned_by
    assert pro.model_extra is not None
    assert pro.model_extra["category"] == "multimodal"
    assert set(pro.model_extra["capabilities"]) == {
        "tool_use",
        "vision",
        "json_schema",
        "prompt_caching",
    }
    assert models[EMBED].model_extra["category"] == "embeddings"  # type: ignore[index]
    retrieved = client.models.retrieve(PRO)  # id with '/', sent unescaped by SDK 1.x
    assert retrieved.id == PRO
    assert retrieved.model_extra["context_length"] == 32768  # type: ignore[index]


def test_model_id_with_escaped_slash(http: object, mesh: RunningMesh) -> None:
    import httpx

    assert isinstance(http, httpx.Client)
    response = http.get(
        "/v1/models/meshgate%2Freference-pro", headers={"Authorization": f"Bearer {mesh.api_key}"}
    )
    assert response.status_code == 200
    assert response.json()["id"] == PRO


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no/such-model", messages=HELLO)
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no/such-model")


def test_wrong_key_is_401(mesh: RunningMesh) -> None:
    with openai.OpenAI(base_url=mesh.base_url, api_key="sk-wrong-key-000", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            bad.chat.completions.create(model=PRO, messages=HELLO)
    assert info.value.code == "invalid_api_key"
    assert "sk-wrong-key-000" not in str(info.value.body)


def test_streaming_error_before_first_chunk_is_an_http_error(client: openai.OpenAI) -> None:
    """A failure before the stream starts must be a non-200, or the SDK sees zero chunks and no error."""
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no/such-model", messages=HELLO, stream=True)


def test_unknown_fields_reach_the_engine(client: openai.OpenAI) -> None:
    """vLLM-style extras travel in the Struct to the engine, which honours them."""
    plain = client.chat.completions.create(model=PRO, messages=HELLO, seed=21, max_tokens=200)
    assert plain.usage is not None and plain.usage.completion_tokens <= 40
    longer = client.chat.completions.create(
        model=PRO, messages=HELLO, seed=21, max_tokens=200, extra_body={"min_tokens": 120}
    )
    assert longer.usage is not None and longer.usage.completion_tokens >= 120
    exact = client.chat.completions.create(
        model=PRO, messages=HELLO, seed=21, max_tokens=77, extra_body={"ignore_eos": True}
    )
    assert exact.usage is not None and exact.usage.completion_tokens == 77
    assert exact.choices[0].finish_reason == "length"
    text = client.completions.create(
        model=MINI, prompt="x", max_tokens=100, extra_body={"min_tokens": 60}
    )
    assert text.usage is not None and text.usage.completion_tokens >= 60
