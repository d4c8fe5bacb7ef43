"""How the edge hands settlements to quota: carried by Reserves, a bounded number at a time,
and never dropped when quota cannot take them.

The Mesh object alone, on its own event loop; its channels point at nothing, so
the window's SettleMany fails, as it does when quota is away.
"""

from __future__ import annotations

import asyncio

from edge.mesh import Mesh
from edge.settlements import MAX_CARRIED, SETTLE_RETRY_S, SETTLE_WINDOW_S
from meshgate.config import SAMPLE_CONFIG, load_config
from meshgate.v1 import quota_pb2, usage_pb2


def _settlement(lease: str) -> quota_pb2.Settlement:
    return quota_pb2.Settlement(
        reserved_tokens=10, record=usage_pb2.UsageRecord(id=lease, completion_tokens=3)
    )


def test_reserves_carry_settlements_in_bounded_batches_and_failed_ones_come_back() -> None:
    async def run() -> tuple[list[int], int, list[int]]:
        mesh = Mesh(load_config(SAMPLE_CONFIG, environ={}))
        for i in range(MAX_CARRIED + 36):
            mesh.settlements.add(_settlement(f"lease-{i}"))
        sizes = [len(mesh.settlements.take()), len(mesh.settlements.take())]
        batch = mesh.settlements.take()
        mesh.settlements.give_back([_settlement("lease-again")])
        returned = len(mesh.settlements.take())
        mesh.settlements.give_back([_settlement("lease-late")])
        # The window passes: SettleMany takes it and fails (no quota); it is sent again
        # and again, never dropped: it carries the request's usage record.
        await asyncio.sleep(SETTLE_WINDOW_S * 5)
        unsettled = [mesh.settlements.unsettled]
        for _ in range(3):
            await asyncio.sleep(SETTLE_RETRY_S)
            unsettled.append(mesh.settlements.unsettled)
        await mesh.close()
        return [*sizes, len(batch)], returned, unsettled

    sizes, returned, unsettled = asyncio.run(run())
    assert sizes == [MAX_CARRIED, 36, 0]
    assert returned == 1
    assert unsettled == [1, 1, 1, 1]
