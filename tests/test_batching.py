"""Validate and Reserve calls that meet while one is in flight go together (edge/batching.py).

First the Coalescer alone on its own loop (what goes alone, what waits, what a
batch's failure does), then a real mesh under a burst: every request gets its
own answer, refusal or denial, limits stay exact, and batches did happen.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import openai
import pytest

from edge.batching import MAX_IN_FLIGHT, Coalescer
from edge.mesh import Mesh
from meshgate import errors
from meshgate.config import SAMPLE_CONFIG, load_config
from meshgate.errors import ApiError
from meshgate.v1 import (
    quota_pb2,
    quota_pb2_grpc,
    usage_pb2,
    validation_pb2,
    validation_pb2_grpc,
)
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
        alone = all(batcher.begin() for _ in range(MAX_IN_FLIGHT))
        second = batcher.begin()  # the calls are full: the rest wait
        futures = [batcher.queue(i, f"rid-{i}", time.monotonic() + 5) for i in ("a", "bad", "c")]
        gone = batcher.queue("gone", "rid-gone", time.monotonic() + 5)
        gone.cancel()  # the client left before the batch went: it is not sent
        batcher.end()  # a lone call is over: what waited goes, in one call
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
        assert all(batcher.begin() for _ in range(MAX_IN_FLIGHT))
        futures = [batcher.queue(i, "rid", time.monotonic() + 5) for i in range(3)]
        batcher.end()
        done = await asyncio.gather(*futures, return_exceptions=True)
        assert batcher.begin()  # and the failed call's turn is free again
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
        assert all(batcher.begin() for _ in range(MAX_IN_FLIGHT))
        futures = [batcher.queue(i, "rid", time.monotonic() + 5) for i in range(150)]
        batcher.end()  # one turn free: one batch of 64 goes; when it ends, the next
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


async def _older(
    service: str, add: Callable[[grpc.aio.Server], None]
) -> tuple[grpc.aio.Server, Mesh]:
    """A replica of `service` from before batching (what `add` serves), and an edge's Mesh
    pointed at it."""
    server = grpc.aio.server()
    add(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    prefix = f"MESHGATE_SERVICES__{service.upper()}__"
    environ = {prefix + "HOST": "127.0.0.1", prefix + "PORT": str(port)}
    return server, Mesh(load_config(SAMPLE_CONFIG, environ=environ))


def test_a_quota_replica_without_reserve_many_gets_each_reservation_alone() -> None:
    """A rolling upgrade: an edge with batching meets a quota replica from before it."""
    calls: list[str] = []

    class OlderQuota(quota_pb2_grpc.QuotaServiceServicer):
        async def Reserve(
            self, request: quota_pb2.ReserveRequest, context: grpc.aio.ServicerContext[Any, Any]
        ) -> quota_pb2.ReserveResponse:
            calls.append(request.request_id)
            await asyncio.sleep(0.005)
            if request.prompt_tokens == 3:
                await ApiError(429, "requests", "Rate limit reached.").abort(context)
            return quota_pb2.ReserveResponse(lease_id=request.record.id)

    async def run() -> list[Any]:
        server, mesh = await _older(
            "quota", lambda s: quota_pb2_grpc.add_QuotaServiceServicer_to_server(OlderQuota(), s)
        )
        requests = [
            quota_pb2.ReserveRequest(
                prompt_tokens=i,
                request_id=f"rid-{i}",
                record=usage_pb2.UsageRecord(id=f"lease-{i}"),
            )
            for i in range(8)
        ]
        deadline = time.monotonic() + 5
        try:
            return await asyncio.gather(
                *(mesh.reserve(r, r.request_id, deadline) for r in requests),
                return_exceptions=True,
            )
        finally:
            await mesh.close()
            await server.stop(None)

    answers = asyncio.run(run())
    assert sorted(calls) == [f"rid-{i}" for i in range(8)]  # every one, once, alone
    for i, answer in enumerate(answers):
        if i == 3:
            assert isinstance(answer, ApiError) and answer.status == 429
        else:
            assert answer.lease_id == f"lease-{i}"


def test_a_validation_replica_without_validate_many_gets_each_body_alone() -> None:
    seen: list[bytes] = []

    class OlderValidation(validation_pb2_grpc.ValidationServiceServicer):
        async def ValidateChatCompletion(
            self,
            request: validation_pb2.ValidateChatCompletionRequest,
            context: grpc.aio.ServicerContext[Any, Any],
        ) -> validation_pb2.ValidateChatCompletionResponse:
            seen.append(request.body)
            await asyncio.sleep(0.005)
            if request.body == b"bad":
                await errors.invalid_request("Not JSON.").abort(context)
            return validation_pb2.ValidateChatCompletionResponse(prompt_tokens=len(request.body))

    async def run() -> list[Any]:
        server, mesh = await _older(
            "validation",
            lambda s: validation_pb2_grpc.add_ValidationServiceServicer_to_server(
                OlderValidation(), s
            ),
        )
        method = mesh.validation.ValidateChatCompletion
        deadline = time.monotonic() + 5

        async def one(body: bytes) -> Any:
            message = validation_pb2.ValidateChatCompletionRequest(body=body)
            pending = mesh.start_validation(method, message, "rid", deadline)
            return await mesh.validated(method, message, "rid", deadline, pending)

        try:
            bodies = [b"x" * n for n in range(1, 6)] + [b"bad"]
            return await asyncio.gather(*(one(b) for b in bodies), return_exceptions=True)
        finally:
            await mesh.close()
            await server.stop(None)

    answers = asyncio.run(run())
    assert len(seen) == 6
    assert [a.prompt_tokens for a in answers[:5]] == [1, 2, 3, 4, 5]
    assert isinstance(answers[5], ApiError) and answers[5].status == 400
