"""llama.cpp's `llama-server` load: its `--metrics` page, and `/slots`.

Source: the llama.cpp that llama-cpp-python 0.3.36 vendors (the build of the
real-engine tests), tools/server/server-task.cpp,
`server_task_result_metrics::to_metrics`: each metric in three lines with no
labels, the value a double printed by a C++ stream. Older trees wrote the same
names from server.cpp's metrics handler (help texts ending in a period):

    # HELP llamacpp:requests_deferred Number of requests deferred
    # TYPE llamacpp:requests_deferred gauge
    llamacpp:requests_deferred 0

`requests_processing` counts busy slots and `requests_deferred` the tasks waiting
for one. Some trees also report `kv_cache_usage_ratio` (0..1); this one does not.
Without `--metrics` the page is a 501.

`/slots` is a JSON array with one object per slot (`id`, `n_ctx`,
`is_processing`, ...), from server_slot::to_json in server-context.cpp;
`--no-slots` turns it off (501).
"""

from __future__ import annotations

from typing import Any

from services.router.adapters.openai_http.exposition import Series, combine
from services.router.signals import Load

KIND = "llama_cpp"
PROCESSING = "llamacpp:requests_processing"
DEFERRED = "llamacpp:requests_deferred"
KV_CACHE = "llamacpp:kv_cache_usage_ratio"
NAMES = (PROCESSING, DEFERRED, KV_CACHE)


def load(series: Series, slots: tuple[int, int] | None = None) -> Load | None:
    """The load these series (and `/slots`' total and busy counts) describe; None if the
    page is not a llama-server one."""
    processing = combine(series.get(PROCESSING, ()), "")
    deferred = combine(series.get(DEFERRED, ()), "")
    if processing is None or deferred is None:
        return None
    total, busy = slots if slots is not None else (None, None)
    return Load(
        KIND,
        waiting=deferred,
        running=processing,
        kv_usage=combine(series.get(KV_CACHE, ()), ""),
        slots=total,
        busy_slots=busy,
    )


def slot_counts(body: Any) -> tuple[int, int]:
    """(slots, busy slots) from a `/slots` answer; ValueError if it is not one."""
    if not isinstance(body, list) or not all(isinstance(s, dict) for s in body):
        raise ValueError("/slots is not a list of slots")
    return len(body), sum(1 for s in body if s.get("is_processing") is True)
