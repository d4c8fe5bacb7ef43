"""Which models may serve a request for a model: one rule, for the router (which tries
them) and for quota (which reserves at the dearest of them, so that a budget holds
whichever one answers)."""

from __future__ import annotations

from meshgate.access import may_use
from meshgate.config import ModelConfig
from meshgate.v1 import common_pb2


def chain(model: ModelConfig, principal: common_pb2.Principal) -> tuple[str, ...]:
    """The ids tried after `model`, in order: the key's own list for it if it has one,
    else the catalog's; models the key may not use are left out."""
    if model.id in principal.fallbacks:
        names: tuple[str, ...] = tuple(principal.fallbacks[model.id].models)
    else:
        names = model.fallbacks
    return tuple(name for name in names if name != model.id and may_use(principal, name))
