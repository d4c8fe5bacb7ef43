"""bench/RESULTS.md: the issue's performance targets, measured, met or not, before and after.

A JSON result answers every question but nobody reads 40 kB of JSON to learn
whether the gateway is fast enough yet. This renders the few figures the
targets are about, next to the same figures from the committed baseline
(bench/results/baseline.json, the "before"), plus where the time goes (CPU by
process, each hop alone, memory with the streams open) so that a regression
or an improvement can be read off one page. `bench/run.py` regenerates it at
the end of every full run and with `--render-only FILE`.

Everything from the notes marker on is kept as it is, so engineers can write
profile findings there without a later run wiping them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report

ROOT = Path(__file__).resolve().parents[1]
NOTES_MARKER = "<!-- notes: kept across runs -->"
DEFAULT_NOTES = """
## Notes

Profile findings and explanations go here: `bench/run.py` rewrites everything
above the marker line and keeps this section as it is.
"""
# The memory target: this many streams open at once, in at most this many MB (10^6 bytes).
STREAMS_TARGET = 2000
RSS_LIMIT_MB = 500.0
THROUGHPUT_CONCURRENCY = 64


@dataclass(frozen=True)
class Figure:
    """One target's measured figure: the text shown, and whether the goal is met."""

    text: str
    met: bool | None  # None: not measured by this run


NOT_MEASURED = Figure("not measured", None)


@dataclass(frozen=True)
class Target:
    what: str
    goal: str
    measure: Callable[[dict[str, Any]], Figure]


def _scenario(result: dict[str, Any], endpoint: str, leg: str, conc: int) -> dict[str, Any] | None:
    for s in result.get("scenarios", []):
        if (s["mode"], s["endpoint"], s["leg"], s["concurrency"]) == (
            "closed",
            endpoint,
            leg,
            conc,
        ):
            return s
    return None


def _overhead(result: dict[str, Any], endpoint: str, conc: int) -> dict[str, Any]:
    for o in result.get("overhead", []):
        if (o["endpoint"], o["concurrency"], o["gateway"]) == (endpoint, conc, "meshgate"):
            return dict(o)
    return {}


def _ms(us: float) -> str:
    return f"{us / 1000:,.2f} ms"


def _added_latency(quantile: str, limit_us: float) -> Callable[[dict[str, Any]], Figure]:
    def measure(result: dict[str, Any]) -> Figure:
        mesh = _scenario(result, "chat", "meshgate", 1)
        direct = _scenario(result, "chat", "direct", 1)
        if not mesh or not direct or not mesh["latency_us"] or not direct["latency_us"]:
            return NOT_MEASURED
        gateway, engine = mesh["latency_us"][quantile], direct["latency_us"][quantile]
        added = gateway - engine
        return Figure(f"{_ms(added)} ({_ms(gateway)} vs {_ms(engine)} direct)", added <= limit_us)

    return measure


def _throughput(result: dict[str, Any]) -> Figure:
    s = _scenario(result, "chat", "meshgate", THROUGHPUT_CONCURRENCY)
    if s is None:
        return NOT_MEASURED
    return Figure(
        f"{s['rps']:,.0f} req/s, {s['errors']} errors", s["rps"] >= 1500 and s["errors"] == 0
    )


def mesh_cpu_us(scenario: dict[str, Any]) -> float | None:
    """CPU per request summed over the `meshgate up` tree (not the mock, not a generator)."""
    by_process: dict[str, float] = scenario.get("cpu", {}).get("by_process_us_per_req") or {}
    mesh = [v for k, v in by_process.items() if k != "mock" and not k.startswith("gw:")]
    return sum(mesh) if mesh else None


def _cpu(result: dict[str, Any]) -> Figure:
    s = _scenario(result, "chat", "meshgate", THROUGHPUT_CONCURRENCY)
    total = mesh_cpu_us(s) if s else None
    if s is None or total is None:
        return NOT_MEASURED
    text = f"{_ms(total)} at c={THROUGHPUT_CONCURRENCY}"
    engine = s["cpu"]["by_process_us_per_req"].get("engine")
    if engine is not None and result.get("meta", {}).get("upstream") == "reference":
        text += f" ({_ms(total - engine)} without the engine)"
    return Figure(text, total <= 1000.0)


def _per_chunk(result: dict[str, Any]) -> Figure:
    value = _overhead(result, "chat_stream", 1).get("per_chunk_overhead_us")
    if value is None:
        return NOT_MEASURED
    return Figure(f"{value:,.0f} µs", value <= 30.0)


def _ttft(result: dict[str, Any]) -> Figure:
    ttft = _overhead(result, "chat_stream", 1).get("ttft_overhead_p50_us")
    unary = _overhead(result, "chat", 1).get("overhead_p50_us")
    if ttft is None or unary is None:
        return NOT_MEASURED
    return Figure(f"{_ms(ttft)} vs {_ms(unary)} non-streaming", ttft <= unary)


def _streams(result: dict[str, Any]) -> Figure:
    held = result.get("streams_rss")
    if not held or held.get("failure") or not held.get("memory"):
        return NOT_MEASURED
    memory = held["memory"]
    rss_mb = memory["rss_kib_total"] * 1024 / 1e6
    pss_mb = memory["pss_kib_total"] * 1024 / 1e6
    text = (
        f"{held['held']:,}/{held['requested']:,} held, {held['errors']} errors, "
        f"{rss_mb:,.0f} MB RSS (Pss {pss_mb:,.0f} MB)"
    )
    met = held["held"] >= STREAMS_TARGET and held["errors"] == 0 and rss_mb <= RSS_LIMIT_MB
    return Figure(text, met)


TARGETS: tuple[Target, ...] = (
    Target("chat, c=1: added latency p50", "≤ 1.0 ms", _added_latency("p50", 1000.0)),
    Target("chat, c=1: added latency p99", "≤ 3 ms", _added_latency("p99", 3000.0)),
    Target(
        f"chat through meshgate, c={THROUGHPUT_CONCURRENCY}: throughput",
        "≥ 1,500 req/s, no errors",
        _throughput,
    ),
    Target("chat: CPU per request, all mesh processes", "≤ 1.0 ms", _cpu),
    Target("chat_stream, c=1: overhead per chunk", "≤ 30 µs", _per_chunk),
    Target("chat_stream, c=1: TTFT overhead (p50)", "≤ non-streaming overhead", _ttft),
    Target(
        f"{STREAMS_TARGET:,} open streams: mesh memory",
        f"{STREAMS_TARGET:,} held, ≤ {RSS_LIMIT_MB:,.0f} MB RSS",
        _streams,
    ),
)


def evaluate(result: dict[str, Any]) -> list[Figure]:
    """Each target's figure, in TARGETS order."""
    return [target.measure(result) for target in TARGETS]


def _met(figure: Figure) -> str:
    return {True: "yes", False: "**no**", None: "-"}[figure.met]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def targets_table(result: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    """The Markdown table: target, goal, before (baseline), now, met."""
    now = evaluate(result)
    before = evaluate(baseline) if baseline is not None else [NOT_MEASURED] * len(TARGETS)
    lines = ["| target | goal | before | now | met |", "|---|---|---|---|---|"]
    for target, b, n in zip(TARGETS, before, now, strict=True):
        lines.append(
            f"| {_cell(target.what)} | {_cell(target.goal)} | {_cell(b.text)} "
            f"| {_cell(n.text)} | {_met(n)} |"
        )
    met = sum(1 for f in now if f.met)
    measured = sum(1 for f in now if f.met is not None)
    lines.append("")
    lines.append(f"{met} of {len(TARGETS)} targets met ({measured} measured by this run).")
    return "\n".join(lines)


def _describe(result: dict[str, Any]) -> str:
    meta = result.get("meta", {})
    profile = meta.get("profile", {}).get("name", "?")
    return (
        f"{meta.get('started_at', '?')}, commit `{meta.get('git_commit') or '?'}`, "
        f"profile `{profile}`, upstream `{meta.get('upstream', '?')}`"
    )


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _fenced(text: str) -> str:
    return f"```\n{text}\n```"


def render(
    result: dict[str, Any], baseline: dict[str, Any] | None, baseline_path: Path | None = None
) -> str:
    """Everything above the notes marker."""
    meta = result.get("meta", {})
    host = meta.get("host", {})
    cpus = host.get("cpus")
    lines = [
        "# meshgate benchmark results",
        "",
        "<!-- Generated by bench/run.py (a full run, or --render-only FILE): everything above the",
        "     notes marker is rewritten each time; write below it. -->",
        "",
        f"- **Measured**: {_describe(result)}, {meta.get('elapsed_s', '?')} s",
        f"- **Machine**: {cpus} CPUs, {host.get('platform', '?')}, Python "
        f"{host.get('python', '?')}; host {host.get('baseline_busy_pct', '?')} % busy before "
        f"the run; load generator on the same machine",
    ]
    if baseline is not None:
        where = f"`{_display_path(baseline_path)}`: " if baseline_path is not None else ""
        lines.append(f"- **Before**: {where}{_describe(baseline)}")
    else:
        lines.append("- **Before**: no baseline result")
    lines += [
        "",
        "## Targets",
        "",
        "For a 2-core machine with the load generator beside the stack and production settings "
        "(auth, quota on Redis, validation, routing). Added latency is meshgate minus the "
        "engine called directly, same run, same load. CPU is utime+stime of every process of "
        "`meshgate up` (Redis and the reference engine included). Memory is the summed VmRSS "
        "of that tree while every stream is open; MB = 10^6 bytes.",
    ]
    if cpus != 2:
        lines += ["", f"This run had {cpus} CPUs, not 2: compare with care."]
    lines += ["", targets_table(result, baseline), "", "## Where the time goes", ""]
    mesh_rows = [
        s
        for s in result.get("scenarios", [])
        if s["mode"] == "closed"
        and s["leg"] == "meshgate"
        and s.get("cpu", {}).get("by_process_us_per_req")
    ]
    if mesh_rows:
        lines += [
            "CPU µs per request through meshgate, by process (utime+stime over each window):",
            "",
            _fenced(report.cpu_table(mesh_rows)),
            "",
        ]
    hops = report.hops_text(result)
    if hops:
        lines += [_fenced(hops), ""]
    held = report.streams_text(result)
    if held:
        lines += [_fenced(held), ""]
    if not (mesh_rows or hops or held):
        lines += ["Not measured by this run.", ""]
    notes = result.get("notes") or []
    if notes:
        lines += ["## Run notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


def write(
    path: Path,
    result: dict[str, Any],
    baseline: dict[str, Any] | None,
    baseline_path: Path | None = None,
) -> None:
    """Rewrite `path`, keeping whatever follows the notes marker in the existing file."""
    kept = DEFAULT_NOTES
    if path.is_file():
        existing = path.read_text()
        at = existing.find(NOTES_MARKER)
        if at >= 0:
            kept = existing[at + len(NOTES_MARKER) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(result, baseline, baseline_path) + "\n" + NOTES_MARKER + kept)
