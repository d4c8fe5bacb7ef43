"""Replica choice: least outstanding requests, weighted, among healthy replicas."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from services.router.adapters.base import EngineAdapter


@dataclass(eq=False)
class Replica:
    adapter: EngineAdapter
    weight: int = 1
    healthy: bool = True
    outstanding: int = 0
    # Active health checks missed in a row.
    failed_checks: int = 0
    # Times taken out of rotation since the router started.
    ejections: int = 0

    @property
    def target(self) -> str:
        return self.adapter.target


def pick(replicas: Sequence[Replica], exclude: Sequence[Replica] = ()) -> Replica | None:
    """The healthy replica with the fewest outstanding requests per unit of weight.

    When no replica is healthy, an ejected one is tried rather than failing
    outright (Envoy's "panic" routing): health can lag behind a recovery, and a
    dead replica refuses a connection fast.
    """
    return _least_loaded(replicas, exclude, healthy=True) or _least_loaded(
        replicas, exclude, healthy=False
    )


def _least_loaded(
    replicas: Sequence[Replica], exclude: Sequence[Replica], *, healthy: bool
) -> Replica | None:
    best: list[Replica] = []
    best_load = float("inf")
    for replica in replicas:
        if replica.healthy != healthy or replica in exclude:
            continue
        load = (replica.outstanding + 1) / replica.weight
        if load < best_load:
            best, best_load = [replica], load
        elif load == best_load:
            best.append(replica)
    return random.choice(best) if best else None
