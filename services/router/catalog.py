"""The model catalog's live side: each model's replicas and whether it serves.

What a model accepts (category, tools, vision, context length) is checked by
the validation service before quota charges anything; the router only routes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshgate import errors
from meshgate.access import may_use
from meshgate.config import Config, ModelConfig
from meshgate.v1 import common_pb2, inference_pb2
from services.router import adapters
from services.router.balancer import Replica
from services.router.signals import Probe, Signal


@dataclass
class Model:
    config: ModelConfig
    replicas: list[Replica] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.config.id

    def serving(self) -> bool:
        return any(r.healthy for r in self.replicas)

    def card(self) -> inference_pb2.ModelCard:
        c = self.config
        return inference_pb2.ModelCard(
            id=c.id,
            created=c.created,
            owned_by=c.owned_by,
            category=c.category,
            capabilities=list(c.capabilities),
            context_length=c.context_length,
        )


class Catalog:
    def __init__(self, models: list[Model]) -> None:
        self._models = {m.id: m for m in models}

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._models.values())

    def visible(self, principal: common_pb2.Principal) -> list[Model]:
        return [m for m in self._models.values() if m.serving() and may_use(principal, m.id)]

    def resolve(self, model_id: str, principal: common_pb2.Principal) -> Model:
        """The model, if it exists and the key may use it; else 404 model_not_found.

        For generation the edge has checked both before quota; a model missing here
        means the router's config lags the validation service's (a rolling deploy).
        """
        model = self._models.get(model_id)
        if model is None or not may_use(principal, model_id):
            raise errors.model_not_found(model_id)
        return model


def build_catalog(config: Config) -> tuple[Catalog, list[Replica]]:
    """One Model per config entry, and the distinct replicas behind them."""
    replicas: dict[str, Replica] = {}
    # One probe and one signal per engine, however many catalog names it serves.
    engines: dict[str, tuple[Probe | None, Signal]] = {}
    models = []
    for model_config in config.models:
        chosen = []
        for engine in model_config.engines:
            key = adapters.replica_key(model_config, engine, config)
            if key not in replicas:
                probe = adapters.probe(engine)
                where = probe.url if probe is not None else key
                if where not in engines:
                    metrics = engine.metrics
                    engines[where] = probe, Signal(metrics.interval_s, metrics.stale_after_s)
                probe, signal = engines[where]
                replicas[key] = Replica(
                    adapters.connect(model_config, engine, config),
                    weight=engine.weight,
                    max_concurrency=engine.max_concurrency,
                    probe=probe,
                    signal=signal,
                    key=key,
                )
            chosen.append(replicas[key])
        models.append(Model(model_config, chosen))
    return Catalog(models), list(replicas.values())
