"""What the edge records about each request: Prometheus metrics and one JSON access-log line.

The router reports how long the engine took (`x-engine-time-us` trailing
metadata), so `meshgate_gateway_overhead_seconds` is the request's total time
minus the engine's: the number this project is judged on.
"""

from __future__ import annotations

import logging

import prometheus_client

log = logging.getLogger("meshgate.edge.access")

# Where the pipeline leaves what it learned, for the wrapper to record.
MODEL_KEY = "meshgate.model"
ENGINE_KEY = "meshgate.engine_seconds"

REQUESTS = prometheus_client.Counter(
    "meshgate_requests", "Requests by route, model and HTTP status.", ["route", "model", "status"]
)
LATENCY = prometheus_client.Histogram(
    "meshgate_request_seconds",
    "Time to the response's first byte (streams: to the first chunk), by route and model.",
    ["route", "model"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
OVERHEAD = prometheus_client.Histogram(
    "meshgate_gateway_overhead_seconds",
    "Non-streaming requests: total time minus the engine's own time.",
    ["route"],
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1),
)
TOKENS = prometheus_client.Counter(
    "meshgate_tokens",
    "Tokens billed, by model and direction (prompt or completion).",
    ["model", "direction"],
)


def record(
    route: str,
    model: str,
    status: int,
    seconds: float,
    engine_seconds: float | None,
    request_id: str,
    access_log: bool,
) -> None:
    REQUESTS.labels(route, model, str(status)).inc()
    LATENCY.labels(route, model).observe(seconds)
    if engine_seconds is not None:
        OVERHEAD.labels(route).observe(max(seconds - engine_seconds, 0.0))
    if not access_log:
        return
    log.info(
        "request",
        extra={
            "request_id": request_id,
            "route": route,
            "model": model,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
        },
    )


def tokens(model: str, prompt: int, completion: int) -> None:
    TOKENS.labels(model, "prompt").inc(prompt)
    TOKENS.labels(model, "completion").inc(completion)
