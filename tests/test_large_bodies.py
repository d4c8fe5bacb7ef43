"""A vision request with a large inline image is served, as OpenAI serves it.

OpenAI accepts up to 50 MB of payload per request; the edge's default limit is
above that, and every hop carries such a body (gRPC's message limit is larger).
"""

from __future__ import annotations

import base64

import openai

from tests.conftest import RunningMesh

PRO = "meshgate/reference-pro"


def test_a_20_mib_image_is_answered_not_413(mesh: RunningMesh) -> None:
    image = "data:image/png;base64," + base64.b64encode(b"\x89PNG" * (5 * 1024 * 1024)).decode()
    assert len(image) > 20 * 1024 * 1024
    with openai.OpenAI(base_url=mesh.base_url, api_key=mesh.api_key, max_retries=0) as sdk:
        answer = sdk.chat.completions.create(
            model=PRO,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this picture?"},
                        {"type": "image_url", "image_url": {"url": image}},
                    ],
                }
            ],
            max_tokens=4,
            timeout=60,
        )
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.prompt_tokens > 0


def test_the_default_limit_is_above_openais_50_mb(mesh: RunningMesh) -> None:
    assert mesh.config.edge.max_body_bytes >= 50 * 1000 * 1000
