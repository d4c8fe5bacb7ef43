"""Engine-aware routing against least-outstanding, on three paced replicas of unequal speed.

Three bench/paced_engine.py processes stand for an uneven fleet (a fast engine
with a large batch, a middling one, a slow one with a small batch), each serving
vLLM's /metrics with its real queue, running requests and KV use (one slot's
share of its KV pool per running request). One mesh routes a chat model over
all three. An open-loop client sends requests at a fixed rate (Poisson arrivals,
seeded, the same schedule for every leg) and times each one end to end.

- least-outstanding: `metrics.kind: none` on every replica, so the router
  balances on its own count of outstanding requests, as before engine signals;
- engine-aware: the default (`metrics.kind: auto`, read every `--interval` s).

Everything runs on 127.0.0.1 and is bounded in time (a leg is `--seconds` of
arrivals plus the drain). `--write` puts the table into bench/RESULTS.md, below
the notes marker, between its own markers.

    python bench/engine_routing.py --rate 16 --seconds 30 --write
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):  # `python bench/engine_routing.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stack import ROOT, Child, MeshProcess, free_ports

MODEL = "fleet/chat"
# name, slots (requests generated at once), ms per output token.
FLEET = (("fast", 8, 8.0), ("mid", 4, 16.0), ("slow", 2, 32.0))
MAX_TOKENS = 32
RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN, END = "<!-- engine-routing: begin -->", "<!-- engine-routing: end -->"


@dataclass
class Leg:
    name: str
    latencies: list[float]
    errors: int
    shares: dict[str, int]

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def _engines(workdir: Path) -> tuple[list[Child], list[str]]:
    ports = free_ports(len(FLEET))
    children, origins = [], []
    for (name, slots, token_ms), port in zip(FLEET, ports, strict=True):
        argv = [sys.executable, str(ROOT / "bench" / "paced_engine.py"), "--port", str(port)]
        argv += ["--kind", "vllm", "--slots", str(slots), "--token-ms", str(token_ms)]
        children.append(Child(argv, workdir, f"paced-{name}"))
        origins.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    for origin in origins:
        while True:
            try:
                httpx.get(f"{origin}/__stats", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{origin} did not start") from None
                time.sleep(0.1)
    return children, origins


def _models(origins: list[str], aware: bool, interval: float) -> list[dict[str, Any]]:
    metrics = {"kind": "auto", "interval_s": interval} if aware else {"kind": "none"}
    engines = [
        {"kind": "openai_http", "url": f"{o}/v1", "model": "paced", "metrics": metrics}
        for o in origins
    ]
    return [{"id": MODEL, "category": "text", "engines": engines}]


async def _drive(base_url: str, key: str, arrivals: list[float]) -> tuple[list[float], int]:
    """Send one request at each arrival time (open loop); every latency in seconds."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=60, limits=limits, headers={"Authorization": f"Bearer {key}"}
    ) as client:

        async def one(n: int) -> None:
            nonlocal errors
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Request {n}: tell me something."}],
                "max_tokens": MAX_TOKENS,
            }
            started = time.perf_counter()
            try:
                response = await client.post("/chat/completions", json=body)
            except httpx.HTTPError:
                errors += 1
                return
            if response.status_code != 200:
                errors += 1
                return
            latencies.append(time.perf_counter() - started)

        # Warm the connection pool, untimed, so that the first arrivals pay no handshakes.
        await asyncio.gather(*(one(-1) for _ in range(8)))
        latencies.clear()
        tasks = []
        start = time.perf_counter()
        for n, at in enumerate(arrivals):
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
    return latencies, errors


def run_leg(
    workdir: Path, origins: list[str], aware: bool, interval: float, arrivals: list[float]
) -> Leg:
    name = f"engine-aware ({interval:g} s reads)" if aware else "least-outstanding"
    mesh = MeshProcess(
        workdir,
        0.0,
        _models(origins, aware, interval),
        name="aware" if aware else "lor",
        ledger=False,
    )
    try:
        before = [httpx.get(f"{o}/__stats", timeout=5).json()["requests"] for o in origins]
        time.sleep(max(2.0, 2 * interval))  # the first reads of every engine
        latencies, errors = asyncio.run(_drive(mesh.base_url, mesh.key, arrivals))
        after = [httpx.get(f"{o}/__stats", timeout=5).json()["requests"] for o in origins]
    finally:
        mesh.stop()
    shares = {fleet[0]: a - b for fleet, a, b in zip(FLEET, after, before, strict=True)}
    return Leg(name, latencies, errors, shares)


def table(legs: list[Leg], rate: float, seconds: float) -> str:
    fleet = ", ".join(f"{n}: {s} slots at {t:g} ms/token" for n, s, t in FLEET)
    lines = [
        f"Open loop, {rate:g} req/s (Poisson, seeded) for {seconds:g} s, non-streaming chat of "
        f"{MAX_TOKENS} tokens through the whole mesh; replicas {fleet} "
        f"(capacity ≈ {sum(s / (t * MAX_TOKENS / 1000) for _, s, t in FLEET):.0f} req/s).",
        "",
        "| routing | requests | errors | p50 | p90 | p99 | max | share fast / mid / slow |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for leg in legs:
        share = " / ".join(str(leg.shares[n]) for n, _, _ in FLEET)
        lines.append(
            f"| {leg.name} | {len(leg.latencies)} | {leg.errors} | {leg.pct(50):.0f} ms "
            f"| {leg.pct(90):.0f} ms | {leg.pct(99):.0f} ms | {max(leg.latencies) * 1000:.0f} ms "
            f"| {share} |"
        )
    return "\n".join(lines)


def write(text: str) -> None:
    body = RESULTS.read_text()
    section = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in body:
        head, _, rest = body.partition(BEGIN)
        _, _, tail = rest.partition(END)
        body = head + section + tail
    else:
        body = body.rstrip("\n") + "\n\n### Engine-aware routing (issue 18)\n\n" + section + "\n"
    RESULTS.write_text(body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=16.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="arrivals per leg")
    parser.add_argument(
        "--interval", type=float, action="append", help="engine-aware read interval(s), s"
    )
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    arrivals, at = [], 0.0
    while True:
        at += rng.expovariate(args.rate)
        if at >= args.seconds:
            break
        arrivals.append(at)
    with tempfile.TemporaryDirectory(prefix="meshgate-engine-routing-") as tmp:
        workdir = Path(tmp)
        children, origins = _engines(workdir)
        try:
            legs = [run_leg(workdir, origins, False, 1.0, arrivals)]
            for interval in args.interval or [1.0]:
                legs.append(run_leg(workdir, origins, True, interval, arrivals))
        finally:
            for child in children:
                child.stop()
    text = table(legs, args.rate, args.seconds)
    print(text)
    if args.write:
        write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
