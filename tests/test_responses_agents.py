"""The OpenAI Agents SDK (openai-agents==0.3.3, pinned in pyproject's test extra) runs an
agent with one function tool through meshgate's Responses API to a final answer.

Its default model class, OpenAIResponsesModel, calls `POST /v1/responses`; the reference
engine calls the tool the question names, then answers in text once the result is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import openai
import pytest

from tests.conftest import RunningMesh

agents = pytest.importorskip("agents")

PRO = "meshgate/reference-pro"


@pytest.fixture
def model(mesh: RunningMesh) -> Iterator[Callable[[], object]]:
    """A factory: an async client belongs to the event loop it first ran in, and each
    `run_sync` or `asyncio.run` has its own."""
    agents.set_tracing_disabled(True)  # its traces would go to OpenAI's own servers

    def make() -> object:
        client = openai.AsyncOpenAI(base_url=mesh.base_url, api_key=mesh.api_key, max_retries=0)
        return agents.OpenAIResponsesModel(model=PRO, openai_client=client)

    yield make


def _agent(model: object, calls: list[str]) -> object:
    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"Sunny and 21 degrees in {city}."

    return agents.Agent(
        name="forecaster",
        instructions="Answer weather questions with the get_weather tool.",
        tools=[get_weather],
        model=model,
    )


def test_an_agent_calls_its_tool_and_answers(model: Callable[[], object]) -> None:
    calls: list[str] = []
    # Runner.run, not run_sync: run_sync takes asyncio.get_event_loop(), which raises once any
    # earlier test's asyncio.run has cleared the main thread's loop.
    result = asyncio.run(agents.Runner.run(_agent(model(), calls), "Use get_weather for Paris."))
    assert len(calls) == 1 and calls[0]
    assert isinstance(result.final_output, str) and result.final_output
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    usage = result.context_wrapper.usage
    assert usage.requests == 2 and usage.input_tokens > 0 and usage.output_tokens > 0


def test_a_streamed_agent_run_gets_the_same_answer(model: Callable[[], object]) -> None:
    question = "Use get_weather for Oslo."
    whole = asyncio.run(agents.Runner.run(_agent(model(), []), question))

    async def streamed() -> tuple[str, list[str]]:
        run = agents.Runner.run_streamed(_agent(model(), []), question)
        kinds = [event.type async for event in run.stream_events()]
        return str(run.final_output), kinds

    final, kinds = asyncio.run(streamed())
    assert final == whole.final_output
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
