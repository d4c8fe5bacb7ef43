"""The edge's settlement batcher: finished requests' settlements, on their way to quota.

Settling happens off the response path, so the client never waits for it.
Settlements ride on the next Reserve (`take`); those that find none within
SETTLE_WINDOW_S go to quota in one SettleMany call, so a busy edge pays no
call of its own for settling. A settlement quota could not apply is sent again
until it is (settling is idempotent per lease): it carries the request's
usage record.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from meshgate.v1 import quota_pb2, quota_pb2_grpc

log = logging.getLogger("meshgate.edge")

# How long finished requests wait to be settled together.
SETTLE_WINDOW_S = 0.002
# Settlements one Reserve carries at most.
MAX_CARRIED = 64
# Settlements one SettleMany call carries at most.
MAX_SETTLE_BATCH = 512
# Pause before sending settlements again that quota could not apply.
SETTLE_RETRY_S = 0.5
# Settlements kept while quota is unreachable; beyond it the oldest leases lapse.
MAX_BACKLOG = 200_000
# Deadline of one SettleMany call.
SETTLE_TIMEOUT_S = 5.0


class Settlements:
    def __init__(self, quota: quota_pb2_grpc.QuotaServiceStub) -> None:
        self._quota = quota
        self._background: set[asyncio.Task[None]] = set()
        self._pending: list[quota_pb2.Settlement] = []
        self._closing = False
        self._in_flight = 0

    def add(self, settlement: quota_pb2.Settlement) -> None:
        """One finished request's settlement, to be sent with the next batch."""
        self._pending.append(settlement)
        if len(self._pending) > MAX_BACKLOG:
            # Quota has been gone for long: the oldest leases lapse instead, and the
            # sweep records them at their reservation (never for free, never twice).
            dropped = len(self._pending) - MAX_BACKLOG
            del self._pending[:dropped]
            log.error("settlement backlog full, oldest left to lapse", extra={"dropped": dropped})
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_later(SETTLE_WINDOW_S, self._flush)

    def take(self) -> list[quota_pb2.Settlement]:
        """Waiting settlements for a Reserve to carry (quota applies them first).

        At most MAX_CARRIED, so that a backlog (after a quota outage) never makes
        one request's admission slow; the rest wait for the next Reserve or the
        window's SettleMany, whose timer is armed while anything waits.
        """
        batch = self._pending[:MAX_CARRIED]
        del self._pending[:MAX_CARRIED]
        return batch

    def give_back(self, batch: list[quota_pb2.Settlement]) -> None:
        """Settlements whose Reserve failed: they go again (settling is idempotent per lease)."""
        for settlement in batch:
            self.add(settlement)

    @property
    def unsettled(self) -> int:
        """Settlements not yet applied by quota: waiting here, or on their way."""
        return len(self._pending) + self._in_flight

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        for start in range(0, len(batch), MAX_SETTLE_BATCH):
            chunk = batch[start : start + MAX_SETTLE_BATCH]
            # Counted from here, not from when the task starts: never in neither place.
            self._in_flight += len(chunk)
            task = asyncio.create_task(self._settle_many(chunk))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _settle_many(self, batch: list[quota_pb2.Settlement]) -> None:
        try:
            await self._quota.SettleMany(
                quota_pb2.SettleManyRequest(settlements=batch), timeout=SETTLE_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            # Quota (or its Redis) is unreachable: wait a moment, then send them again.
            log.warning("settlements not applied, retrying", extra={"error": exc.code().name})
            if not self._closing:
                await asyncio.sleep(SETTLE_RETRY_S)
            self.give_back(batch)
        finally:
            self._in_flight -= len(batch)

    async def drain(self, within_s: float) -> None:
        """Send everything still waiting, retried until quota answers or `within_s` pass."""
        self._closing = True
        deadline = asyncio.get_running_loop().time() + within_s
        while self._pending or self._background:
            self._flush()
            if self._background:
                await asyncio.wait(self._background, timeout=1)
            if asyncio.get_running_loop().time() > deadline:
                log.error(
                    "settlements left unsent at shutdown", extra={"settlements": len(self._pending)}
                )
                break
            if self._pending:
                await asyncio.sleep(SETTLE_RETRY_S)
