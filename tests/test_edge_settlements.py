"""How the edge hands settlements to quota: carried by Reserves, a bounded number at a time.

The Mesh object alone, on its own event loop; its channels point at nothing, so
the window's SettleMany fails quietly, as it does when quota is away.
"""

from __future__ import annotations

import asyncio

from edge.mesh import MAX_CARRIED, SETTLE_WINDOW_S, Mesh
from meshgate.config import SAMPLE_CONFIG, load_config
from meshgate.v1 import common_pb2, quota_pb2


def test_reserves_carry_settlements_in_bounded_batches_and_failed_ones_come_back() -> None:
    async def run() -> tuple[list[int], int, int]:
        mesh = Mesh(load_config(SAMPLE_CONFIG, environ={}))
        principal = common_pb2.Principal(key_id="key_test")
        for i in range(MAX_CARRIED + 36):
            reservation = quota_pb2.ReserveResponse(lease_id=f"lease-{i}", reserved_tokens=10)
            mesh.settle(principal, reservation, common_pb2.Usage(completion_tokens=3))
        mesh.settle(principal, quota_pb2.ReserveResponse(), common_pb2.Usage())  # no lease
        sizes = [len(mesh.take_settlements()), len(mesh.take_settlements())]
        batch = mesh.take_settlements()
        mesh.return_settlements(
            [quota_pb2.SettleRequest(principal=principal, lease_id="lease-again")]
        )
        returned = len(mesh.take_settlements())
        mesh.return_settlements(
            [quota_pb2.SettleRequest(principal=principal, lease_id="lease-late")]
        )
        await asyncio.sleep(SETTLE_WINDOW_S * 5)  # the window passes: SettleMany takes it
        left = len(mesh.take_settlements())
        await mesh.close()
        return [*sizes, len(batch)], returned, left

    sizes, returned, left = asyncio.run(run())
    assert sizes == [MAX_CARRIED, 36, 0]  # a lease-less reservation has nothing to settle
    assert returned == 1
    assert left == 0
