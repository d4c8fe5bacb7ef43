"""The router's stream regrouping (services.router.server.batches), on plain asyncio sources."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.router.server import batches


async def _source(items: list[int], pause: asyncio.Event | None = None) -> AsyncIterator[int]:
    for item in items:
        if pause is not None and item == 1:
            await pause.wait()  # the consumer is idle here: item 0 must have gone alone
        yield item


def test_a_waiting_consumer_gets_the_first_chunk_alone_then_what_piled_up() -> None:
    async def run() -> list[list[int]]:
        pause = asyncio.Event()
        out: list[list[int]] = []
        async for batch in batches(_source(list(range(10)), pause)):
            out.append(batch)
            if len(out) == 1:
                pause.set()
                await asyncio.sleep(0.01)  # a slow send: items 1..9 arrive meanwhile
        return out

    out = asyncio.run(asyncio.wait_for(run(), 5))  # a batcher that waited to fill would hang
    assert out == [[0], list(range(1, 10))]


def test_an_error_comes_after_the_chunks_read_before_it() -> None:
    async def failing() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise ValueError("engine broke")

    async def run(seen: list[int]) -> None:
        async for batch in batches(failing()):
            seen.extend(batch)

    seen: list[int] = []
    with pytest.raises(ValueError, match="engine broke"):
        asyncio.run(run(seen))
    assert seen == [1, 2]


def test_leaving_early_stops_the_source() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[int]:
        try:
            n = 0
            while True:
                n += 1
                yield n
                await asyncio.sleep(0.001)
        finally:
            closed.set()

    async def run() -> bool:
        stream = batches(endless())
        async for _ in stream:
            break
        await stream.aclose()
        return closed.is_set()

    assert asyncio.run(run())
