"""Calls to one service that meet while one is in flight go together, in the next call.

Under load most of a quick hop's CPU is the gRPC call itself (about 0.5 ms for
an empty round trip on 2 cores; bench/floor.py), not the work it carries. So
the edge keeps one Reserve and one Validate call in flight: a request that finds
none goes alone at once, by the single method, with no window or timer;
requests that arrive meanwhile wait, and all of them go in the next call of the
batch method (ReserveMany, ValidateMany) as soon as it ends. A lone request pays
nothing for this; the batch grows with the load. A body over ALONE_BYTES is
validated alone, outside the turn, so that counting a huge prompt holds up no
other request. (Two calls in flight batched so little at c=64 that the CPU per
request stayed where it was without batching: bench/RESULTS.md's notes.)

Each item gets its own outcome: a denial or a refusal is that request's, never
its neighbours'. A failure of the whole call (the service unreachable) reaches
every request in it, each as its own copy of the error, since callers add to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import prometheus_client

from meshgate import errors
from meshgate.errors import ApiError

Item = TypeVar("Item")
Result = TypeVar("Result")

# Requests one batch call carries at most; more wait for the next call.
MAX_BATCH = 64
# Calls to one service in flight at once from one edge, alone or batched.
MAX_IN_FLIGHT = 1
# A body bigger than this is validated by a call of its own, never making others wait.
ALONE_BYTES = 64 * 1024

BATCH_CALLS = prometheus_client.Counter(
    "meshgate_edge_batch_calls",
    "Batch calls (ValidateMany, ReserveMany) the edge made, by service.",
    ["service"],
)
BATCHED = prometheus_client.Counter(
    "meshgate_edge_batched_requests",
    "Requests that went to a service inside a batch call rather than alone, by service.",
    ["service"],
)

# Send a batch: items, a request id for the call's metadata, the earliest deadline.
SendMany = Callable[[list[Item], str, float], Awaitable[list[Result | ApiError]]]


class _Waiting(Generic[Item, Result]):
    __slots__ = ("deadline", "future", "item", "request_id")

    def __init__(
        self, item: Item, request_id: str, deadline: float, future: asyncio.Future[Result]
    ) -> None:
        self.item = item
        self.request_id = request_id
        self.deadline = deadline
        self.future = future


class Coalescer(Generic[Item, Result]):
    def __init__(self, service: str, send_many: SendMany[Item, Result]) -> None:
        self._send_many = send_many
        self._calls = BATCH_CALLS.labels(service)
        self._batched = BATCHED.labels(service)
        self._in_flight = 0
        self._waiting: list[_Waiting[Item, Result]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def begin(self) -> bool:
        """True when a call may start: the caller sends its request alone, now, and
        calls `end()` once that call is over. False: `queue()` it instead."""
        if self._in_flight >= MAX_IN_FLIGHT:
            return False
        self._in_flight += 1
        return True

    def end(self) -> None:
        """A call in flight is over: what waited goes next, in one call."""
        self._in_flight -= 1
        while self._waiting and self._in_flight < MAX_IN_FLIGHT:
            batch = [w for w in self._waiting[:MAX_BATCH] if not w.future.done()]
            del self._waiting[:MAX_BATCH]
            if batch:
                self._in_flight += 1
                task = asyncio.get_running_loop().create_task(self._send(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def queue(self, item: Item, request_id: str, deadline: float) -> asyncio.Future[Result]:
        """Wait for the next batch call; the future holds this item's answer or error.

        Cancelling the future (the client left) only drops the item's answer."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(item, request_id, deadline, future))
        return future

    async def _send(self, batch: list[_Waiting[Item, Result]]) -> None:
        self._calls.inc()
        self._batched.inc(len(batch))
        try:
            outcomes = await self._send_many(
                [w.item for w in batch], batch[0].request_id, min(w.deadline for w in batch)
            )
            if len(outcomes) != len(batch):
                raise errors.server_error()
        except ApiError as exc:
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(ApiError.from_proto(exc.to_proto()))
        except BaseException:
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(errors.server_error())
            raise
        else:
            for waiting, outcome in zip(batch, outcomes, strict=True):
                if waiting.future.done():
                    continue
                if isinstance(outcome, ApiError):
                    waiting.future.set_exception(outcome)
                else:
                    waiting.future.set_result(outcome)
        finally:
            self.end()
