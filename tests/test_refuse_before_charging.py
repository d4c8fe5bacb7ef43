"""A request that can never succeed is refused before quota charges anything.

Every check that depends on the model's catalog entry runs in validation (the
key's model allowance at the edge, where the principal meets the request), so
such a request is a 400 or 404 that leaves the key's buckets as they were, not
a 429 that spends them and invites the SDK to retry forever.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import RunningMesh

PRO = "meshgate/reference-pro"
MINI = "meshgate/reference-mini"
EMB = "bge-m3"
RPM = 50
TPM = 20_000
LIMITED = "sk-meshgate-refuse-limited"
ONLY_MINI = "sk-meshgate-refuse-only-mini"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def stack(start_mesh: Any) -> Iterator[RunningMesh]:
    running: RunningMesh = start_mesh(
        keys=[
            {"name": "limited", "secret": LIMITED, "rpm": RPM, "tpm": TPM},
            {"name": "only-mini", "secret": ONLY_MINI, "rpm": RPM, "tpm": TPM, "models": [MINI]},
        ]
    )
    yield running
    running.stop()


def _post(stack: RunningMesh, path: str, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}{path}",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def _remaining(response: httpx.Response) -> tuple[int, int]:
    return (
        int(response.headers["x-ratelimit-remaining-requests"]),
        int(response.headers["x-ratelimit-remaining-tokens"]),
    )


def test_a_too_long_request_on_a_tpm_limited_key_is_400_context_length_not_429(
    stack: RunningMesh,
) -> None:
    """The conformance suite's two failures: max_tokens far past the context."""
    with openai.OpenAI(base_url=stack.base_url, api_key=LIMITED, max_retries=0) as sdk:
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.chat.completions.create(model=PRO, messages=HI, max_tokens=100_000_000)  # type: ignore[arg-type]
    error = caught.value
    assert error.status_code == 400
    assert error.code == "context_length_exceeded"
    assert error.param == "messages"
    body = error.body
    assert isinstance(body, dict)
    assert re.fullmatch(
        r"This model's maximum context length is 32768 tokens\. However, you requested "
        r"(\d+) tokens \((\d+) in the messages, 100000000 in the completion\)\. "
        r"Please reduce the length of the messages or completion\.",
        body["message"],
    )


REFUSED: list[tuple[str, str, str, dict[str, Any], int, str | None, str | None]] = [
    ("unknown-model", "/chat/completions", LIMITED, {"model": "nope", "messages": HI}, 404, None, "model_not_found"),
    ("not-allowed-for-key", "/chat/completions", ONLY_MINI, {"model": PRO, "messages": HI}, 404, None, "model_not_found"),
    ("tools-on-tool-less", "/chat/completions", LIMITED, {"model": MINI, "messages": HI, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools", None),
    ("image-on-non-vision", "/chat/completions", LIMITED, {"model": MINI, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://a/b.png"}}]}]}, 400, "messages[0].content[0]", None),
    ("chat-on-embeddings", "/chat/completions", LIMITED, {"model": EMB, "messages": HI}, 400, "model", None),
    ("context-length", "/chat/completions", LIMITED, {"model": MINI, "messages": HI, "max_tokens": 5000}, 400, "messages", "context_length_exceeded"),
    ("legacy-one-prompt-too-long", "/completions", LIMITED, {"model": MINI, "prompt": ["short", "word " * 4100]}, 400, "prompt[1]", "context_length_exceeded"),
    ("embedding-one-input-too-long", "/embeddings", LIMITED, {"model": EMB, "input": ["short", "word " * 8200, "short"]}, 400, "input[1]", "context_length_exceeded"),
    ("embeddings-on-chat-model", "/embeddings", LIMITED, {"model": MINI, "input": "a"}, 400, "model", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "key", "body", "status", "param", "code"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_a_request_that_cannot_succeed_leaves_the_buckets_untouched(
    stack: RunningMesh,
    path: str,
    key: str,
    body: dict[str, Any],
    status: int,
    param: str | None,
    code: str | None,
) -> None:
    # A good request first: it shows where the buckets stand (and that they move).
    good = _post(stack, "/chat/completions", key, {"model": MINI, "messages": HI, "max_tokens": 4})
    assert good.status_code == 200
    before = _remaining(good)
    for _ in range(3):
        refused = _post(stack, path, key, body)
        assert refused.status_code == status, refused.text
        error = refused.json()["error"]
        assert (error["param"], error["code"]) == (param, code)
        # Authenticated, so the refusal still carries the key's state, and it has not moved
        # (the tokens bucket only refills, so "not lower" is the exact claim).
        requests, tokens = _remaining(refused)
        assert requests >= before[0]
        assert tokens >= before[1]
    after = _post(stack, "/chat/completions", key, {"model": MINI, "messages": HI, "max_tokens": 4})
    assert after.status_code == 200
    # Only the second good request was charged in between: one request, not four.
    assert _remaining(after)[0] >= before[0] - 1


def test_a_good_request_does_spend_the_bucket(stack: RunningMesh) -> None:
    """The untouched-bucket test above could pass if nothing were ever charged."""
    body = {"model": MINI, "messages": HI, "max_tokens": 4}
    first = _post(stack, "/chat/completions", LIMITED, body)
    second = _post(stack, "/chat/completions", LIMITED, body)
    assert first.status_code == second.status_code == 200
    for answer in (first, second):
        requests, tokens = _remaining(answer)
        assert requests < RPM
        assert tokens < TPM


def test_each_legacy_prompt_is_checked_with_its_own_allowance(stack: RunningMesh) -> None:
    """Two prompts that each fit pass, though together they exceed the context."""
    half = "word " * 2500  # about 2,500 tokens each; 4,096 is the model's context
    body = {"model": MINI, "prompt": [half, half], "max_tokens": 2}
    answer = _post(stack, "/completions", LIMITED, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["prompt_tokens"] > 4096
