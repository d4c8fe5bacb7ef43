"""What every engine process counts, in Prometheus form, under the same names.

Tests read these to prove that a client's disconnect stops generation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import prometheus_client

TOKENS = prometheus_client.Counter(
    "meshgate_engine_tokens_generated", "Completion tokens this engine has produced."
)
ACTIVE_STREAMS = prometheus_client.Gauge(
    "meshgate_engine_active_streams", "Streams being generated right now."
)
CANCELLED_STREAMS = prometheus_client.Counter(
    "meshgate_engine_cancelled_streams", "Streams stopped early because the caller went away."
)


@contextlib.contextmanager
def generating() -> Iterator[None]:
    """Count a stream while it runs, and whether it was cut short."""
    ACTIVE_STREAMS.inc()
    try:
        yield
    except (asyncio.CancelledError, GeneratorExit):
        CANCELLED_STREAMS.inc()
        raise
    finally:
        ACTIVE_STREAMS.dec()
