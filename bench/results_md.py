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
MEMORY_LIMIT_MB = 500.0
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


def _memory_basis(memory: dict[str, Any]) -> tuple[float, str]:
    """(MB the memory goal is judged on, how the row names it when that is not RSS).

    The mesh's distinct resident pages, where the bench could read them (it takes
    root). Without them, Pss if the services were forked (it came within 2 % of
    the distinct pages, while a sum of RSS counts every shared page once per
    process). Results from before the forkserver: RSS, which for processes that
    shared nothing but libraries was the strict figure.
    """
    if memory.get("unique_kib_total"):
        mb = memory["unique_kib_total"] * 1024 / 1e6
        return mb, f"{mb:,.0f} MB in distinct pages, "
    if "forkserver" in memory.get("by_process", {}):
        return memory["pss_kib_total"] * 1024 / 1e6, "judged on Pss: "
    return memory["rss_kib_total"] * 1024 / 1e6, ""


def _streams(result: dict[str, Any]) -> Figure:
    held = result.get("streams_rss")
    if not held or held.get("failure") or not held.get("memory"):
        return NOT_MEASURED
    memory = held["memory"]
    rss_mb = memory["rss_kib_total"] * 1024 / 1e6
    pss_mb = memory["pss_kib_total"] * 1024 / 1e6
    judged_mb, basis = _memory_basis(memory)
    text = (
        f"behind {report.upstream_label(held)}: {held['held']:,}/{held['requested']:,} held, {held['errors']} errors, "
        f"{basis}{rss_mb:,.0f} MB RSS (Pss {pss_mb:,.0f} MB)"
    )
    met = held["held"] >= STREAMS_TARGET and held["errors"] == 0 and judged_mb <= MEMORY_LIMIT_MB
    return Figure(text, met)


def _grpc_floor(result: dict[str, Any]) -> dict[str, float]:
    """The transport's floor of this run (bench/floor.py): `p50_us` and `cpu_us`; {} if
    the run did not measure it."""
    floor: dict[str, float] = result.get("meta", {}).get("floor", {}).get("grpc_unary", {})
    return floor


def _floor(result: dict[str, Any], what: str) -> float | None:
    value = _grpc_floor(result).get(what)
    return float(value) if value else None


def _relay_chunk(result: dict[str, Any]) -> Figure:
    relayed = result.get("relay")
    if not relayed:
        return NOT_MEASURED
    floors = relayed["per_chunk_floors"]
    message = relayed.get("stream_message_floor_us")
    alone = (
        f"; one paced grpc.aio stream message alone: {message:,.0f} µs = "
        f"{message / relayed['floor_cpu_us']:.2f} floor"
        if message
        else ""
    )
    return Figure(
        f"{relayed['per_chunk_us']:,.0f} µs = {floors:.2f} floor "
        f"(floor {relayed['floor_cpu_us']:,.0f} µs{alone})",
        floors <= 0.15,
    )


def _request_floors(result: dict[str, Any]) -> Figure:
    s = _scenario(result, "chat", "meshgate", THROUGHPUT_CONCURRENCY)
    total = mesh_cpu_us(s) if s else None
    floor = _floor(result, "cpu_us")
    if s is None or total is None or floor is None:
        return NOT_MEASURED
    total -= s["cpu"]["by_process_us_per_req"].get("engine", 0.0)
    return Figure(
        f"{_ms(total)} = {total / floor:.1f} floors at c={THROUGHPUT_CONCURRENCY} "
        f"(floor {floor:,.0f} µs)",
        total / floor <= 2.5,
    )


def _latency_floors(result: dict[str, Any]) -> Figure:
    mesh = _scenario(result, "chat", "meshgate", 1)
    direct = _scenario(result, "chat", "direct", 1)
    floor = _floor(result, "p50_us")
    if not mesh or not direct or not mesh["latency_us"] or not direct["latency_us"] or not floor:
        return NOT_MEASURED
    added = mesh["latency_us"]["p50"] - direct["latency_us"]["p50"]
    return Figure(
        f"{_ms(added)} = {added / floor:.1f} floors (floor {floor:,.0f} µs)", added / floor <= 3
    )


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
        "relay: mesh CPU per streamed chunk (64 paced streams, per-request cost out)",
        "≤ 0.15 floor",
        _relay_chunk,
    ),
    Target(
        f"chat, c={THROUGHPUT_CONCURRENCY}: mesh CPU per request (no engine)",
        "≤ 2.5 floors",
        _request_floors,
    ),
    Target("chat, c=1: added latency p50, in floors", "≤ 3 floors", _latency_floors),
    Target(
        f"{STREAMS_TARGET:,} open streams: mesh memory",
        f"{STREAMS_TARGET:,} held, ≤ {MEMORY_LIMIT_MB:,.0f} MB",
        _streams,
    ),
)


# ------------------------------------------------------------------- peers ----


@dataclass(frozen=True)
class PeerRow:
    """One figure compared across meshgate and each peer, from one leg's scenarios."""

    what: str
    endpoint: str
    concurrency: int  # the wanted one; the nearest measured one is used and named
    higher_is_better: bool
    floor: str | None  # "p50_us" or "cpu_us": also shown as a multiple of the transport's floor
    measure: Callable[[dict[str, Any], str, int], float | None]


def _leg_scenario(result: dict[str, Any], endpoint: str, leg: str, conc: int) -> dict[str, Any]:
    return _scenario(result, endpoint, leg, conc) or {}


def _rps(result: dict[str, Any], leg: str, conc: int, endpoint: str = "chat") -> float | None:
    s = _leg_scenario(result, endpoint, leg, conc)
    return float(s["rps"]) if s and not s["errors"] else None


def _added(quantile: str) -> Callable[[dict[str, Any], str, int], float | None]:
    def measure(result: dict[str, Any], leg: str, conc: int) -> float | None:
        gateway = _leg_scenario(result, "chat", leg, conc).get("latency_us")
        direct = _leg_scenario(result, "chat", "direct", conc).get("latency_us")
        return float(gateway[quantile] - direct[quantile]) if gateway and direct else None

    return measure


def _gateway_cpu(result: dict[str, Any], leg: str, conc: int) -> float | None:
    value = _leg_scenario(result, "chat", leg, conc).get("cpu", {}).get("gateway_us_per_req")
    return float(value) if value is not None else None


def _chunk_cpu(result: dict[str, Any], leg: str, conc: int) -> float | None:
    cpu = _leg_scenario(result, "chat_stream", leg, conc).get("cpu", {})
    value = cpu.get("gateway_per_chunk_us")
    return float(value) if value is not None else None


def _ttft_added(result: dict[str, Any], leg: str, conc: int) -> float | None:
    for o in result.get("overhead", []):
        if (o["endpoint"], o["concurrency"], o["gateway"]) == ("chat_stream", conc, leg):
            value = o.get("ttft_overhead_p50_us")
            return float(value) if value is not None else None
    return None


PEER_ROWS: tuple[PeerRow, ...] = (
    PeerRow("chat throughput, req/s", "chat", THROUGHPUT_CONCURRENCY, True, None, _rps),
    PeerRow(
        "chat_stream throughput, req/s",
        "chat_stream",
        THROUGHPUT_CONCURRENCY,
        True,
        None,
        lambda r, leg, c: _rps(r, leg, c, "chat_stream"),
    ),
    PeerRow("chat added latency p50", "chat", 1, False, "p50_us", _added("p50")),
    PeerRow("chat added latency p99", "chat", 1, False, "p50_us", _added("p99")),
    PeerRow(
        "chat CPU per request (gateway)",
        "chat",
        THROUGHPUT_CONCURRENCY,
        False,
        "cpu_us",
        _gateway_cpu,
    ),
    PeerRow(
        "chat_stream CPU per chunk (gateway)",
        "chat_stream",
        THROUGHPUT_CONCURRENCY,
        False,
        "cpu_us",
        _chunk_cpu,
    ),
    PeerRow("chat_stream TTFT added p50", "chat_stream", 1, False, "p50_us", _ttft_added),
)


def peer_names(result: dict[str, Any]) -> list[str]:
    """The peers a run measured, in the order they were given."""
    return list(result.get("meta", {}).get("peers") or {})


def _nearest_concurrency(result: dict[str, Any], endpoint: str, wanted: int) -> int | None:
    measured = sorted(
        {
            s["concurrency"]
            for s in result.get("scenarios", [])
            if s["mode"] == "closed" and s["endpoint"] == endpoint and s["leg"] == "meshgate"
        }
    )
    if not measured:
        return None
    return min(measured, key=lambda c: (abs(c - wanted), -c))


def _peer_value(value: float | None, row: PeerRow, floor: dict[str, Any]) -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if row.higher_is_better else _ms(value)
    unit = floor.get(row.floor) if row.floor else None
    if unit:
        text += f" ({value / unit:.1f} fl)"
    return text


def peer_ratio(mesh: float | None, peer: float | None, higher_is_better: bool) -> float | None:
    """How many times meshgate is ahead of the peer (>1 ahead, <1 behind); None if undefined.

    An added latency at or below zero (noise at c=1 can do that) has no ratio.
    """
    if mesh is None or peer is None or mesh <= 0 or peer <= 0:
        return None
    return mesh / peer if higher_is_better else peer / mesh


def peers_table(result: dict[str, Any]) -> str:
    """meshgate against each peer: the figures, and meshgate's lead as a ratio."""
    names = peer_names(result)
    floor = _grpc_floor(result)
    header = ["figure", "conc", "meshgate"]
    for name in names:
        header += [name, f"x vs {name}"]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * (1 + 2 * len(names))]
    behind: list[str] = []
    for row in PEER_ROWS:
        conc = _nearest_concurrency(result, row.endpoint, row.concurrency)
        if conc is None:
            continue
        label = f"c={conc}" + (
            f" (c={row.concurrency} not measured)" if conc != row.concurrency else ""
        )
        mesh = row.measure(result, "meshgate", conc)
        cells = [row.what, label, _peer_value(mesh, row, floor)]
        for name in names:
            value = row.measure(result, name, conc)
            ratio = peer_ratio(mesh, value, row.higher_is_better)
            cells += [_peer_value(value, row, floor), f"{ratio:.2f}" if ratio is not None else "-"]
            if ratio is not None and ratio < 1:
                behind.append(f"{row.what} ({name}, {ratio:.2f}x)")
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines.append("")
    if behind:
        lines.append("meshgate is behind on: " + "; ".join(behind) + ".")
    else:
        lines.append("meshgate is ahead (or level) on every figure measured.")
    return "\n".join(lines)


def peers_section(result: dict[str, Any]) -> list[str]:
    """The "Peers side by side" section's lines; empty when the run measured no peer."""
    names = peer_names(result)
    if not names:
        return []
    meta = result.get("meta", {})
    floor = _grpc_floor(result)
    lines = [
        "## Peers side by side",
        "",
        "Same mock upstream (bench/mock_openai.py), same load generator, same run; legs "
        "alternate at each (endpoint, concurrency). The peers run with no auth, no limits and "
        "no database; meshgate with its bench key (auth, quota on Redis), validation and the "
        f"ledger {'on' if meta.get('ledger', 'on') == 'on' else 'off'}. `x` is how many times "
        "meshgate is ahead: the peer's figure over meshgate's for costs and latencies, "
        "meshgate's over the peer's for throughput (> 1: meshgate ahead). Added latency is the "
        "leg's minus the mock's called directly; CPU is the gateway's own process tree (the "
        "mock excluded), per chunk = (stream - non-stream CPU per request) / chunks.",
    ]
    if floor:
        lines.append(
            f"`fl` = multiples of the transport's floor measured in this run (one empty "
            f"grpc.aio round trip: {floor.get('p50_us', 0):,.0f} µs p50, "
            f"{floor.get('cpu_us', 0):,.0f} µs CPU)."
        )
    lines += ["", peers_table(result), ""]
    for name in names:
        peer = meta["peers"][name]
        versions = ", ".join(f"{k} {v}" for k, v in (peer.get("versions") or {}).items())
        idle = peer.get("idle_core_pct")
        idle_text = f"; idle it used {idle:g} % of a core" if idle is not None else ""
        lines.append(f"- **{name}**: {peer.get('description', '')} ({versions}){idle_text}")
    lines.append("")
    return lines


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
        "`meshgate up` (Redis and the reference engine included). Memory is the resident pages "
        "of that tree while every stream is open, each physical page counted once (its "
        "forked services share pages; results from before the forkserver, its summed "
        "VmRSS); MB = 10^6 bytes.",
    ]
    if cpus != 2:
        lines += ["", f"This run had {cpus} CPUs, not 2: compare with care."]
    lines += ["", targets_table(result, baseline), ""]
    lines += peers_section(result)
    lines += ["## Where the time goes", ""]
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
    relayed = report.relay_text(result)
    if relayed:
        lines += [_fenced(relayed), ""]
    if not (mesh_rows or hops or held or relayed):
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
