"""Engine adapters, one module per engine family, all behind `base.EngineAdapter`.

`connect` is the only place that maps a config `kind` to an adapter class, and
`probe` the only one that maps it to a reader of the engine's load signals:
adding an engine family adds a module and a line in each.
"""

from __future__ import annotations

from meshgate.config import Config, EngineReplica, ModelConfig
from services.router.adapters.base import EngineAdapter
from services.router.signals import Probe


def replica_key(model: ModelConfig, engine: EngineReplica, config: Config) -> str:
    """Replicas with the same key share one adapter (and so one connection pool)."""
    if engine.kind == "grpc":
        return f"grpc:{engine.target or config.services.engine.dial_target()}"
    return f"{engine.kind}:{engine.url}#{engine.model or model.id}"


def connect(model: ModelConfig, engine: EngineReplica, config: Config) -> EngineAdapter:
    if engine.kind == "grpc":
        from services.router.adapters.grpc_engine import GrpcEngine

        return GrpcEngine(engine.target or config.services.engine.dial_target(), config.tls)
    from services.router.adapters.openai_http.engine import OpenAIHttpEngine

    return OpenAIHttpEngine(
        engine.url,
        engine.model or model.id,
        api_key_env=engine.api_key_env,
        native_dimensions=model.dimensions,
        max_connections=engine.max_concurrency,
    )


def probe(engine: EngineReplica) -> Probe | None:
    """The reader of the replica's load signals; None when its engine has none we read."""
    if engine.kind != "openai_http" or engine.metrics.kind == "none":
        return None
    from services.router.adapters.openai_http.probe import MetricsProbe

    return MetricsProbe(engine.url, kind=engine.metrics.kind, url=engine.metrics.url)
