"""Validate and Reserve calls that meet while one is in flight go together (edge/batching.py).

First the Coalescer alone on its own loop (what goes alone, what waits, what a
batch's failure does), then a real mesh under a burst: every request gets its
own answer, refusal or denial, limits stay exact, and batches did happen.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from edge.batching import Coalescer
from meshgate import errors
from meshgate.errors import ApiError
from tests.conftest import RunningMesh, free_ports
from tests.support import metric


def test_a_lone_call_goes_at_once_and_what_meets_it_goes_in_one_batch_in_order() -> None:
    sent: list[list[str]] = []

    async def many(items: list[str], request_id: str, deadline: float) -> list[str | ApiError]:
        sent.append(items)
        await asyncio.sleep(0.01)
        return [errors.invalid_request("no", "x") if i == "bad" else i.upper() for i in items]

    async def run() -> tuple[bool, bool, list[Any]]:
        batcher: Coalescer[str, str] = Coalescer("test", many)
        alone = batcher.begin()
        second = batcher.begin()  # one is in flight: the rest wait
        futures = [batcher.queue(i, f"rid-{i}", time.monotonic() + 5) for i in ("a", "bad", "c")]
        gone = batcher.queue("gone", "rid-gone", time.monotonic() + 5)
        gone.cancel()  # the client left before the batch went: it is not sent
        batcher.end()  # the lone call is over: what waited goes, in one call
        results = await asyncio.gather(*futures, return_exceptions=True)
        return alone, second, results

    alone, second, results = asyncio.run(run())
    assert (alone, second) == (True, False)
    assert sent == [["a", "bad", "c"]]
    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], ApiError) and results[1].param == "x"


def test_a_failed_batch_gives_every_request_its_own_copy_of_the_error() -> None:
    async def many(items: list[int], request_id: str, deadline: float) -> list[int | ApiError]:
        raise errors.unavailable("quota")

    async def run() -> list[BaseException]:
        batcher: Coalescer[int, int] = Coalescer("test", many)
        assert batcher.begin()
        futures = [batcher.queue(i, "rid", time.monotonic() + 5) for i in range(3)]
        batcher.end()
        done = await asyncio.gather(*futures, return_exceptions=True)
        assert batcher.begin()  # and the coalescer is free again
        return [d for d in done if isinstance(d, BaseException)]

    failures = asyncio.run(run())
    assert len(failures) == 3 and all(isinstance(f, ApiError) for f in failures)
    assert all(f.status == 503 for f in failures)  # type: ignore[attr-defined]
    assert len({id(f) for f in failures}) == 3  # callers add headers to theirs


def test_more_than_a_batch_waits_for_the_next_call() -> None:
    sizes: list[int] = []

    async def many(items: list[int], request_id: str, deadline: float) -> list[int | ApiError]:
        sizes.append(len(items))
        await asyncio.sleep(0)
        return list(items)

    async def run() -> list[int]:
        batcher: Coalescer[int, int] = Coalescer("test", many)
        assert batcher.begin()
        futures = [batcher.queue(i, "rid", time.monotonic() + 5) for i in range(150)]
        batcher.end()
        return list(await asyncio.gather(*futures))

    assert asyncio.run(run()) == list(range(150))
    assert sizes == [64, 64, 22]


# ------------------------------------------------------------- a real mesh ----


RPM = 40
LIMITED = "sk-meshgate-test-batching-rpm"
CHAT = {
    "model": "meshgate/reference-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 4,
}


@pytest.fixture(scope="module")
def burst_mesh(start_mesh: Any) -> Iterator[tuple[RunningMesh, int]]:
    """A mesh whose edge serves metrics, with the dev key and one of `RPM` requests a minute."""
    (metrics_port,) = free_ports(1)
    keys = [
        {"name": "dev", "secret": "sk-meshgate-dev-local-only", "rpm": 100000, "tpm": 10**9},
        {"name": "limited", "secret": LIMITED, "rpm": RPM},
    ]
    mesh: RunningMesh = start_mesh(edge={"metrics_port": metrics_port}, keys=keys)
    yield mesh, metrics_port
    mesh.stop()


def _batched(port: int) -> dict[str, float]:
    return {
        service: metric(port, "meshgate_edge_batched_requests_total", f'service="{service}"')
        for service in ("validation", "quota")
    }


async def _burst(mesh: RunningMesh, key: str, calls: list[dict[str, Any]]) -> list[Any]:
    """Every call at once; each answer, or the APIStatusError it met."""
    async with openai.AsyncOpenAI(base_url=mesh.base_url, api_key=key, max_retries=0) as client:

        async def one(body: dict[str, Any]) -> Any:
            try:
                return await client.chat.completions.create(**body)
            except openai.APIStatusError as exc:
                return exc

        return await asyncio.gather(*(one(body) for body in calls))


def test_a_burst_of_mixed_requests_gets_each_its_own_answer(
    burst_mesh: tuple[RunningMesh, int],
) -> None:
    mesh, port = burst_mesh
    before = _batched(port)
    kinds = ["ok", "bad", "unknown"] * 40
    bodies = [
        CHAT
        if kind == "ok"
        else {**CHAT, "temperature": 7}
        if kind == "bad"
        else {**CHAT, "model": "no-such-model"}
        for kind in kinds
    ]
    answers = asyncio.run(_burst(mesh, mesh.api_key, bodies))
    for kind, answer in zip(kinds, answers, strict=True):
        if kind == "ok":
            assert answer.choices[0].message.content, answer
        elif kind == "bad":
            assert isinstance(answer, openai.BadRequestError), answer
            assert answer.body["param"] == "temperature"  # type: ignore[index]
        else:
            assert isinstance(answer, openai.NotFoundError), answer
            assert answer.body["code"] == "model_not_found"  # type: ignore[index]
    after = _batched(port)
    # 120 requests at once cannot all have gone alone.
    assert after["validation"] > before["validation"]
    assert after["quota"] > before["quota"]


def test_an_rpm_limit_stays_exact_when_reservations_go_in_batches(
    burst_mesh: tuple[RunningMesh, int],
) -> None:
    mesh, port = burst_mesh
    before = _batched(port)["quota"]
    started = time.monotonic()
    answers = asyncio.run(_burst(mesh, LIMITED, [CHAT] * 150))
    window = time.monotonic() - started
    denied = [a for a in answers if isinstance(a, openai.APIStatusError)]
    assert all(isinstance(a, openai.RateLimitError) for a in denied), denied[:3]
    admitted = len(answers) - len(denied)
    refilled = math.floor(window * RPM / 60)
    assert RPM <= admitted <= RPM + refilled, (admitted, window)
    assert _batched(port)["quota"] > before
