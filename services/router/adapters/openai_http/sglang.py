"""SGLang's load, from the gauges of its scheduler's metrics collector.

Source: python/sglang/srt/metrics/collector.py, SchedulerMetricsCollector (SGLang
commit 00ae9c15), with the labels that managers/scheduler_metrics_mixin.py sets:
`model_name`, `engine_type`, `tp_rank`, `pp_rank`, and `dp_rank` under data
parallelism. SGLang names them `sglang:...`; the same series re-exported by tools
that do not allow a colon in a metric name (Shepherd Model Gateway's metrics
sidecar, smg-project/smg PR 813, and collectors that rewrite names) read
`sglang_...`. Both are accepted.

`token_usage` is the share of the KV-cache token pool in use, 0..1.
"""

from __future__ import annotations

from services.router.adapters.openai_http.exposition import Series, combine
from services.router.signals import Load

KIND = "sglang"
PREFIXES = ("sglang:", "sglang_")
QUEUE, RUNNING, TOKEN_USAGE = "num_queue_reqs", "num_running_reqs", "token_usage"
NAMES = tuple(p + n for p in PREFIXES for n in (QUEUE, RUNNING, TOKEN_USAGE))


def load(series: Series) -> Load | None:
    """The load these series describe; None if the page is not an SGLang one."""
    for prefix in PREFIXES:
        queue = combine(series.get(prefix + QUEUE, ()), "dp_rank")
        if queue is None:
            continue
        running = combine(series.get(prefix + RUNNING, ()), "dp_rank")
        usage = combine(series.get(prefix + TOKEN_USAGE, ()), "dp_rank", mean=True)
        return Load(KIND, waiting=queue, running=running or 0.0, kv_usage=usage)
    return None
