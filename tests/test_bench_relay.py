"""bench/relay.py's arithmetic: CPU per chunk with the per-request and the idle cost taken out."""

from __future__ import annotations

from bench.relay import summarize


def _window(requests: int, chunks: int, edge_s: float, router_s: float, seconds: float) -> dict:  # type: ignore[type-arg]
    return {
        "requests": requests,
        "chunks": chunks,
        "seconds": seconds,
        "cpu_s": {"edge": edge_s, "router": router_s},
    }


def test_per_chunk_cost_is_what_the_long_answers_add_beyond_their_requests() -> None:
    # 500 requests a window, each costing 2 ms as a request (its one short chunk
    # included); the long answers' 31,500 extra chunks cost 100 µs each, 60/40 between
    # edge and router; the idle mesh burns 0.1 s of CPU in each 10 s window.
    short = _window(500, 500, edge_s=0.5 + 0.05, router_s=0.5 + 0.05, seconds=10.0)
    long = _window(500, 32_000, edge_s=0.5 + 1.89 + 0.05, router_s=0.5 + 1.26 + 0.05, seconds=10.0)
    out = summarize(long, short, floor_cpu_us=500.0, idle_cpu=0.01)
    # The short answers' one chunk each is part of what a request costs here.
    assert abs(out["per_request_us"] - 2_000.0) < 1.0
    assert abs(out["per_chunk_us"] - 100.0) < 1.0
    assert abs(out["per_chunk_floors"] - 0.2) < 0.01
    assert out["per_chunk_by_process_us"]["edge"] > out["per_chunk_by_process_us"]["router"]
