"""Which models a key may use: one rule for generation (the edge, before quota) and for
listing (the router's `/v1/models`)."""

from __future__ import annotations

from meshgate.v1 import common_pb2


def may_use(principal: common_pb2.Principal, model_id: str) -> bool:
    """An empty allowance means every model."""
    return not principal.allowed_models or model_id in principal.allowed_models
