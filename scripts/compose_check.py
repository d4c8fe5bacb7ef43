"""The client half of scripts/compose-check.sh: the openai SDK against the compose stack.

    python scripts/compose_check.py sdk              # a chat, a stream and embeddings
    python scripts/compose_check.py traffic SECONDS  # one sequential client: prints "SENT RETRIED"

CHECK_BASE_URL (http://127.0.0.1:PORT/v1) and CHECK_KEY name the edge and the key.
The SDK retries as it does by default (a 503 from a fail_closed key while Redis is slow
to answer, for one); each answer other than 200 is counted and reported on stderr.
"""

from __future__ import annotations

import os
import sys
import time

import httpx
import openai

CHAT = "meshgate/reference-pro"
SMALL = "meshgate/reference-mini"
EMBED = "bge-m3"
HELLO = [{"role": "user", "content": "Hello"}]


# Answers other than 200 that the SDK retried (or gave up on): status -> count.
RETRIED: dict[int, int] = {}


def _count(response: httpx.Response) -> None:
    if response.status_code != 200:
        RETRIED[response.status_code] = RETRIED.get(response.status_code, 0) + 1
        print(f"compose_check: {response.status_code} from {response.url}", file=sys.stderr)


def _client() -> openai.OpenAI:
    return openai.OpenAI(
        base_url=os.environ["CHECK_BASE_URL"],
        api_key=os.environ["CHECK_KEY"],
        timeout=30,
        max_retries=3,
        http_client=httpx.Client(timeout=30, event_hooks={"response": [_count]}),
    )


def sdk() -> None:
    client = _client()
    chat = client.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=12)
    assert chat.choices[0].message.content, chat
    assert chat.usage is not None and chat.usage.completion_tokens > 0, chat
    stream = client.chat.completions.create(
        model=CHAT,
        messages=HELLO,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage is not None, chunks
    embeddings = client.embeddings.create(model=EMBED, input=["hello", "world"])
    assert [d.index for d in embeddings.data] == [0, 1], embeddings
    assert len(embeddings.data[0].embedding) == 1024
    print(
        f"openai SDK: a chat of {chat.usage.completion_tokens} tokens, "
        f"a stream of {len(chunks)} chunks, 2 embeddings"
    )


def traffic(seconds: float) -> None:
    """One request after another, each on the same client, until `seconds` pass."""
    client = _client()
    end, sent = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        client.chat.completions.create(
            model=SMALL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        sent += 1
    print(sent, sum(RETRIED.values()))


if __name__ == "__main__":
    if sys.argv[1:2] == ["sdk"]:
        sdk()
    elif sys.argv[1:2] == ["traffic"] and len(sys.argv) == 3:
        traffic(float(sys.argv[2]))
    else:
        sys.exit(__doc__)
