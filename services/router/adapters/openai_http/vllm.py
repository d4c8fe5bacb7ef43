"""vLLM's load, from the gauges its Prometheus logger registers.

Source: vllm/v1/metrics/loggers.py, PrometheusStatLogger (vLLM commit 005a810b,
the 0.10 line). Each gauge is labelled `model_name` and `engine` (one series per
engine core under data parallelism). `vllm:kv_cache_usage_perc` replaced
`vllm:gpu_cache_usage_perc` in 0.9; older servers send only the latter, and
both are fractions (1 means 100 percent), whatever the `_perc` suggests.
"""

from __future__ import annotations

from services.router.adapters.openai_http.exposition import Series, combine
from services.router.signals import Load

KIND = "vllm"
WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE = "vllm:kv_cache_usage_perc"
GPU_CACHE = "vllm:gpu_cache_usage_perc"  # the name before vLLM 0.9
NAMES = (WAITING, RUNNING, KV_CACHE, GPU_CACHE)


def load(series: Series) -> Load | None:
    """The load these series describe; None if the page is not a vLLM one."""
    waiting = combine(series.get(WAITING, ()), "engine")
    running = combine(series.get(RUNNING, ()), "engine")
    if waiting is None or running is None:
        return None
    kv = combine(series.get(KV_CACHE) or series.get(GPU_CACHE) or (), "engine", mean=True)
    return Load(KIND, waiting=waiting, running=running, kv_usage=kv)
