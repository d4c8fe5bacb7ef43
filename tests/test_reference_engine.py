"""The reference engine: generator invariants, then the gRPC service over a real channel."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import openai
import pytest
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshgate import errors, tokens
from meshgate.v1 import engine_pb2, engine_pb2_grpc, inference_pb2
from services.engines.reference import generator
from services.engines.reference.generator.embeddings import embedding_vector
from services.engines.reference.generator.schema import MAX_SCHEMA_DEPTH, SchemaFiller
from services.engines.reference.generator.text import (
    MAX_PIECES,
    MIN_PIECES,
    seeded_rng,
    vocabulary,
)
from services.engines.reference.server import ReferenceEngine

ROOT = Path(__file__).resolve().parents[1]
PRO = "meshgate/reference-pro"
CALL_ID = re.compile(r"^call_[A-Za-z0-9]{24}$")
T = TypeVar("T")

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "ratio": {"type": "number"},
        "metric": {"type": "boolean"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "zone": {"type": ["string", "null"]}},
            "required": ["lat"],
        },
    },
    "required": ["city", "unit"],
}


# -------------------------------------------------------------- helpers ----


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    json_format.ParseDict(value, message)
    return message


def tool(name: str, schema: dict[str, Any] | None = None) -> inference_pb2.Tool:
    function = inference_pb2.FunctionDefinition(name=name, description=f"The {name} tool.")
    if schema is not None:
        function.parameters.CopyFrom(struct(schema))
    return inference_pb2.Tool(function=function)


def chat(text: str = "Tell me a story.", **fields: Any) -> inference_pb2.ChatCompletionRequest:
    messages = fields.pop("messages", None) or [
        inference_pb2.ChatMessage(role="system", text="You are terse."),
        inference_pb2.ChatMessage(role="user", text=text),
    ]
    return inference_pb2.ChatCompletionRequest(model="ref", messages=messages, **fields)


def assert_weather_args(args: dict[str, Any]) -> None:
    assert set(args) == set(WEATHER_SCHEMA["properties"])
    assert isinstance(args["city"], str) and args["city"]
    assert isinstance(args["days"], int) and not isinstance(args["days"], bool)
    assert 1 <= args["days"] <= 7
    assert isinstance(args["ratio"], float)
    assert isinstance(args["metric"], bool)
    assert args["unit"] == "celsius"
    assert isinstance(args["tags"], list) and len(args["tags"]) == 1
    assert isinstance(args["tags"][0], str)
    assert set(args["where"]) == {"lat", "zone"}
    assert isinstance(args["where"]["lat"], float)
    assert isinstance(args["where"]["zone"], str)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def engine(
    servicer: ReferenceEngine | None = None,
) -> AsyncIterator[engine_pb2_grpc.EngineServiceStub]:
    """The engine on an in-process server and a real channel to it."""
    generator.warm_up()
    server = grpc.aio.server()
    engine_pb2_grpc.add_EngineServiceServicer_to_server(servicer or ReferenceEngine(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield engine_pb2_grpc.EngineServiceStub(channel)
    finally:
        await server.stop(None)


def run_with_engine(
    body: Callable[[engine_pb2_grpc.EngineServiceStub], Awaitable[T]],
    token_delay_ms: float = 0.0,
    servicer: ReferenceEngine | None = None,
) -> T:
    async def main() -> T:
        async with engine(servicer or ReferenceEngine(token_delay_ms)) as stub:
            return await body(stub)

    return asyncio.run(main())


async def collect(call: Any) -> list[Any]:
    return [chunk async for chunk in call]


# ------------------------------------------------------------ generator ----


def test_vocabulary_words_are_single_tokens() -> None:
    enc = tokens.encoding()
    vocab = vocabulary()
    assert len(vocab.words) > 200 and len(vocab.starters) > 200
    assert all(len(enc.encode(" " + w)) == 1 for w in vocab.words)
    assert all(len(enc.encode(w)) == 1 and w[0].isupper() for w in vocab.starters)


def test_every_piece_is_one_token() -> None:
    for seed in range(300):
        plan = generator.plan_chat(chat(seed=seed))
        assert plan.content is not None
        assert MIN_PIECES <= len(plan.pieces) <= MAX_PIECES
        assert "".join(plan.pieces) == plan.content
        assert plan.pieces[0][0].isupper() and plan.content.endswith(".")
        assert tokens.count(plan.content) == len(plan.pieces) == plan.completion_tokens
        assert plan.finish_reason == "stop"


def test_same_request_same_output_different_seed_differs() -> None:
    a = generator.plan_chat(chat(seed=7))
    assert generator.plan_chat(chat(seed=7)) == a
    assert generator.plan_chat(chat(seed=8)).content != a.content
    unseeded = generator.plan_chat(chat())
    assert generator.plan_chat(chat()) == unseeded
    assert unseeded.content != a.content
    assert generator.plan_chat(chat("Something else entirely.")).content != unseeded.content


def test_output_is_the_same_in_another_process() -> None:
    """No salted hash(): a fresh interpreter with another hash seed says the same."""
    code = (
        "from services.engines.reference import generator as g\n"
        "from meshgate.v1 import inference_pb2 as p\n"
        "m = [p.ChatMessage(role='user', text='hello there')]\n"
        "print(g.plan_chat(p.ChatCompletionRequest(messages=m, seed=42)).content)\n"
        "print(g.plan_chat(p.ChatCompletionRequest(messages=m)).content)\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    messages = [inference_pb2.ChatMessage(role="user", text="hello there")]
    seeded = generator.plan_chat(inference_pb2.ChatCompletionRequest(messages=messages, seed=42))
    unseeded = generator.plan_chat(inference_pb2.ChatCompletionRequest(messages=messages))
    assert out == [seeded.content, unseeded.content]


def test_prompt_tokens_follow_the_message_recipe() -> None:
    request = chat()
    assert generator.plan_chat(request).prompt_tokens == tokens.count_messages(request.messages)


def test_max_tokens_cuts_with_length() -> None:
    natural = generator.plan_chat(chat(seed=3))
    for limit in (1, 5, len(natural.pieces) - 1):
        plan = generator.plan_chat(chat(seed=3, max_tokens=limit))
        assert plan.finish_reason == "length"
        assert plan.pieces == natural.pieces[:limit]
        assert plan.completion_tokens == limit == tokens.count(plan.content or "")
    roomy = generator.plan_chat(chat(seed=3, max_tokens=len(natural.pieces)))
    assert roomy.finish_reason == "stop" and roomy.content == natural.content


def test_stop_string_truncates_mid_piece() -> None:
    natural = generator.plan_chat(chat(seed=11))
    content = natural.content or ""
    stop = natural.pieces[5][2:4]  # inside a word, so the last piece is partial
    at = content.find(stop)
    plan = generator.plan_chat(chat(seed=11, stop=[stop]))
    assert plan.content == content[:at]
    assert "".join(plan.pieces) == plan.content
    assert plan.finish_reason == "stop"
    assert plan.completion_tokens == tokens.count(content[:at])


def test_earliest_of_several_stops_wins_and_beats_length() -> None:
    natural = generator.plan_chat(chat(seed=12))
    content = natural.content or ""
    late, early = natural.pieces[6], natural.pieces[3]
    plan = generator.plan_chat(chat(seed=12, stop=[late, "never-there", early], max_tokens=8))
    assert plan.content == content[: content.find(early)]
    assert plan.finish_reason == "stop"
    missing = generator.plan_chat(chat(seed=12, stop=["zzz-not-there"]))
    assert missing.content == content and missing.finish_reason == "stop"


def test_required_tool_choice_calls_the_first_tool() -> None:
    request = chat(
        seed=1,
        tools=[tool("get_weather", WEATHER_SCHEMA), tool("other")],
        tool_choice=inference_pb2.ToolChoice(mode="required"),
    )
    plan = generator.plan_chat(request)
    assert plan.content is None and plan.pieces == ()
    assert plan.finish_reason == "tool_calls"
    call = plan.tool_call
    assert call is not None and call.name == "get_weather" and CALL_ID.match(call.id)
    assert "".join(call.argument_pieces) == call.arguments
    assert call.arguments == json.dumps(json.loads(call.arguments), separators=(",", ":"))
    assert_weather_args(json.loads(call.arguments))
    assert plan.completion_tokens == tokens.count("get_weather") + tokens.count(call.arguments)
    assert generator.plan_chat(request) == plan


def test_named_tool_choice_calls_that_tool() -> None:
    request = chat(
        tools=[tool("first"), tool("get_weather", WEATHER_SCHEMA)],
        tool_choice=inference_pb2.ToolChoice(function_name="get_weather"),
    )
    call = generator.plan_chat(request).tool_call
    assert call is not None and call.name == "get_weather"
    assert_weather_args(json.loads(call.arguments))
    no_params = generator.plan_chat(
        chat(tools=[tool("ping")], tool_choice=inference_pb2.ToolChoice(function_name="ping"))
    )
    assert no_params.tool_call is not None and no_params.tool_call.arguments == "{}"


def test_schema_filler_handles_refs_unions_and_recursion() -> None:
    schema = {
        "type": "object",
        "$defs": {"node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/node"}}}},
        "properties": {
            "tree": {"$ref": "#/$defs/node"},
            "either": {"anyOf": [{"type": "null"}, {"type": "integer", "enum": [3, 4]}]},
            "both": {"allOf": [{"properties": {"a": {"type": "string"}}}, {"required": ["a"]}]},
            "fixed": {"const": 2},
            "when": {"type": "string", "format": "date"},
        },
    }
    rng = seeded_rng(1, b"k")
    value = SchemaFiller(schema, rng).fill(schema)
    assert value["either"] == 3 and value["fixed"] == 2 and value["when"] == "2024-01-01"
    assert isinstance(value["both"]["a"], str)
    depth, node = 0, value["tree"]
    while isinstance(node, dict) and "child" in node:
        depth, node = depth + 1, node["child"]
    assert 1 < depth <= MAX_SCHEMA_DEPTH + 1
    json.dumps(value)


def test_auto_tool_choice_calls_only_a_named_tool() -> None:
    tools = [tool("get_weather", WEATHER_SCHEMA), tool("lookup")]
    named = generator.plan_chat(chat("What does get_weather say for Paris?", tools=tools))
    assert named.tool_call is not None and named.tool_call.name == "get_weather"
    assert named.finish_reason == "tool_calls"
    plain = generator.plan_chat(chat("Just chat with me.", tools=tools))
    assert plain.tool_call is None and plain.content
    after_result = chat(
        messages=[
            inference_pb2.ChatMessage(role="user", text="Use get_weather please."),
            inference_pb2.ChatMessage(
                role="assistant",
                tool_calls=[
                    inference_pb2.ToolCall(id="call_1", name="get_weather", arguments="{}")
                ],
            ),
            inference_pb2.ChatMessage(role="tool", tool_call_id="call_1", text="sunny"),
        ],
        tools=tools,
    )
    assert generator.plan_chat(after_result).tool_call is None
    none = chat("get_weather now", tools=tools, tool_choice=inference_pb2.ToolChoice(mode="none"))
    assert generator.plan_chat(none).tool_call is None


def agent_loop(
    request: inference_pb2.ChatCompletionRequest, turns: int
) -> list[generator.ChatPlan]:
    """Run a tool loop as agent frameworks do: answer every call, ask again, until text."""
    plans: list[generator.ChatPlan] = []
    for turn in range(turns):
        plan = generator.plan_chat(request)
        plans.append(plan)
        call = plan.tool_call
        if call is None:
            break
        request.messages.add(
            role="assistant",
            tool_calls=[inference_pb2.ToolCall(id=call.id, name=call.name, arguments="{}")],
        )
        request.messages.add(role="tool", tool_call_id=call.id, text=f"result {turn}")
    return plans


def called(plans: list[generator.ChatPlan]) -> list[str | None]:
    return [p.tool_call.name if p.tool_call else None for p in plans]


def test_required_tool_choice_calls_each_tool_in_order_then_cycles() -> None:
    """OpenAI forces a call every turn under "required"; we move on instead of repeating."""
    request = chat(
        tools=[tool("a"), tool("b", WEATHER_SCHEMA), tool("c")],
        tool_choice=inference_pb2.ToolChoice(mode="required"),
    )
    plans = agent_loop(request, turns=7)
    assert called(plans) == ["a", "b", "c", "a", "b", "c", "a"]
    assert all(p.finish_reason == "tool_calls" for p in plans)
    assert len({p.tool_call.id for p in plans if p.tool_call}) == 7
    assert_weather_args(json.loads(plans[1].tool_call.arguments))  # type: ignore[union-attr]


def test_auto_tool_choice_calls_each_named_tool_once_then_answers() -> None:
    tools = [tool("lookup"), tool("get_weather", WEATHER_SCHEMA), tool("never_named")]
    request = chat("Use get_weather, then lookup, for Paris.", tools=tools)
    plans = agent_loop(request, turns=10)
    assert called(plans) == ["lookup", "get_weather", None]  # the order of `tools`
    assert plans[-1].content and plans[-1].finish_reason == "stop"


def test_tool_choice_counts_only_answered_calls_of_the_current_turn() -> None:
    tools = [tool("a"), tool("b")]
    required = inference_pb2.ToolChoice(mode="required")
    earlier_turn = [
        inference_pb2.ChatMessage(role="user", text="Use a and b."),
        inference_pb2.ChatMessage(
            role="assistant", tool_calls=[inference_pb2.ToolCall(id="call_1", name="a")]
        ),
        inference_pb2.ChatMessage(role="tool", tool_call_id="call_1", text="done"),
    ]
    assert called([generator.plan_chat(chat(messages=earlier_turn, tools=tools))]) == ["b"]
    # A new user message starts afresh: "a" again, under "auto" and "required" alike.
    new_turn = [*earlier_turn, inference_pb2.ChatMessage(role="user", text="Again: a and b.")]
    for choice in (None, required):
        request = chat(messages=new_turn, tools=tools, tool_choice=choice)
        assert called([generator.plan_chat(request)]) == ["a"]
    # A call without its answer does not count; a legacy "function" answer does.
    unanswered = [
        earlier_turn[0],
        inference_pb2.ChatMessage(
            role="assistant", tool_calls=[inference_pb2.ToolCall(id="call_9", name="a")]
        ),
    ]
    request = chat(messages=unanswered, tools=tools, tool_choice=required)
    assert called([generator.plan_chat(request)]) == ["a"]
    legacy = [earlier_turn[0], inference_pb2.ChatMessage(role="function", name="a", text="1")]
    assert called([generator.plan_chat(chat(messages=legacy, tools=tools))]) == ["b"]


def test_named_tool_choice_keeps_calling_that_function() -> None:
    request = chat(
        tools=[tool("a"), tool("b")], tool_choice=inference_pb2.ToolChoice(function_name="b")
    )
    assert called(agent_loop(request, turns=4)) == ["b"] * 4


def test_bad_tool_choice_is_an_invalid_request() -> None:
    bad = chat(tools=[tool("a")], tool_choice=inference_pb2.ToolChoice(function_name="missing"))
    with pytest.raises(generator.InvalidRequest) as info:
        generator.plan_chat(bad)
    assert info.value.param == "tool_choice"
    with pytest.raises(generator.InvalidRequest):
        generator.plan_chat(chat(tool_choice=inference_pb2.ToolChoice(mode="required")))


def test_json_object_response_is_a_json_object() -> None:
    fmt = inference_pb2.ResponseFormat(type=inference_pb2.ResponseFormat.TYPE_JSON_OBJECT)
    plan = generator.plan_chat(chat(response_format=fmt))
    value = json.loads(plan.content or "")
    assert isinstance(value, dict) and isinstance(value["answer"], str) and value["answer"]
    assert "".join(plan.pieces) == plan.content
    assert plan.completion_tokens == tokens.count(plan.content or "") == len(plan.pieces)
    cut = generator.plan_chat(chat(response_format=fmt, max_tokens=3))
    assert cut.finish_reason == "length" and cut.completion_tokens == 3


def test_json_schema_response_has_the_schema_properties() -> None:
    fmt = inference_pb2.ResponseFormat(
        type=inference_pb2.ResponseFormat.TYPE_JSON_SCHEMA,
        json_schema=inference_pb2.JsonSchema(name="weather", schema=struct(WEATHER_SCHEMA)),
    )
    plan = generator.plan_chat(chat(response_format=fmt))
    assert plan.finish_reason == "stop"
    assert_weather_args(json.loads(plan.content or ""))


def test_legacy_completion_choices_echo_and_default_limit() -> None:
    prompts = ["Once upon a time", "The weather today"]
    plan = generator.plan_text(inference_pb2.CompletionRequest(prompt=prompts, max_tokens=100))
    assert [c.index for c in plan.choices] == [0, 1]
    assert plan.prompt_tokens == sum(tokens.count(p) for p in prompts)
    assert plan.choices[0].text != plan.choices[1].text
    assert plan.completion_tokens == sum(tokens.count(c.text) for c in plan.choices)
    assert all(c.finish_reason == "stop" for c in plan.choices)
    echoed = generator.plan_text(
        inference_pb2.CompletionRequest(prompt=prompts, max_tokens=100, echo=True)
    )
    for plain, echo, prompt in zip(plan.choices, echoed.choices, prompts, strict=True):
        assert echo.text == prompt + plain.text and "".join(echo.pieces) == echo.text
        assert echo.completion_tokens == plain.completion_tokens
    default = generator.plan_text(inference_pb2.CompletionRequest(prompt=["x"], seed=1))
    natural = generator.plan_text(
        inference_pb2.CompletionRequest(prompt=["x"], seed=1, max_tokens=1000)
    )
    expected = min(len(natural.choices[0].pieces), generator.LEGACY_DEFAULT_MAX_TOKENS)
    assert default.completion_tokens == expected


def test_embeddings_are_unit_deterministic_little_endian() -> None:
    request = inference_pb2.EmbeddingRequest(input=["hello", "world", "hello"], dimensions=256)
    plan = generator.embed(request)
    assert plan.prompt_tokens == 3
    vectors = [array("f", v) for v in plan.vectors]
    if sys.byteorder == "big":
        for v in vectors:
            v.byteswap()
    assert all(len(v) == 256 for v in vectors)
    for v in vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-5)
    assert plan.vectors[0] == plan.vectors[2] != plan.vectors[1]
    assert generator.embed(request) == plan
    default = generator.embed(inference_pb2.EmbeddingRequest(input=["a"]))
    assert len(default.vectors[0]) == 4 * generator.DEFAULT_DIMENSIONS
    # About 0.2 ms a vector when idle. The bound, 20 ms a vector, only catches a gross slowdown
    # (embeddings sit on the request path); two busy cores cannot fail it.
    started = time.perf_counter()
    for _ in range(50):
        embedding_vector("speed", 1024)
    assert time.perf_counter() - started < 1.0


# ------------------------------------------------------------------ gRPC ----


def test_grpc_generate_chat_matches_the_plan() -> None:
    request = chat(seed=5, max_tokens=12)

    async def body(stub: engine_pb2_grpc.EngineServiceStub) -> engine_pb2.GenerateChatResponse:
        response: engine_pb2.GenerateChatResponse = await stub.GenerateChat(
            engine_pb2.GenerateChatRequest(request=request)
        )
        return response

    completion = run_with_engine(body).completion
    plan = generator.plan_chat(request)
    assert completion.id == "" and completion.model == "" and completion.created == 0
    (choice,) = completion.choices
    assert choice.message.content == plan.content and choice.finish_reason == "length"
    assert not choice.message.tool_calls
    assert completion.usage.prompt_tokens == plan.prompt_tokens
    assert completion.usage.completion_tokens == 12


def test_grpc_stream_chat_text_sequence() -> None:
    request = chat(seed=9, stop=["zzz"])

    async def body(stub: engine_pb2_grpc.EngineServiceStub) -> tuple[Any, list[Any]]:
        whole = await stub.GenerateChat(engine_pb2.GenerateChatRequest(request=request))
        chunks = await collect(stub.StreamChat(engine_pb2.StreamChatRequest(request=request)))
        return whole, chunks

    whole, chunks = run_with_engine(body)
    message = whole.completion.choices[0].message
    first, *middle, finish, usage = chunks
    assert all(not (c.id or c.model or c.created) for c in chunks)
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.HasField("content") and first.choices[0].delta.content == ""
    assert all(c.choices[0].delta.role == "" for c in [*middle, finish])
    assert all(len(c.choices) == 1 and c.choices[0].finish_reason == "" for c in middle)
    assert "".join(c.choices[0].delta.content for c in middle) == message.content
    assert finish.choices[0].finish_reason == "stop"
    assert not finish.choices[0].delta.HasField("content")
    assert len(usage.choices) == 0 and usage.HasField("usage")
    assert usage.usage.completion_tokens == len(middle) == tokens.count(message.content)
    assert usage.usage == whole.completion.usage
    assert all(not c.HasField("usage") for c in chunks[:-1])


def test_grpc_stream_chat_tool_call_sequence() -> None:
    request = chat(
        tools=[tool("get_weather", WEATHER_SCHEMA)],
        tool_choice=inference_pb2.ToolChoice(mode="required"),
    )

    async def body(stub: engine_pb2_grpc.EngineServiceStub) -> tuple[Any, list[Any]]:
        whole = await stub.GenerateChat(engine_pb2.GenerateChatRequest(request=request))
        chunks = await collect(stub.StreamChat(engine_pb2.StreamChatRequest(request=request)))
        return whole, chunks

    whole, chunks = run_with_engine(body)
    choice = whole.completion.choices[0]
    assert not choice.message.HasField("content") and choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert CALL_ID.match(call.id)
    first, start, *fragments, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant"
    (opening,) = start.choices[0].delta.tool_calls
    assert (opening.index, opening.id, opening.name, opening.arguments) == (
        0,
        call.id,
        "get_weather",
        "",
    )
    assert start.choices[0].delta.role == ""
    assert len(fragments) >= 2
    for chunk in fragments:
        (delta,) = chunk.choices[0].delta.tool_calls
        assert delta.index == 0 and delta.id == "" and delta.name == "" and delta.arguments
        assert chunk.choices[0].delta.role == ""
    arguments = "".join(c.choices[0].delta.tool_calls[0].arguments for c in fragments)
    assert arguments == call.arguments
    assert_weather_args(json.loads(arguments))
    assert finish.choices[0].finish_reason == "tool_calls"
    assert len(usage.choices) == 0 and usage.usage == whole.completion.usage


def test_grpc_stream_and_whole_answer_agree_after_a_tool_result() -> None:
    """Tool choice is planned once for both RPCs, so a loop sees the same call either way."""
    request = chat(
        tools=[tool("a"), tool("get_weather", WEATHER_SCHEMA)],
        tool_choice=inference_pb2.ToolChoice(mode="required"),
    )
    first = generator.plan_chat(request).tool_call
    assert first is not None and first.name == "a"
    request.messages.add(
        role="assistant", tool_calls=[inference_pb2.ToolCall(id=first.id, name="a")]
    )
    request.messages.add(role="tool", tool_call_id=first.id, text="42")

    async def body(stub: engine_pb2_grpc.EngineServiceStub) -> tuple[Any, list[Any]]:
        whole = await stub.GenerateChat(engine_pb2.GenerateChatRequest(request=request))
        chunks = await collect(stub.StreamChat(engine_pb2.StreamChatRequest(request=request)))
        return whole, chunks

    whole, chunks = run_with_engine(body)
    (call,) = whole.completion.choices[0].message.tool_calls
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls]
    assert (deltas[0].id, deltas[0].name) == (call.id, call.name) == (call.id, "get_weather")
    assert "".join(d.arguments for d in deltas) == call.arguments


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_sdk_agent_loop_with_auto_ends_after_the_named_tools(
    client: openai.OpenAI, stream: bool
) -> None:
    """The openai SDK through the mesh: results go back, the tools come in order, then text."""
    tools: list[Any] = [
        {"type": "function", "function": {"name": name, "parameters": WEATHER_SCHEMA}}
        for name in ("get_weather", "get_time", "unused")
    ]
    messages: list[Any] = [{"role": "user", "content": "Call get_time and get_weather."}]
    names: list[str] = []
    for _ in range(6):
        if stream:
            with client.chat.completions.stream(
                model=PRO, messages=messages, tools=tools, tool_choice="auto"
            ) as events:
                message = events.get_final_completion().choices[0].message
        else:
            message = (
                client.chat.completions.create(
                    model=PRO, messages=messages, tools=tools, tool_choice="auto"
                )
                .choices[0]
                .message
            )
        if not message.tool_calls:
            break
        (call,) = message.tool_calls
        assert_weather_args(json.loads(call.function.arguments))
        names.append(call.function.name)
        messages.append(message.model_dump(exclude_none=True, include={"role", "tool_calls"}))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "ok"})
    assert names == ["get_weather", "get_time"]
    assert message.content and not message.tool_calls


def test_grpc_bad_tool_choice_is_an_openai_400() -> None:
    bad = chat(tools=[tool("a")], tool_choice=inference_pb2.ToolChoice(function_name="nope"))

    async def body(stub: engine_pb2_grpc.EngineServiceStub) -> list[grpc.aio.AioRpcError]:
        failures = []
        for call in (
            lambda: stub.GenerateChat(engine_pb2.GenerateChatRequest(request=bad)),
            lambda: collect(stub.StreamChat(engine_pb2.StreamChatRequest(request=bad))),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call()
            failures.append(info.value)
        return failures

    for failure in run_with_engine(body):
        assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
        error = errors.from_rpc_error(failure, "engine")
        assert error.status == 400 and error.param == "tool_choice"
        assert error.type == "invalid_request_error"


def test_grpc_text_and_stream_text() -> None:
    request = inference_pb2.CompletionRequest(prompt=["Alpha beta", "Gamma"], echo=True, seed=2)

    async def body(stub: engine_pb2_grpc.EngineServiceStub) -> tuple[Any, list[Any]]:
        whole = await stub.GenerateText(engine_pb2.GenerateTextRequest(request=request))
        chunks = await collect(stub.StreamText(engine_pb2.StreamTextRequest(request=request)))
        return whole, chunks

    whole, chunks = run_with_engine(body)
    choices = whole.completion.choices
    assert [c.index for c in choices] == [0, 1]
    assert choices[0].text.startswith("Alpha beta") and choices[1].text.startswith("Gamma")
    *body_chunks, usage = chunks
    assert len(usage.choices) == 0 and usage.usage == whole.completion.usage
    assert usage.usage.completion_tokens <= 2 * generator.LEGACY_DEFAULT_MAX_TOKENS
    for choice in choices:
        mine = [c.choices[0] for c in body_chunks if c.choices[0].index == choice.index]
        assert "".join(c.text for c in mine) == choice.text
        assert [c.finish_reason for c in mine[:-1]] == [""] * (len(mine) - 1)
        assert mine[-1].text == "" and mine[-1].finish_reason == choice.finish_reason


def test_grpc_embed() -> None:
    request = inference_pb2.EmbeddingRequest(input=["one", "two"], dimensions=64)

    async def body(stub: engine_pb2_grpc.EngineServiceStub) -> engine_pb2.EmbedResponse:
        response: engine_pb2.EmbedResponse = await stub.Embed(
            engine_pb2.EmbedRequest(request=request)
        )
        return response

    embeddings = run_with_engine(body).embeddings
    assert [e.index for e in embeddings.data] == [0, 1]
    assert [e.vector_f32le for e in embeddings.data] == list(generator.embed(request).vectors)
    assert all(len(e.vector_f32le) == 64 * 4 for e in embeddings.data)
    assert embeddings.usage.prompt_tokens == 2 and embeddings.usage.completion_tokens == 0


def test_token_delay_paces_the_stream() -> None:
    request = chat(seed=4, max_tokens=10)

    async def body(stub: engine_pb2_grpc.EngineServiceStub) -> tuple[float, int]:
        started = time.perf_counter()
        chunks = await collect(stub.StreamChat(engine_pb2.StreamChatRequest(request=request)))
        return time.perf_counter() - started, len(chunks)

    elapsed, count = run_with_engine(body, token_delay_ms=20)
    assert count == 1 + 10 + 2
    assert elapsed >= 9 * 0.020


class WatchedEngine(ReferenceEngine):
    """Records how far StreamChat got and how it ended."""

    def __init__(self, token_delay_ms: float) -> None:
        super().__init__(token_delay_ms)
        self.sent = 0
        self.ended_by: str | None = None

    async def StreamChat(self, request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            async for chunk in super().StreamChat(request, context):
                self.sent += 1
                yield chunk
        except BaseException as exc:
            self.ended_by = type(exc).__name__
            raise


def test_cancelled_stream_stops_without_error_logs(caplog: pytest.LogCaptureFixture) -> None:
    request = chat(seed=4)
    assert len(generator.plan_chat(request).pieces) > 8
    watched = WatchedEngine(token_delay_ms=50)

    async def body(stub: engine_pb2_grpc.EngineServiceStub) -> int:
        call = stub.StreamChat(engine_pb2.StreamChatRequest(request=request))
        received = 0
        async for _ in call:
            received += 1
            if received == 3:
                call.cancel()
                break
        await asyncio.sleep(0.3)  # let the server notice and close its generator
        return received

    with caplog.at_level(logging.WARNING):
        assert run_with_engine(body, servicer=watched) == 3
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert watched.ended_by == "CancelledError"
    assert watched.sent <= 4  # the generator stopped instead of running to the end


def test_module_serves_health_and_drains_on_sigterm() -> None:
    port = free_port()
    env = {
        **os.environ,
        "MESHGATE_SERVICES__ENGINE__PORT": str(port),
        "MESHGATE_SERVICES__ENGINE__HOST": "127.0.0.1",
    }
    env.pop("MESHGATE_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.engines.reference.server"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )

    async def probe() -> tuple[int, str]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest(service="meshgate.v1.EngineService")
            deadline = time.monotonic() + 20
            while True:
                try:
                    status = await health.Check(check, timeout=1)
                    break
                except grpc.aio.AioRpcError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    await asyncio.sleep(0.1)
            stub = engine_pb2_grpc.EngineServiceStub(channel)
            reply = await stub.GenerateChat(engine_pb2.GenerateChatRequest(request=chat(seed=1)))
            return status.status, reply.completion.choices[0].message.content

    try:
        status, content = asyncio.run(probe())
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert content == generator.plan_chat(chat(seed=1)).content
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        stderr = proc.stderr.read() if proc.stderr else ""
        assert '"msg": "listening"' in stderr or '"msg":"listening"' in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ignore_eos_always_ends_on_the_cap() -> None:
    """With vLLM's ignore_eos the answer is exactly max_tokens long, finishing on "length"."""
    from meshgate.structs import from_dict
    from meshgate.v1 import inference_pb2
    from services.engines.reference import generator

    for seed in range(60):
        for max_tokens in (1, 7, 40, 41, 76):
            request = inference_pb2.ChatCompletionRequest(
                model="m",
                messages=[inference_pb2.ChatMessage(role="user", text=f"story {seed}")],
                seed=seed,
                max_tokens=max_tokens,
                extra=from_dict({"ignore_eos": True}),
            )
            plan = generator.plan_chat(request)
            assert (plan.completion_tokens, plan.finish_reason) == (max_tokens, "length"), (
                seed,
                max_tokens,
            )
