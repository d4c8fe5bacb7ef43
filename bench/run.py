"""meshgate's benchmark: the reference engine directly, then the same engine through meshgate.

    .venv/bin/python bench/run.py [--quick | --smoke] [--out bench/results/latest.json]

One run starts its own mesh (`meshgate up`, production settings, free loopback
ports), drives the reference engine directly over gRPC and through the HTTP
edge with the same requests, at fixed concurrencies (closed loop) and at one
fixed arrival rate (open loop), then stops the mesh and prints/writes the
figures. Comparing the two legs inside one run, on one machine, at the same
load, is what makes "gateway overhead" a meaningful number; see bench/README.md.

`--upstream mock` measures bench/mock_openai.py directly and through a mesh
whose models route to it (`kind: openai_http`), and `--gateway-url` adds any
OpenAI-compatible gateway (pointed at that mock) as a measured leg.
`--peer litellm,portkey` installs those gateways at pinned versions
(bench/peers.py), starts them on the same mock and measures each as a leg.

A full run also holds 2,000 streams open through a slow engine and samples the
mesh's memory (`streams_rss`), then rewrites bench/RESULTS.md: the issue's
targets, met or not, now and in the committed baseline (bench/results/baseline.json).
`--render-only FILE` rewrites RESULTS.md from an existing result without running.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `meshgate` importable
    sys.path.insert(0, str(ROOT))

from bench import floor, hops, peers, relay, report, results_md, streams  # noqa: E402
from bench.httpclient import split_base_url  # noqa: E402
from bench.mock_openai import DIMENSIONS as MOCK_DIMENSIONS  # noqa: E402
from bench.payloads import ENDPOINTS, PATHS, Endpoint, Payload  # noqa: E402
from bench.procstat import (  # noqa: E402
    CLK_TCK,
    CpuProbe,
    HostCpu,
    descendants,
    host_busy_pct,
    process_label,
)
from bench.stack import (  # noqa: E402
    MeshProcess,
    MockProcess,
    child_env,
    die_with_parent,
    openai_http_models,
)

DEFAULT_OUT = ROOT / "bench" / "results" / "latest.json"
DEFAULT_RESULTS_MD = ROOT / "bench" / "RESULTS.md"
DEFAULT_BASELINE = ROOT / "bench" / "results" / "baseline.json"
# The memory target: this many streams open at once.
FULL_OPEN_STREAMS = 2000
GENERATOR_LABEL = "loadgen"
# Below this concurrency one generator process is plenty, and splitting would
# only add a process competing for the two cores.
SPLIT_MIN_CONCURRENCY = 64


@dataclass(frozen=True)
class Profile:
    """How long and how hard: the only difference between --smoke, --quick and a full run."""

    name: str
    concurrencies: tuple[int, ...]
    warmup_s: float
    duration_s: float
    open_rate: float
    open_warmup_s: float
    open_duration_s: float
    max_requests: int = 200_000
    drain_s: float = 10.0


PROFILES: dict[str, Profile] = {
    "full": Profile("full", (1, 16, 64, 256), 0.5, 4.0, 200.0, 0.5, 5.0),
    "quick": Profile("quick", (1, 16, 64), 0.25, 1.0, 200.0, 0.25, 2.0),
    "smoke": Profile("smoke", (1, 4), 0.1, 0.6, 50.0, 0.1, 0.6, drain_s=5.0),
}


@dataclass
class Leg:
    """One way of reaching the upstream, and which processes to charge its CPU to."""

    name: str  # "direct", "meshgate", "gateway" or a peer's name
    kind: str  # "grpc" (EngineService) or "http" (OpenAI-compatible)
    target: str  # host:port for grpc, base URL for http
    key: str
    direct: bool
    processes: Callable[[], dict[int, str]]
    # The upstream's own process label inside `processes` (its CPU is not gateway CPU).
    upstream_label: str | None = None
    description: str = ""
    # Sent on every request besides Authorization (a peer's routing headers).
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    """Everything one invocation produces; `to_json` is the written result."""

    meta: dict[str, Any]
    preflight: dict[str, Any] = field(default_factory=dict)
    scenarios: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # One per streams.UPSTREAMS, the setup (an HTTP engine) first.
    streams_rss: list[dict[str, Any]] = field(default_factory=list)
    relay: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        closed = [s for s in self.scenarios if s["mode"] == "closed"]
        direct = {(s["endpoint"], s["concurrency"]): s for s in closed if s["direct"]}
        overheads = [
            report.overhead(direct[(s["endpoint"], s["concurrency"])], s)
            for s in closed
            if not s["direct"] and (s["endpoint"], s["concurrency"]) in direct
        ]
        out: dict[str, Any] = {
            "schema": 1,
            "meta": self.meta,
            "preflight": self.preflight,
            "scenarios": self.scenarios,
            "overhead": overheads,
            "notes": self.notes,
        }
        if self.streams_rss:
            out["streams_rss"] = self.streams_rss[0]
            out["streams_rss_all"] = self.streams_rss
        if self.relay is not None:
            out["relay"] = self.relay
        return out


# -------------------------------------------------------------- generators ----


class Generators:
    """Load generator processes (bench/loadgen.py), driven over pipes.

    The orchestrator only prepares, starts and collects; while a scenario runs it
    sleeps until the window's edges to take the CPU snapshots, so it costs
    nothing on the cores the gateway needs.
    """

    def __init__(self, count: int, workdir: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stderr: list[IO[bytes]] = []
        for i in range(count):
            stderr = (workdir / f"loadgen{i}.stderr").open("wb")
            self._stderr.append(stderr)
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.loadgen"],
                    cwd=ROOT,
                    env=child_env(),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    preexec_fn=die_with_parent(),
                )
            )
        self.workdir = workdir
        for proc in self.procs:
            self._read(proc, 60.0)

    def pids(self) -> dict[int, str]:
        return {proc.pid: GENERATOR_LABEL for proc in self.procs}

    @staticmethod
    def _send(proc: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(orjson.dumps(message) + b"\n")
        proc.stdin.flush()

    def _read(self, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
        assert proc.stdout is not None
        # One reply per command, so nothing is ever left in the reader's buffer
        # that select() could not see.
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else b""
        if not line:
            index = self.procs.index(proc)
            log = (self.workdir / f"loadgen{index}.stderr").read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"load generator {index} did not answer within {timeout:.0f}s\n{log}"
            )
        reply: dict[str, Any] = orjson.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"load generator: {reply.get('error')}")
        return reply

    def run(
        self, specs: list[dict[str, Any]], warmup_s: float, duration_s: float, probe: CpuProbe
    ) -> tuple[list[dict[str, Any]], dict[str, float], HostCpu, HostCpu]:
        """Run one scenario split over len(specs) processes; CPU is sampled at the window's edges."""
        active = self.procs[: len(specs)]
        for proc, spec in zip(active, specs, strict=True):
            self._send(proc, {"op": "prepare", "spec": spec})
        for proc in active:
            self._read(proc, 120.0)
        start_at = time.monotonic() + 0.1
        for proc in active:
            self._send(proc, {"op": "start", "start_at": start_at})
        begin = start_at + warmup_s
        time.sleep(max(0.0, begin - time.monotonic()))
        cpu_before, host_before = probe.snapshot(), HostCpu.read()
        time.sleep(max(0.0, begin + duration_s - time.monotonic()))
        cpu_after, host_after = probe.snapshot(), HostCpu.read()
        drain = max(float(spec["drain_s"]) for spec in specs)
        results = [self._read(proc, drain + 120.0)["result"] for proc in active]
        return results, probe.delta(cpu_before, cpu_after), host_before, host_after

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError, ValueError):
                self._send(proc, {"op": "quit"})
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stderr in self._stderr:
            stderr.close()


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_scenario(
    gens: Generators,
    leg: Leg,
    endpoint: Endpoint,
    mode: str,
    load: float,
    profile: Profile,
    payload: Payload,
) -> dict[str, Any]:
    """One scenario on one leg: `load` is the concurrency (closed) or the rate (open)."""
    warmup = profile.open_warmup_s if mode == "open" else profile.warmup_s
    duration = profile.open_duration_s if mode == "open" else profile.duration_s
    concurrency = int(load) if mode == "closed" else 0
    rate = float(load) if mode == "open" else 0.0
    if mode == "closed":
        parts = min(len(gens.procs), concurrency) if concurrency >= SPLIT_MIN_CONCURRENCY else 1
        loads: list[float] = [float(n) for n in _shares(concurrency, parts)]
    else:
        parts = len(gens.procs)
        loads = [rate / parts] * parts
    specs = [
        {
            "leg_kind": leg.kind,
            "target": leg.target,
            "key": leg.key,
            "endpoint": endpoint,
            "mode": mode,
            "concurrency": int(share) if mode == "closed" else 0,
            "rate": share if mode == "open" else 0.0,
            "phase_s": i / rate if mode == "open" else 0.0,
            "warmup_s": warmup,
            "duration_s": duration,
            "max_requests": max(1, profile.max_requests // parts),
            "drain_s": profile.drain_s,
            "payload": payload.to_dict(),
            "headers": leg.headers,
        }
        for i, share in enumerate(loads)
    ]
    probe = CpuProbe({**leg.processes(), **gens.pids()})
    results, cpu, host_before, host_after = gens.run(specs, warmup, duration, probe)
    host = (host_after.busy_fraction_since(host_before), host_after.irq_fraction_since(host_before))
    return summarize(leg, endpoint, mode, concurrency, rate, duration, results, cpu, host)


def summarize(
    leg: Leg,
    endpoint: Endpoint,
    mode: str,
    concurrency: int,
    rate: float,
    duration: float,
    results: list[dict[str, Any]],
    cpu: dict[str, float],
    host: tuple[float, float],
) -> dict[str, Any]:
    """Merge the generator processes' samples into the scenario's figures."""
    latency = [x for r in results for x in r["latency"]]
    ttft = [x for r in results for x in r["ttft"]]
    to_last = [x for r in results for x in r.get("to_last", [])]
    gaps = [x for r in results for x in r["gap"]]
    tokens = [x for r in results for x in r["tokens"]]
    lag = [x for r in results for x in r["lag"]]
    errors = sum(r["errors"] for r in results)
    samples: dict[str, int] = {}
    for r in results:
        for message, count in r["error_samples"].items():
            samples[message] = samples.get(message, 0) + count
    if mode == "closed":
        rps = sum(len(r["latency"]) / r["window_s"] for r in results)
    else:
        rps = sum(r["done_in_window"] / r["window_s"] for r in results)
    done = sum(r["done_in_window"] for r in results) or len(latency)

    # Without any process of its own (an external gateway with no --gateway-pid) a
    # leg's CPU is unknown, not zero: it then shows up as "other" load.
    measured = any(k != GENERATOR_LABEL for k in cpu)
    target_s = sum(v for k, v in cpu.items() if k != GENERATOR_LABEL)
    generator_s = cpu.get(GENERATOR_LABEL, 0.0)
    per_req = 1e6 / done if done else 0.0
    ncpu = os.cpu_count() or 1
    host_busy, host_irq = host
    ours = (target_s + generator_s) / duration * 100
    cpu_figures: dict[str, Any] = {
        "target_us_per_req": round(target_s * per_req, 1) if measured else None,
        "by_process_us_per_req": {
            k: round(v * per_req, 1) for k, v in sorted(cpu.items()) if k != GENERATOR_LABEL
        },
        "generator_us_per_req": round(generator_s * per_req, 1),
        "target_core_pct": round(target_s / duration * 100, 1),
        "generator_core_pct": round(generator_s / duration * 100, 1),
        "host_busy_pct": round(host_busy * 100, 1),
        "irq_core_pct": round(host_irq * ncpu * 100, 1),
        # Busy CPU that is neither ours nor interrupts: other load on the machine.
        "other_core_pct": round(max(0.0, (host_busy - host_irq) * ncpu * 100 - ours), 1),
    }
    if not leg.direct and measured:
        upstream = cpu.get(leg.upstream_label or "", 0.0)
        cpu_figures["gateway_us_per_req"] = round((target_s - upstream) * per_req, 1)

    scenario: dict[str, Any] = {
        "id": f"{endpoint}/{leg.name}/" + (f"c{concurrency}" if mode == "closed" else f"r{rate:g}"),
        "endpoint": endpoint,
        "leg": leg.name,
        "direct": leg.direct,
        "mode": mode,
        "concurrency": concurrency,
        "rate": rate,
        "duration_s": duration,
        "requests": len(latency),
        "errors": errors,
        "error_samples": samples,
        "rps": round(rps, 1),
        "latency_us": report.distribution_us(latency),
        "cpu": cpu_figures,
    }
    if endpoint == "chat_stream":
        scenario["ttft_us"] = report.distribution_us(ttft)
        scenario["last_token_us"] = report.distribution_us(to_last)
        scenario["gap_us"] = report.distribution_us(gaps)
        scenario["tokens_per_stream"] = round(sum(tokens) / len(tokens), 2) if tokens else None
    if mode == "open":
        scenario["send_lag_us"] = report.distribution_us(lag)
        scenario["sent"] = sum(r.get("sent", 0) for r in results)
        scenario["connections"] = sum(r.get("connections", 0) for r in results)
    if mode == "closed":
        scenario["unfinished_at_drain"] = sum(r.get("unfinished", 0) for r in results)
    return scenario


# --------------------------------------------------------------- preflight ----


def _probe_grpc(target: str, endpoint: Endpoint, payload: Payload) -> dict[str, Any]:
    import grpc

    from meshgate.v1 import engine_pb2_grpc

    request = payload.engine_request(endpoint)
    with grpc.insecure_channel(target) as channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        if endpoint == "chat":
            completion = stub.GenerateChat(request, timeout=10).completion
            return {"text": completion.choices[0].message.content, "tokens": None}
        if endpoint == "chat_stream":
            pieces = [
                c.choices[0].delta.content
                for c in stub.StreamChat(request, timeout=10)
                if c.choices and c.choices[0].delta.content
            ]
            return {"text": "".join(pieces), "tokens": len(pieces)}
        vector = stub.Embed(request, timeout=10).embeddings.data[0].vector_f32le
        return {"dimensions": len(vector) // 4}


def _probe_http(
    base_url: str, key: str, endpoint: Endpoint, payload: Payload, extra: dict[str, str]
) -> dict[str, Any]:
    import base64

    import httpx

    headers = {"Content-Type": "application/json", **extra}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    url = base_url.rstrip("/") + PATHS[endpoint]
    body = payload.json_body(endpoint)
    with httpx.Client(timeout=10) as client:
        if endpoint == "chat_stream":
            pieces: list[str] = []
            with client.stream("POST", url, content=body, headers=headers) as response:
                if response.status_code != 200:
                    response.read()
                    raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
                for line in response.iter_lines():
                    if line.startswith("data:") and line[5:].strip() != "[DONE]":
                        for choice in orjson.loads(line[5:]).get("choices") or []:
                            content = (choice.get("delta") or {}).get("content")
                            if content:
                                pieces.append(content)
            return {"text": "".join(pieces), "tokens": len(pieces)}
        response = client.post(url, content=body, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
        data = response.json()
        if endpoint == "chat":
            return {"text": data["choices"][0]["message"]["content"], "tokens": None}
        vector = base64.b64decode(data["data"][0]["embedding"])
        return {"dimensions": len(vector) // 4}


def preflight(legs: list[Leg], endpoints: list[Endpoint], payload: Payload, run: Run) -> None:
    """One request per leg and endpoint with ordinary clients; also checks the payloads match.

    Same payload on both legs means the same completion text (the engine is
    deterministic for a seed): a mismatch would make the comparison unfair.
    """
    for leg in legs:
        answers: dict[str, Any] = {}
        for endpoint in endpoints:
            try:
                if leg.kind == "grpc":
                    answers[endpoint] = _probe_grpc(leg.target, endpoint, payload)
                else:
                    answers[endpoint] = _probe_http(
                        leg.target, leg.key, endpoint, payload, leg.headers
                    )
            except Exception as exc:
                raise RuntimeError(f"preflight: {leg.name} {endpoint} failed: {exc}") from exc
        run.preflight[leg.name] = answers
    direct = next((leg for leg in legs if leg.direct), None)
    if direct is None:
        return
    for leg in legs:
        if leg.direct or leg.name != "meshgate":
            continue
        for endpoint in endpoints:
            mine, theirs = run.preflight[leg.name][endpoint], run.preflight[direct.name][endpoint]
            if mine != theirs:
                run.notes.append(
                    f"preflight: {leg.name} and {direct.name} answered {endpoint} differently "
                    f"({mine} vs {theirs}); the payloads may not be identical"
                )


# -------------------------------------------------------------------- legs ----


def meshgate_over_mock_leg(
    mock: MockProcess, workdir: Path, payload: Payload, meshes: list[MeshProcess], ledger: bool
) -> Leg:
    """meshgate in front of the mock upstream, through the HTTP engine adapter.

    The mesh's catalog names the payload's models, served by the mock over
    `kind: openai_http`, so both legs carry byte-identical requests. The mock is
    charged to this leg as its upstream (as the engine is on the reference
    upstream), so `cpu µs/req` compares with the direct leg and `gw cpu µs` is
    the whole `meshgate up` tree: with the mock outside it, all of it is gateway.
    """
    models = openai_http_models(
        mock.base_url, payload.chat_model, payload.embed_model, MOCK_DIMENSIONS
    )
    print("starting meshgate (meshgate up) in front of the mock ...", flush=True)
    mesh = MeshProcess(workdir, 0.0, models=models, ledger=ledger)
    meshes.append(mesh)
    mock_pid = mock.pid

    def processes() -> dict[int, str]:
        return {**mesh.processes(), mock_pid: "mock"}

    return Leg(
        name="meshgate",
        kind="http",
        target=mesh.base_url,
        key=mesh.key,
        direct=False,
        processes=processes,
        upstream_label="mock",
        description=(
            "HTTP edge -> auth, validation, quota (Redis), router -> openai_http adapter -> mock"
        ),
    )


def build_legs(
    args: argparse.Namespace,
    workdir: Path,
    run: Run,
    meshes: list[MeshProcess],
    mocks: list[MockProcess],
    payload: Payload,
    started_peers: list[peers.PeerProcess],
) -> list[Leg]:
    """Start what the upstream choice needs and describe each leg; started children are
    appended to `meshes` / `mocks` / `started_peers` at once, so that the caller stops them
    even on failure."""
    legs: list[Leg] = []
    if args.upstream == "reference":
        print("starting meshgate (meshgate up) ...", flush=True)
        mesh = MeshProcess(workdir, args.token_delay_ms, ledger=args.ledger == "on")
        meshes.append(mesh)
        engine_pid = mesh.engine_pid()
        if engine_pid is None:
            raise RuntimeError("no engine process in the meshgate up tree")
        legs.append(
            Leg(
                name="direct",
                kind="grpc",
                target=mesh.engine_target,
                key="",
                direct=True,
                processes=lambda: {engine_pid: "engine"},
                upstream_label="engine",
                description="EngineService over one grpc.aio channel",
            )
        )
        legs.append(
            Leg(
                name="meshgate",
                kind="http",
                target=mesh.base_url,
                key=mesh.key,
                direct=False,
                processes=mesh.processes,
                upstream_label="engine",
                description="HTTP edge -> auth, validation, quota (Redis), router -> engine",
            )
        )
        run.meta["meshgate_url"] = mesh.base_url
    else:
        mock = MockProcess(workdir, args.mock_port)
        mocks.append(mock)
        mock_pid = mock.pid
        legs.append(
            Leg(
                name="direct",
                kind="http",
                target=mock.base_url,
                key="sk-mock",
                direct=True,
                processes=lambda: {mock_pid: "mock"},
                upstream_label="mock",
                description="mock OpenAI upstream over HTTP",
            )
        )
        run.meta["mock_url"] = mock.base_url
        legs.append(meshgate_over_mock_leg(mock, workdir, payload, meshes, args.ledger == "on"))
        run.meta["meshgate_url"] = meshes[-1].base_url
        for name in args.peer:
            print(f"starting {name} in front of the mock ...", flush=True)
            peer = peers.start_peer(
                name, workdir, mock.base_url, payload.chat_model, payload.embed_model
            )
            started_peers.append(peer)
            legs.append(peer_leg(peer, mock_pid))
            run.meta.setdefault("peers", {})[name] = {
                "url": peer.base_url,
                "versions": peer.versions,
                "description": peer.description,
                "headers": peer.headers,
            }
    if args.gateway_url:
        headers = dict(_header(h) for h in args.gateway_header)
        legs.append(
            external_gateway_leg(args.gateway_url, args.gateway_key, args.gateway_pid, headers)
        )
    run.meta["legs"] = {leg.name: leg.description for leg in legs}
    return legs


def peer_leg(peer: peers.PeerProcess, mock_pid: int) -> Leg:
    """A peer gateway on the mock: charged its whole process tree, the mock as its upstream.

    Charging the mock the same way as on meshgate's leg keeps `cpu µs/req`
    comparable across legs, and `gw cpu µs` is then the peer's tree alone.
    """

    def processes() -> dict[int, str]:
        return {**peer.processes(), mock_pid: "mock"}

    return Leg(
        name=peer.name,
        kind="http",
        target=peer.base_url,
        key=peer.key,
        direct=False,
        processes=processes,
        upstream_label="mock",
        description=f"{peer.description} -> mock",
        headers=peer.headers,
    )


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"not a 'Name: value' header: {text!r}")
    return name.strip(), value.strip()


def peers_idle_cpu(started: list[peers.PeerProcess], seconds: float) -> dict[str, float]:
    """Each peer's CPU, in % of one core, while nothing is sent to it.

    Legs alternate, so while one gateway is measured the others sit idle beside
    it: what they burn then (timers, health loops) shows up as `other` load.
    """
    probe = CpuProbe({pid: p.name for p in started for pid in p.processes()})
    before = probe.snapshot()
    time.sleep(seconds)
    used = probe.delta(before, probe.snapshot())
    return {name: round(cpu / seconds * 100, 1) for name, cpu in used.items()}


def external_gateway_leg(
    url: str, key: str, pid: int | None, headers: dict[str, str] | None = None
) -> Leg:
    """Any OpenAI-compatible gateway; its CPU is measured only when its pid is given."""

    def processes() -> dict[int, str]:
        if pid is None:
            return {}
        pids = [pid, *descendants(pid)]
        return {p: f"gw:{process_label(p)}" for p in pids}

    return Leg(
        name="gateway",
        kind="http",
        target=url,
        key=key,
        direct=False,
        processes=processes,
        upstream_label=None,
        description=f"external gateway at {url}",
        headers=headers or {},
    )


def _record(
    run: Run,
    gens: Generators,
    leg: Leg,
    endpoint: Endpoint,
    mode: str,
    load: float,
    profile: Profile,
    payload: Payload,
) -> None:
    scenario = run_scenario(gens, leg, endpoint, mode, load, profile, payload)
    run.scenarios.append(scenario)
    _progress(scenario)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark the reference engine directly and through meshgate.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="concurrency 1/16/64, ~40 s")
    size.add_argument("--smoke", action="store_true", help="concurrency 1/4, tiny; for tests")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    parser.add_argument(
        "--upstream",
        choices=("reference", "mock"),
        help="reference (default): meshgate's gRPC reference engine; mock: bench/mock_openai.py "
        "over HTTP (the default with --peer)",
    )
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="NAME[,NAME]",
        help=f"also install (pinned, cached in bench/.peers/) and measure a peer gateway on the "
        f"mock: {', '.join(peers.PEER_NAMES)}; repeatable or comma-separated",
    )
    parser.add_argument("--gateway-url", help="also measure this OpenAI-compatible base URL (…/v1)")
    parser.add_argument("--gateway-key", default="", help="API key for --gateway-url")
    parser.add_argument(
        "--gateway-header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra header on every request to --gateway-url; repeatable",
    )
    parser.add_argument("--gateway-pid", type=int, help="charge this process tree's CPU to it")
    parser.add_argument("--mock-port", type=int, default=0, help="fixed port for the mock")
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS), help="comma-separated")
    parser.add_argument("--concurrency", help="comma-separated; overrides the profile's")
    parser.add_argument("--duration", type=float, help="seconds per closed-loop scenario")
    parser.add_argument("--rate", type=float, help="open-loop arrival rate, requests/s")
    parser.add_argument("--no-open-loop", action="store_true")
    parser.add_argument("--token-delay-ms", type=float, default=0.0, help="engine decode pacing")
    parser.add_argument(
        "--gen-procs",
        type=int,
        default=1,
        help=f"load generator processes (split only at concurrency >= {SPLIT_MIN_CONCURRENCY})",
    )
    parser.add_argument(
        "--ledger",
        choices=["on", "off"],
        default="on",
        help="usage recording (ledger.enabled); its processes are measured with the mesh",
    )
    parser.add_argument("--chat-model", default=Payload.chat_model)
    parser.add_argument("--embed-model", default=Payload.embed_model)
    parser.add_argument(
        "--open-streams",
        type=int,
        help=f"streams_rss: hold N streams open and sample the mesh's memory "
        f"(default {FULL_OPEN_STREAMS} on a full run, 0 = skip, which --quick/--smoke do)",
    )
    parser.add_argument(
        "--only-streams",
        action="store_true",
        help="run only the streams_rss scenario (N from --open-streams)",
    )
    parser.add_argument(
        "--relay",
        choices=["on", "off", "only"],
        help="the relay scenario (bench/relay.py: CPU per streamed chunk on paced mocks, and "
        "the most streams before inter-token p99 grows 20 ms); default on for a full run, "
        "off for --quick/--smoke; `only` runs nothing else",
    )
    parser.add_argument(
        "--results-md",
        type=Path,
        nargs="?",
        const=DEFAULT_RESULTS_MD,
        help="write RESULTS.md (default path bench/RESULTS.md); a full run on the reference "
        "upstream always does",
    )
    parser.add_argument("--no-results-md", action="store_true", help="never write RESULTS.md")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=DEFAULT_BASELINE,
        help="the 'before' result RESULTS.md compares with",
    )
    parser.add_argument(
        "--render-only",
        type=Path,
        metavar="FILE",
        help="run nothing: render RESULTS.md from this JSON result",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for raw in args.peer for n in raw.split(",") if n.strip()]
    unknown = sorted(set(names) - set(peers.PEER_NAMES))
    if unknown:
        parser.error(f"--peer: unknown {', '.join(unknown)}; known: {', '.join(peers.PEER_NAMES)}")
    args.peer = list(dict.fromkeys(names))
    if args.peer and args.upstream == "reference":
        parser.error("--peer needs the mock upstream: peers speak HTTP, not EngineService")
    if args.upstream is None:
        args.upstream = "mock" if args.peer else "reference"
    for header in args.gateway_header:
        try:
            _header(header)
        except ValueError as exc:
            parser.error(f"--gateway-header: {exc}")
    if args.gateway_url:
        try:
            split_base_url(args.gateway_url)
        except ValueError as exc:
            parser.error(f"--gateway-url: {exc}")
    if args.gen_procs < 1:
        parser.error("--gen-procs must be at least 1")
    if args.open_streams is None:
        full = not (args.smoke or args.quick)
        args.open_streams = FULL_OPEN_STREAMS if full or args.only_streams else 0
    if args.open_streams < 0:
        parser.error("--open-streams must be 0 or more")
    if args.only_streams and not args.open_streams:
        parser.error("--only-streams needs --open-streams N > 0")
    return args


def results_md_path(args: argparse.Namespace) -> Path | None:
    """Where RESULTS.md goes, if anywhere.

    A full run on the reference upstream is what the issue's targets are about,
    so it always refreshes bench/RESULTS.md; a shorter or different run would
    only overwrite it with less, so it needs --results-md.
    """
    if args.no_results_md:
        return None
    if args.results_md is not None:
        return Path(args.results_md)
    full = not (args.smoke or args.quick or args.only_streams)
    if args.render_only or (full and args.upstream == "reference" and not args.gateway_url):
        return DEFAULT_RESULTS_MD
    return None


def write_results_md(path: Path, result: dict[str, Any], baseline_path: Path) -> None:
    """Render RESULTS.md from `result`, compared with the baseline when there is one."""
    baseline: dict[str, Any] | None = None
    if baseline_path.is_file():
        baseline = orjson.loads(baseline_path.read_bytes())
    results_md.write(path, result, baseline, baseline_path)
    print(f"wrote {path}")


def build_profile(args: argparse.Namespace) -> Profile:
    base = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    changes: dict[str, Any] = {}
    if args.concurrency:
        changes["concurrencies"] = tuple(int(c) for c in args.concurrency.split(","))
    if args.duration:
        changes["duration_s"] = args.duration
    if args.rate:
        changes["open_rate"] = args.rate
    if not changes:
        return base
    fields = {**base.__dict__, **changes}
    return Profile(**fields)


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the finally blocks that stop the children


def streams_rss(count: int, workdir: Path, payload: Payload, upstream: str) -> dict[str, Any]:
    """The streams_rss scenario on its own mesh (slow engine); see bench/streams.py.

    `upstream` "mock": the issue's setup, an OpenAI-compatible HTTP engine (the paced
    mock, outside the measured tree like every upstream here), so the mesh runs no
    engine process. "reference": the built-in engine, inside the tree, as
    `meshgate up` runs on its embedded defaults.
    """
    fd_limit = streams.raise_fd_limit(2 * count + 1024)
    started = time.monotonic()
    delay = streams.STREAM_TOKEN_DELAY_MS
    print(
        f"streams_rss: {count} streams through meshgate ({upstream} engine, "
        f"token_delay_ms {delay:g}) ...",
        flush=True,
    )
    out: dict[str, Any] = {
        "requested": count,
        "upstream": upstream,
        "token_delay_ms": delay,
        "max_tokens": payload.max_tokens,
        "fd_limit": fd_limit,
        "memory_basis": streams.MEMORY_BASIS,
    }
    with contextlib.ExitStack() as stack:
        models = None
        if upstream == "mock":
            mock = MockProcess(
                workdir, token_delay_ms=delay, chunks=payload.max_tokens, name="mock-streams"
            )
            stack.callback(mock.stop)
            models = openai_http_models(
                mock.base_url, payload.chat_model, payload.embed_model, MOCK_DIMENSIONS
            )
        mesh = MeshProcess(workdir, delay, models=models, name=f"meshgate-streams-{upstream}")
        try:
            out["idle_memory"] = streams.tree_memory(mesh.processes())
            out.update(
                streams.hold_streams(
                    mesh.base_url,
                    mesh.key,
                    payload.json_body("chat_stream"),
                    count,
                    lambda: streams.tree_memory(mesh.processes()),
                )
            )
        finally:
            out["meshgate_exit_code"] = mesh.stop()
    out["elapsed_s"] = round(time.monotonic() - started, 1)
    print(f"  {report.streams_summary(out)}", flush=True)
    return out


def render_only(args: argparse.Namespace) -> int:
    """--render-only: RESULTS.md from an existing result, nothing started."""
    result: dict[str, Any] = orjson.loads(Path(args.render_only).read_bytes())
    path = results_md_path(args)
    if path is None:
        print("--no-results-md: nothing to do")
        return 0
    write_results_md(path, result, args.baseline)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        return render_only(args)
    profile = build_profile(args)
    endpoints: list[Endpoint] = [e for e in ENDPOINTS if e in args.endpoints.split(",")]
    relay_mode = args.relay or ("off" if args.quick or args.smoke else "on")
    if args.only_streams or relay_mode == "only":
        endpoints = []
    payload = Payload(chat_model=args.chat_model, embed_model=args.embed_model)
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.monotonic()
    run = Run(
        meta={
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "profile": profile.__dict__,
            "upstream": args.upstream,
            "gateway_url": args.gateway_url,
            "peer_names": args.peer,
            "ledger": args.ledger,
            "endpoints": endpoints,
            "payload": payload.to_dict(),
            "token_delay_ms": args.token_delay_ms,
            "generator_processes": args.gen_procs,
            "open_streams": args.open_streams,
            "host": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "loadavg_at_start": os.getloadavg(),
                "clk_tck": CLK_TCK,
            },
            "git_commit": _git_commit(),
        }
    )
    mesh: list[MeshProcess] = []
    mock: list[MockProcess] = []
    started_peers: list[peers.PeerProcess] = []
    gens: Generators | None = None
    with tempfile.TemporaryDirectory(prefix="meshgate-bench-") as tmp:
        workdir = Path(tmp)
        # What the machine does without us: on a shared box this is not zero.
        run.meta["host"]["baseline_busy_pct"] = host_busy_pct(1.0)
        if endpoints:
            try:
                legs = build_legs(args, workdir, run, mesh, mock, payload, started_peers)
                if started_peers:
                    for name, pct in peers_idle_cpu(started_peers, 1.0).items():
                        run.meta["peers"][name]["idle_core_pct"] = pct
                print("preflight ...", flush=True)
                preflight(legs, endpoints, payload, run)
                if mesh:
                    print("timing each hop alone ...", flush=True)
                    run.meta["hops_p50_us"] = hops.probe_hops(
                        mesh[0].config_path, mesh[0].key, payload.json_body("chat")
                    )
                    print("timing an empty gRPC hop (the transport's floor) ...", flush=True)
                    run.meta["floor"] = floor.probe_floor()
                gens = Generators(args.gen_procs, workdir)
                for endpoint in endpoints:
                    for concurrency in profile.concurrencies:
                        for leg in legs:  # legs alternate, so they see the same machine
                            _record(
                                run, gens, leg, endpoint, "closed", concurrency, profile, payload
                            )
                if not args.no_open_loop and "chat" in endpoints:
                    for leg in legs:
                        _record(run, gens, leg, "chat", "open", profile.open_rate, profile, payload)
            finally:
                if gens is not None:
                    gens.close()
                for peer in started_peers:  # every one, even if another fails to stop
                    try:
                        code = peer.stop()
                        run.meta.setdefault("peers", {}).setdefault(peer.name, {})["exit_code"] = (
                            code
                        )
                    except Exception as exc:
                        run.notes.append(f"{peer.name} did not stop cleanly: {exc}")
                for m in mesh:
                    run.meta["meshgate_exit_code"] = m.stop()
                for k in mock:
                    k.stop()
        # After the load mesh is gone, so that it neither holds memory nor takes CPU.
        if relay_mode != "off" and not args.only_streams:
            print("relay: CPU per streamed chunk, then the most streams held ...", flush=True)
            run.relay = relay.run_relay(workdir, ledger=args.ledger == "on")
            print(f"  {report.relay_summary(run.relay)}", flush=True)
        if args.open_streams and relay_mode != "only":
            for upstream in streams.UPSTREAMS:
                try:
                    held = streams_rss(args.open_streams, workdir, payload, upstream)
                except (RuntimeError, OSError) as exc:
                    # The load figures above are still worth writing; the note says what failed.
                    what, _, log = str(exc).partition("\n")
                    held = {
                        "requested": args.open_streams,
                        "upstream": upstream,
                        "token_delay_ms": streams.STREAM_TOKEN_DELAY_MS,
                        "failure": f"{what}\n{log[-2000:]}".strip(),
                    }
                run.streams_rss.append(held)

    run.meta["elapsed_s"] = round(time.monotonic() - started, 1)
    run.meta["host"]["loadavg_at_end"] = os.getloadavg()
    report.add_chunk_cpu(run.scenarios)
    _add_validation_share(run)
    _add_notes(run)
    result = run.to_json()
    print()
    print(report.render(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    print(f"\nwrote {args.out} ({run.meta['elapsed_s']} s)")
    md_path = results_md_path(args)
    if md_path is not None:
        write_results_md(md_path, result, args.baseline)
    relayed = run.relay or {}
    failed = (
        any(s["errors"] for s in run.scenarios)
        or any(held.get("errors") or held.get("failure") for held in run.streams_rss)
        or relayed.get("long", {}).get("errors")
        or relayed.get("short", {}).get("errors")
    )
    return 1 if failed else 0


def _progress(s: dict[str, Any]) -> None:
    lat = s["latency_us"] or {}
    load = f"c={s['concurrency']}" if s["mode"] == "closed" else f"rate={s['rate']:g}/s"
    print(
        f"  {s['endpoint']:<12} {s['leg']:<9} {load:<11} {s['rps']:>9,.0f} req/s"
        f"  p50 {lat.get('p50', float('nan')) / 1000:7.2f} ms"
        f"  p99 {lat.get('p99', float('nan')) / 1000:7.2f} ms  errors {s['errors']}",
        flush=True,
    )


def _add_validation_share(run: Run) -> None:
    """The validation hop's share of the gateway's overhead (chat, meshgate leg)."""
    measured = run.meta.get("hops_p50_us")
    chat = [
        s
        for s in run.scenarios
        if s["endpoint"] == "chat" and s["leg"] == "meshgate" and s["mode"] == "closed"
    ]
    if not measured or not chat:
        return
    overheads = {
        o["concurrency"]: o
        for o in run.to_json()["overhead"]
        if o["endpoint"] == "chat" and o["gateway"] == "meshgate"  # not a peer's
    }
    c1 = overheads.get(1, {}).get("overhead_p50_us")
    busiest = max(chat, key=lambda s: s["concurrency"])
    run.meta["validation_share"] = hops.validation_share(
        measured, c1, busiest["cpu"].get("by_process_us_per_req") or {}
    )


def _add_notes(run: Run) -> None:
    """Warnings that change how the figures should be read."""
    ncpu = os.cpu_count() or 1
    busy = [s for s in run.scenarios if (s["cpu"].get("other_core_pct") or 0) > 25]
    if busy:
        names = ", ".join(s["id"] for s in busy[:4]) + (" ..." if len(busy) > 4 else "")
        run.notes.append(
            f"other processes used more than a quarter of a core during {len(busy)} "
            f"scenario(s) ({names}): the machine was not quiet, figures are noisy"
        )
    run.notes.append(
        f"{ncpu} CPU(s) shared by the load generator and every process under test; "
        "'gen cpu' is the generator's own cost per request"
    )
    for s in run.scenarios:
        if s["errors"]:
            run.notes.append(f"{s['id']}: {s['errors']} errors, e.g. {s['error_samples']}")
    for held in run.streams_rss:
        what = f"streams_rss ({held['upstream']} engine)"
        if held.get("failure"):
            reason = held["failure"].splitlines()[0] if held["failure"] else "?"
            run.notes.append(f"{what} did not run: {reason} (the JSON has the log's tail)")
        elif held["errors"] or held["held"] < held["requested"]:
            run.notes.append(
                f"{what}: {held['held']} of {held['requested']} streams held, "
                f"{held['errors']} errors, e.g. {held['error_samples']}"
            )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
