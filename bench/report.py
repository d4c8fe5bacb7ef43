"""Turning raw samples into the figures of the report, and the report into text.

Percentiles are nearest-rank on the raw samples (no histogram buckets), in
microseconds. Gateway overhead is always computed between two scenarios of
the same run with the same endpoint, payload and concurrency: the gateway's
p50 minus the direct path's p50 (and their ratio).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

US = 1_000_000.0


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..1)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def distribution_us(seconds: Iterable[float]) -> dict[str, float] | None:
    """p50/p90/p99/p99.9/mean/max in µs of samples given in seconds; None when empty."""
    ordered = sorted(seconds)
    if not ordered:
        return None
    return {
        "n": len(ordered),
        "p50": round(percentile(ordered, 0.50) * US, 1),
        "p90": round(percentile(ordered, 0.90) * US, 1),
        "p99": round(percentile(ordered, 0.99) * US, 1),
        "p999": round(percentile(ordered, 0.999) * US, 1),
        "mean": round(sum(ordered) / len(ordered) * US, 1),
        "max": round(ordered[-1] * US, 1),
    }


def overhead(direct: dict[str, Any], gateway: dict[str, Any]) -> dict[str, Any]:
    """What the gateway adds over the direct path, for two scenarios at the same load."""
    d_lat, g_lat = direct["latency_us"], gateway["latency_us"]
    out: dict[str, Any] = {
        "endpoint": gateway["endpoint"],
        "concurrency": gateway["concurrency"],
        "gateway": gateway["leg"],
        "direct_rps": direct["rps"],
        "gateway_rps": gateway["rps"],
        "direct_p50_us": d_lat["p50"] if d_lat else None,
        "gateway_p50_us": g_lat["p50"] if g_lat else None,
        "overhead_p50_us": None,
        "overhead_ratio_p50": None,
        "overhead_p99_us": None,
    }
    if d_lat and g_lat:
        out["overhead_p50_us"] = round(g_lat["p50"] - d_lat["p50"], 1)
        out["overhead_ratio_p50"] = round(g_lat["p50"] / d_lat["p50"], 2) if d_lat["p50"] else None
        out["overhead_p99_us"] = round(g_lat["p99"] - d_lat["p99"], 1)
    if gateway["endpoint"] == "chat_stream":
        d_ttft, g_ttft = direct.get("ttft_us"), gateway.get("ttft_us")
        d_gap, g_gap = direct.get("gap_us"), gateway.get("gap_us")
        out["ttft_overhead_p50_us"] = (
            round(g_ttft["p50"] - d_ttft["p50"], 1) if d_ttft and g_ttft else None
        )
        out["per_chunk_overhead_us"] = (
            round(g_gap["mean"] - d_gap["mean"], 1) if d_gap and g_gap else None
        )
    cpu_d, cpu_g = direct.get("cpu", {}), gateway.get("cpu", {})
    if cpu_d.get("target_us_per_req") and cpu_g.get("target_us_per_req"):
        out["cpu_overhead_us_per_req"] = round(
            cpu_g["target_us_per_req"] - cpu_d["target_us_per_req"], 1
        )
    return out


def add_chunk_cpu(scenarios: list[dict[str, Any]]) -> None:
    """CPU per streamed chunk: (stream CPU/request - non-stream CPU/request) / chunks.

    A stream and a non-stream request differ only in how the answer travels, so
    the difference, spread over the chunks, is what relaying one chunk costs.
    """
    unary = {
        (s["leg"], s["concurrency"]): s["cpu"]
        for s in scenarios
        if s["endpoint"] == "chat" and s["mode"] == "closed"
    }
    for s in scenarios:
        base = unary.get((s["leg"], s["concurrency"]))
        tokens = s.get("tokens_per_stream")
        if s["endpoint"] != "chat_stream" or base is None or not tokens:
            continue
        stream_cpu, chat_cpu = s["cpu"].get("target_us_per_req"), base.get("target_us_per_req")
        if stream_cpu is not None and chat_cpu is not None:
            s["cpu"]["per_chunk_us"] = round((stream_cpu - chat_cpu) / tokens, 1)
        # The same without the upstream: what the gateway alone pays to relay a chunk.
        stream_gw, chat_gw = s["cpu"].get("gateway_us_per_req"), base.get("gateway_us_per_req")
        if stream_gw is not None and chat_gw is not None:
            s["cpu"]["gateway_per_chunk_us"] = round((stream_gw - chat_gw) / tokens, 1)


# ------------------------------------------------------------------ tables ----


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _numeric(cell: str) -> bool:
    return cell == "-" or cell[:1].isdigit() or (cell[:1] in "-+" and cell[1:2].isdigit())


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns of numbers are right-aligned (header included), text columns left-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    right = [bool(rows) and all(_numeric(row[i]) for row in rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if r else cell.ljust(width)
            for cell, width, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _ms(dist: dict[str, float] | None, key: str) -> str:
    return _fmt(dist[key] / 1000.0, 2) if dist else "-"


def _us(dist: dict[str, float] | None, key: str) -> str:
    return _fmt(dist[key], 0) if dist else "-"


def _closed_table(closed: list[dict[str, Any]], overheads: dict[Any, dict[str, Any]]) -> str:
    rows = []
    for s in closed:
        o = overheads.get((s["endpoint"], s["concurrency"], s["leg"]), {})
        cpu = s.get("cpu", {})
        ratio = o.get("overhead_ratio_p50")
        rows.append(
            [
                s["endpoint"],
                s["leg"],
                str(s["concurrency"]),
                _fmt(s["rps"], 0),
                _ms(s["latency_us"], "p50"),
                _ms(s["latency_us"], "p99"),
                str(s["errors"]),
                _fmt(o.get("overhead_p50_us"), 0),
                f"{ratio:.2f}x" if ratio else "-",
                _fmt(cpu.get("target_us_per_req"), 0),
                _fmt(cpu.get("gateway_us_per_req"), 0),
                _fmt(cpu.get("generator_us_per_req"), 0),
                _fmt(cpu.get("host_busy_pct"), 0),
                _fmt(cpu.get("other_core_pct"), 0),
            ]
        )
    headers = [
        "endpoint", "leg", "conc", "req/s", "p50 ms", "p99 ms", "err", "over µs", "ratio",
        "cpu µs/req", "gw cpu µs", "gen cpu µs", "host %", "other %",
    ]  # fmt: skip
    return table(headers, rows)


def _stream_table(streams: list[dict[str, Any]], overheads: dict[Any, dict[str, Any]]) -> str:
    rows = []
    for s in streams:
        o = overheads.get((s["endpoint"], s["concurrency"], s["leg"]), {})
        rows.append(
            [
                s["leg"],
                str(s["concurrency"]),
                _ms(s.get("ttft_us"), "p50"),
                _ms(s.get("ttft_us"), "p99"),
                _us(s.get("gap_us"), "mean"),
                _ms(s["latency_us"], "p50"),
                _ms(s["latency_us"], "p99"),
                _fmt(o.get("ttft_overhead_p50_us"), 0),
                _fmt(o.get("per_chunk_overhead_us"), 1),
                _fmt(s["cpu"].get("per_chunk_us"), 0),
                _fmt(s.get("tokens_per_stream"), 1),
            ]
        )
    headers = [
        "leg", "conc", "ttft p50 ms", "ttft p99 ms", "gap mean µs", "total p50 ms",
        "total p99 ms", "ttft over µs", "chunk over µs", "cpu/chunk µs", "chunks",
    ]  # fmt: skip
    return table(headers, rows)


def _open_table(opened: list[dict[str, Any]]) -> str:
    rows = []
    for s in opened:
        rows.append(
            [
                s["endpoint"],
                s["leg"],
                _fmt(s["rate"], 0),
                _fmt(s["rps"], 0),
                _ms(s["latency_us"], "p50"),
                _ms(s["latency_us"], "p99"),
                _ms(s["latency_us"], "max"),
                str(s["errors"]),
                _us(s.get("send_lag_us"), "p99"),
                str(s.get("connections") or "-"),
                _fmt(s.get("cpu", {}).get("target_us_per_req"), 0),
                _fmt(s.get("cpu", {}).get("other_core_pct"), 0),
            ]
        )
    headers = [
        "endpoint", "leg", "rate/s", "done/s", "p50 ms", "p99 ms", "max ms", "err",
        "send lag p99 µs", "conns", "cpu µs/req", "other %",
    ]  # fmt: skip
    return table(headers, rows)


PROCESS_ORDER = (
    "edge",
    "auth",
    "validation",
    "quota",
    "redis",
    "router",
    "engine",
    "launcher",
    "forkserver",
)


def cpu_table(scenarios: list[dict[str, Any]]) -> str:
    labels: list[str] = []
    for s in scenarios:
        for label in s["cpu"]["by_process_us_per_req"]:
            if label not in labels:
                labels.append(label)
    rank = {label: i for i, label in enumerate(PROCESS_ORDER)}
    labels.sort(key=lambda label: rank.get(label, len(rank)))
    rows = []
    for s in scenarios:
        per = s["cpu"]["by_process_us_per_req"]
        rows.append(
            [s["endpoint"], s["leg"], str(s["concurrency"])]
            + [_fmt(per.get(label), 0) for label in labels]
            + [_fmt(s["cpu"].get("target_us_per_req"), 0)]
        )
    return table(["endpoint", "leg", "conc", *labels, "total"], rows)


def render(result: dict[str, Any]) -> str:
    """The human-readable report: closed loop, streaming detail, open loop, CPU breakdown."""
    scenarios = result["scenarios"]
    overheads = {(o["endpoint"], o["concurrency"], o["gateway"]): o for o in result["overhead"]}
    closed = [s for s in scenarios if s["mode"] == "closed"]
    streams = [s for s in closed if s["endpoint"] == "chat_stream"]
    opened = [s for s in scenarios if s["mode"] == "open"]
    breakdown = [s for s in closed if s.get("cpu", {}).get("by_process_us_per_req")]
    sections = []
    if closed:
        sections.append(
            "Closed loop (fixed concurrency); overhead = gateway p50 - direct p50\n"
            + _closed_table(closed, overheads)
        )
    if streams:
        sections.append(
            "Streaming (chat, stream=true): time to first token, gap between chunks, total\n"
            + _stream_table(streams, overheads)
        )
    if opened:
        sections.append(
            "Open loop (fixed arrival rate; latency from the scheduled send time)\n"
            + _open_table(opened)
        )
    if breakdown:
        sections.append(
            "CPU µs per request, by process (utime+stime over the measurement window)\n"
            + cpu_table(breakdown)
        )
    hops_section = hops_text(result)
    if hops_section:
        sections.append(hops_section)
    streams_section = streams_text(result)
    if streams_section:
        sections.append(streams_section)
    relay_section = relay_text(result)
    if relay_section:
        sections.append(relay_section)
    notes = result.get("notes") or []
    if notes:
        sections.append("\n".join(f"note: {n}" for n in notes))
    return "\n\n".join(sections)


def hops_text(result: dict[str, Any]) -> str:
    """The per-hop table (bench/hops.py) and the validation hop's share; "" when not measured."""
    measured = result.get("meta", {}).get("hops_p50_us")
    if not measured:
        return ""
    rows = [[hop, _fmt(us, 0)] for hop, us in measured.items()]
    text = (
        "Each hop alone, p50 µs at concurrency 1 (in a request, auth runs alongside validation "
        "only when the edge's auth cache misses)\n"
    )
    text += table(["hop", "p50 µs"], rows)
    share = result["meta"].get("validation_share") or {}
    if share:
        text += (
            f"\nvalidation hop: {share.get('validation_p50_us', 0):.0f} µs p50 = "
            f"{share.get('of_c1_overhead_pct', float('nan')):.0f}% of the c=1 chat overhead "
            "(all of it on the critical path: the edge's auth cache answers auth); "
            f"{share.get('of_gateway_cpu_pct', float('nan')):.0f}% of the gateway's CPU per request"
        )
    measured_floor = result["meta"].get("floor")
    if measured_floor:
        grpc_hop, tcp = measured_floor["grpc_unary"], measured_floor["asyncio_tcp"]
        text += (
            "\n\nThe transport's floor (bench/floor.py): one empty round trip between two "
            "processes, c=1, uvloop\n"
            + table(
                ["round trip", "p50 µs", "CPU µs (both ends)"],
                [
                    ["grpc.aio unary", _fmt(grpc_hop["p50_us"], 0), _fmt(grpc_hop["cpu_us"], 0)],
                    ["asyncio TCP", _fmt(tcp["p50_us"], 0), _fmt(tcp["cpu_us"], 0)],
                ],
            )
            + f"\na chat crosses 3 gRPC hops the direct path does not (validation, quota, "
            f"router): {3 * grpc_hop['p50_us']:,.0f} µs of added latency and "
            f"{3 * grpc_hop['cpu_us']:,.0f} µs of CPU before meshgate's own code runs"
        )
    return text


def _mb(kib: float | None) -> str:
    return _fmt(kib * 1024 / 1e6, 1) if kib is not None else "-"


def streams_summary(held: dict[str, Any]) -> str:
    """One line: how many streams were held, errors, and the mesh's total memory."""
    if held.get("failure"):
        reason = held["failure"].splitlines()[0] if held["failure"] else "?"
        return f"{held.get('requested', 0):,} streams requested: not measured ({reason})"
    memory = held.get("memory") or {}
    return (
        f"{held['held']:,}/{held['requested']:,} streams held, {held['errors']} errors, "
        f"{held.get('ended_early', 0)} ended early; all first tokens after {held['open_s']:.1f} s; "
        f"mesh {_mb(memory.get('unique_kib_total'))} MB in distinct pages "
        f"(Pss {_mb(memory.get('pss_kib_total'))} MB, RSS {_mb(memory.get('rss_kib_total'))} MB), "
        f"idle {_idle(held.get('idle_memory') or {})}"
    )


def _idle(memory: dict[str, Any]) -> str:
    """The idle mesh on the basis of the held figure: distinct pages, else (older results) RSS."""
    if memory.get("unique_kib_total"):
        return f"{_mb(memory['unique_kib_total'])} MB in distinct pages"
    return f"{_mb(memory.get('rss_kib_total'))} MB RSS"


def streams_table(held: dict[str, Any]) -> str:
    """Memory per process of the mesh, idle and with every stream open, in MB (10^6 bytes)."""
    idle = (held.get("idle_memory") or {}).get("by_process", {})
    busy = (held.get("memory") or {}).get("by_process", {})
    rank = {label: i for i, label in enumerate(PROCESS_ORDER)}
    labels = sorted(set(idle) | set(busy), key=lambda label: rank.get(label, len(rank)))
    rows = [
        [
            label,
            _mb(idle.get(label, {}).get("rss_kib")),
            _mb(busy.get(label, {}).get("rss_kib")),
            _mb(busy.get(label, {}).get("pss_kib")),
        ]
        for label in labels
    ]
    totals = [
        "total",
        _mb((held.get("idle_memory") or {}).get("rss_kib_total")),
        _mb((held.get("memory") or {}).get("rss_kib_total")),
        _mb((held.get("memory") or {}).get("pss_kib_total")),
    ]
    return table(["process", "idle RSS MB", "held RSS MB", "held Pss MB"], [*rows, totals])


# What each streams_rss run was behind (bench/streams.py UPSTREAMS); results without an
# `upstream` predate the HTTP-engine run and were behind the reference engine.
UPSTREAM_LABELS = {"mock": "the paced mock over HTTP", "reference": "the reference engine"}


def upstream_label(held: dict[str, Any]) -> str:
    return UPSTREAM_LABELS.get(held.get("upstream", "reference"), "?")


def streams_text(result: dict[str, Any]) -> str:
    """The streams_rss scenarios: summary line and memory per process; "" when not run."""
    texts = []
    for held in result.get("streams_rss_all") or [result.get("streams_rss") or {}]:
        if not held:
            continue
        text = (
            f"Open streams held (streams_rss): chat streams through meshgate, engine "
            f"{upstream_label(held)}, token_delay_ms "
            f"{held.get('token_delay_ms', math.nan):g}\n" + streams_summary(held)
        )
        if held.get("memory"):
            text += "\n" + streams_table(held)
        texts.append(text)
    return "\n\n".join(texts)


def relay_summary(relayed: dict[str, Any]) -> str:
    """One line: CPU per chunk and per request, in µs and floors, and the streams held."""
    ramp = relayed.get("ramp") or {}
    held = (
        f"; {ramp['held_streams']:,} streams held before ITL p99 grew {ramp['growth_ms']:g} ms"
        if ramp
        else ""
    )
    return (
        f"{relayed['per_chunk_us']:,.0f} µs of mesh CPU per chunk ({relayed['per_chunk_floors']:.2f} floor), "
        f"{relayed['per_request_us']:,.0f} µs per request ({relayed['per_request_floors']:.1f} floors) "
        f"at {relayed['chunks_per_s']:,} chunks/s{held}"
    )


def relay_text(result: dict[str, Any]) -> str:
    """The relay scenario's figures per process and its ramp; "" when not run."""
    relayed = result.get("relay")
    if not relayed:
        return ""
    floor = relayed["floor_cpu_us"]
    lines = [
        f"Relay (bench/relay.py): {relayed['streams']} streams, {relayed['long_chunks']} chunks "
        f"{relayed['token_ms']:g} ms apart vs 1 chunk, same schedule; floor {floor:,.0f} µs CPU",
        relay_summary(relayed),
    ]
    message = relayed.get("stream_message_floor_us")
    if message:
        lines.append(
            f"one paced grpc.aio server-stream message alone (bench/floor.py, same schedule): "
            f"{message:,.0f} µs = {message / floor:.3f} floor; a relayed chunk costs "
            f"{relayed['per_chunk_stream_messages']:.2f} of them"
        )
    lines.append("")
    rows = [
        [label, _fmt(us, 1), _fmt(us / floor, 3)]
        for label, us in sorted(relayed["per_chunk_by_process_us"].items(), key=lambda kv: -kv[1])
        if abs(us) >= 0.5
    ]
    lines.append(table(["process", "µs/chunk", "floors"], rows))
    ramp = relayed.get("ramp")
    if ramp:
        lines.append("")
        steps = [
            [
                _fmt(step["streams"]),
                _fmt(step["chunks"] / step["seconds"] if step["seconds"] else 0),
                _fmt(step["itl_ms"]["p50"], 1),
                _fmt(step["itl_ms"]["p99"], 1),
                _fmt(step["errors"]),
            ]
            for step in ramp["steps"]
        ]
        lines.append(table(["streams", "chunks/s", "ITL p50 ms", "ITL p99 ms", "errors"], steps))
    return "\n".join(lines)
