"""bench/run.py --smoke end to end: its own mesh, both legs, a complete JSON result.

The benchmark is only worth its figures if both legs really ran the same load
without errors, so this checks the result's shape and sanity rather than any
speed (which depends on the machine). It also renders RESULTS.md from that
result (to a temporary path, never the real bench/RESULTS.md), and holds a few
streams open against the mock, which is the streams_rss scenario's client
without the cost of a second mesh.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENDPOINTS = ("chat", "chat_stream", "embeddings")
SMOKE_CONCURRENCIES = (1, 4)


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHGATE_")}
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_smoke(out: Path) -> subprocess.CompletedProcess[str]:
    return run_bench("--smoke", "--out", str(out))


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = run_smoke(out)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert "Closed loop" in proc.stdout  # the table was printed

    result: dict[str, Any] = json.loads(out.read_text())
    assert {"schema", "meta", "preflight", "scenarios", "overhead", "notes"} <= result.keys()
    assert result["meta"]["meshgate_exit_code"] == 0
    assert set(result["preflight"]) == {"direct", "meshgate"}
    # Same payload, same deterministic engine: both legs must have produced the same answer.
    assert result["preflight"]["direct"] == result["preflight"]["meshgate"]

    closed = {
        (s["endpoint"], s["leg"], s["concurrency"]): s
        for s in result["scenarios"]
        if s["mode"] == "closed"
    }
    for endpoint in ENDPOINTS:
        for concurrency in SMOKE_CONCURRENCIES:
            for leg in ("direct", "meshgate"):
                assert (endpoint, leg, concurrency) in closed, (endpoint, leg, concurrency)

    for s in result["scenarios"]:
        assert s["errors"] == 0, (s["id"], s["error_samples"])
        assert s["rps"] > 0, s["id"]
        assert s["requests"] > 0, s["id"]
        latency = s["latency_us"]
        assert {"p50", "p99"} <= latency.keys()
        assert 0 < latency["p50"] <= latency["p99"], s["id"]
        assert {"target_us_per_req", "generator_us_per_req", "host_busy_pct"} <= s["cpu"].keys()
        if s["endpoint"] == "chat_stream":
            assert s["ttft_us"]["p50"] > 0 and s["gap_us"]["mean"] >= 0
            assert s["tokens_per_stream"] == 16

    mesh_cpu = closed[("chat", "meshgate", 4)]["cpu"]
    assert mesh_cpu["target_us_per_req"] > 0
    assert {"edge", "auth", "validation", "quota", "router", "engine", "redis"} <= set(
        mesh_cpu["by_process_us_per_req"]
    )
    assert {s["leg"] for s in result["scenarios"] if s["mode"] == "open"} == {"direct", "meshgate"}

    overhead = {(o["endpoint"], o["concurrency"]): o for o in result["overhead"]}
    assert set(overhead) == {(e, c) for e in ENDPOINTS for c in SMOKE_CONCURRENCIES}
    for o in overhead.values():
        assert o["gateway"] == "meshgate"
        assert o["overhead_p50_us"] is not None and o["overhead_ratio_p50"] is not None
    assert overhead[("chat_stream", 1)]["per_chunk_overhead_us"] is not None

    # The transport's floor: both round trips were timed, and gRPC's is the dearer one.
    floor = result["meta"]["floor"]
    assert 0 < floor["asyncio_tcp"]["p50_us"] < floor["grpc_unary"]["p50_us"], floor
    assert floor["grpc_unary"]["cpu_us"] > 0 and floor["asyncio_tcp"]["cpu_us"] > 0

    check_results_md(out, tmp_path / "RESULTS.md")


def check_results_md(result: Path, md: Path) -> None:
    """--render-only writes RESULTS.md from a result and keeps the notes below the marker."""
    proc = run_bench("--render-only", str(result), "--results-md", str(md))
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = md.read_text()
    assert "## Targets" in text and "## Where the time goes" in text
    assert "chat, c=1: added latency p50" in text
    assert "grpc.aio unary" in text  # the floor table
    assert "not measured" in text  # the smoke run has no c=64 and no streams_rss
    marker = "<!-- notes: kept across runs -->"
    assert text.count(marker) == 1

    md.write_text(text + "\nprofile finding: quota's Redis round trip dominates\n")
    proc = run_bench("--render-only", str(result), "--results-md", str(md))
    assert proc.returncode == 0, proc.stderr[-4000:]
    again = md.read_text()
    assert again.count(marker) == 1
    assert again.endswith("profile finding: quota's Redis round trip dominates\n")


def test_streams_held_against_mock(tmp_path: Path) -> None:
    """The streams_rss client: N streams open at once, first tokens seen, memory sampled."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench.payloads import Payload
    from bench.stack import MockProcess
    from bench.streams import hold_streams, tree_memory

    mock = MockProcess(tmp_path, token_delay_ms=200)
    try:
        held = hold_streams(
            mock.base_url,
            "sk-mock",
            Payload().json_body("chat_stream"),
            20,
            lambda: tree_memory({mock.pid: "mock"}),
        )
    finally:
        mock.stop()
    assert held["requested"] == held["held"] == 20, held
    assert held["errors"] == 0 and held["ended_early"] == 0, held
    assert held["memory"]["rss_kib_total"] > 0
    assert held["memory"]["by_process"]["mock"]["pss_kib"] > 0
    assert held["ttft_us"]["n"] == 20


def test_streams_rss_runs_behind_both_engines(tmp_path: Path) -> None:
    """`--only-streams`: one mesh behind the paced mock over HTTP (the issue's setup, no
    engine process in the tree), one behind the reference engine; the first is the goal's."""
    out = tmp_path / "streams.json"
    proc = run_bench("--only-streams", "--open-streams", "24", "--out", str(out))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(out.read_text())
    runs = result["streams_rss_all"]
    assert [held["upstream"] for held in runs] == ["mock", "reference"]
    assert result["streams_rss"] == runs[0]
    for held in runs:
        assert held["held"] == held["requested"] == 24 and held["errors"] == 0, held
        assert held["meshgate_exit_code"] == 0
    assert "engine" not in runs[0]["memory"]["by_process"]
    assert runs[1]["memory"]["by_process"]["engine"]["rss_kib"] > 0
    assert "the paced mock over HTTP" in proc.stdout and "the reference engine" in proc.stdout


def test_engine_routing_bench_runs_both_legs_without_errors() -> None:
    """bench/engine_routing.py, briefly: both legs run the same schedule and all succeed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHGATE_")}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "engine_routing.py"),
            "--rate",
            "6",
            "--seconds",
            "3",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and " ms " in line]
    assert [row.split("|")[1].strip() for row in rows] == [
        "least-outstanding",
        "engine-aware (1 s reads)",
    ]
    for row in rows:
        cells = [c.strip() for c in row.split("|")]
        assert int(cells[2]) > 0 and cells[3] == "0", row  # requests, errors


def test_the_memory_goal_is_judged_on_distinct_pages_else_pss_else_rss() -> None:
    """A mesh of forked services shares pages, so its RSS sum overstates: the goal row
    uses the distinct pages, or Pss where they could not be read; RSS only for results
    from before the forkserver."""
    from bench.results_md import MEMORY_LIMIT_MB, _streams

    def row(memory: dict[str, Any]) -> tuple[str, bool | None]:
        held = {"held": 2000, "requested": 2000, "errors": 0, "upstream": "mock"}
        figure = _streams({"streams_rss": {**held, "memory": memory}})
        return figure.text, figure.met

    kib = int(MEMORY_LIMIT_MB * 1e6 / 1024)  # the limit, in KiB
    forked = {"forkserver": {"rss_kib": 1, "pss_kib": 1}}
    text, met = row(
        {"rss_kib_total": 3 * kib, "pss_kib_total": kib - 10, "unique_kib_total": kib - 5}
    )
    assert met and "MB in distinct pages" in text
    assert not row({"rss_kib_total": 1, "pss_kib_total": 1, "unique_kib_total": kib + 5})[1]
    text, met = row({"rss_kib_total": 3 * kib, "pss_kib_total": kib - 10, "by_process": forked})
    assert met and "judged on Pss" in text
    assert not row({"rss_kib_total": 3 * kib, "pss_kib_total": kib + 10, "by_process": forked})[1]
    assert not row({"rss_kib_total": kib + 10, "pss_kib_total": 1, "by_process": {}})[1]
    assert row({"rss_kib_total": kib - 10, "pss_kib_total": 1, "by_process": {}})[1]
