"""The Vercel AI SDK's default `openai(model)` provider (ai 6.0.325 and @ai-sdk/openai
3.0.141, pinned in tooling/ai-sdk, the newest that run on Node 20) calls /v1/responses:
generateText, streamText and a tool-calling run, through meshgate to the reference engine.

tooling/ai-sdk/responses.mjs does the calls and prints their results as JSON; the test
installs the pinned packages (`npm ci`) when they are missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import RunningMesh

ROOT = Path(__file__).resolve().parents[1]
TOOLING = ROOT / "tooling" / "ai-sdk"
PRO = "meshgate/reference-pro"


@pytest.fixture(scope="module")
def ai_sdk() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the AI SDK")
    if not (TOOLING / "node_modules" / "ai").is_dir():
        subprocess.run(
            ["npm", "ci", "--prefix", str(TOOLING), "--no-audit", "--no-fund", "--loglevel=error"],
            check=True,
            timeout=300,
        )
    return TOOLING / "responses.mjs"


@pytest.fixture(scope="module")
def results(ai_sdk: Path, mesh: RunningMesh) -> dict[str, Any]:
    env = {
        "PATH": str(Path(shutil.which("node") or "node").parent),
        "MESHGATE_BASE_URL": mesh.base_url,
        "MESHGATE_API_KEY": mesh.api_key,
        "MESHGATE_MODEL": PRO,
    }
    done = subprocess.run(
        ["node", str(ai_sdk)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def test_generate_text_is_the_chat_answer(results: dict[str, Any], client: openai.OpenAI) -> None:
    """The AI SDK sends a prompt as a user message with one `input_text` part: the same
    conversation as a chat message with one text part."""
    chat = client.chat.completions.create(
        model=PRO,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}],
    )
    generated = results["generate"]
    assert generated["text"] == chat.choices[0].message.content
    assert generated["finishReason"] == "stop"
    assert generated["responseId"].startswith("resp_")
    assert chat.usage is not None
    assert generated["usage"]["inputTokens"] == chat.usage.prompt_tokens
    assert generated["usage"]["outputTokens"] == chat.usage.completion_tokens


def test_stream_text_equals_generate_text(results: dict[str, Any]) -> None:
    streamed, generated = results["stream"], results["generate"]
    assert streamed["text"] == generated["text"]
    assert streamed["finishReason"] == "stop"
    assert streamed["usage"]["inputTokens"] == generated["usage"]["inputTokens"]
    assert streamed["usage"]["outputTokens"] == generated["usage"]["outputTokens"]


def test_a_tool_call_round_trip(results: dict[str, Any]) -> None:
    run = results["tool"]
    assert len(run["cities"]) == 1 and run["cities"][0]
    steps = run["steps"]
    assert [s["finishReason"] for s in steps] == ["tool-calls", "stop"]
    assert steps[0]["toolCalls"] == ["get_weather"]
    assert run["text"] and run["text"] == steps[-1]["text"]
