"""Replica choice: least outstanding requests, weighted, among healthy replicas."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.router.adapters.base import EngineAdapter


@dataclass(eq=False)
class Replica:
    adapter: EngineAdapter
    weight: int = 1
    healthy: bool = True
    outstanding: int = 0
    consecutive_failures: int = field(default=0)

    @property
    def target(self) -> str:
        return self.adapter.target


def pick(replicas: Sequence[Replica], exclude: Sequence[Replica] = ()) -> Replica | None:
    """The healthy replica with the fewest outstanding requests per unit of weight."""
    best: list[Replica] = []
    best_load = float("inf")
    for replica in replicas:
        if not replica.healthy or replica in exclude:
            continue
        load = (replica.outstanding + 1) / replica.weight
        if load < best_load:
            best, best_load = [replica], load
        elif load == best_load:
            best.append(replica)
    return random.choice(best) if best else None
