"""The same load from a real tool (aiperf, from PyPI) and from our own generator: do they agree?

    .venv/bin/python bench/realtool.py [--smoke] [--concurrency 64] [--duration 20]

Our load generator is purpose-built (bench/loadgen.py), so its figures need a
witness: a benchmark tool users run. This starts the mock upstream paced like
a decoding engine (`--token-delay-ms`, 20 ms a token by default) and meshgate
in front of it, then drives the same streaming chat load through meshgate
three times: our generator, aiperf, our generator again (so that a drift of
the machine shows), and compares throughput, latency, TTFT and inter-token
latency. aiperf runs from its own venv at a pinned version (bench/.peers/aiperf,
like the peers of bench/run.py), in closed loop at the same concurrency, with
the same prompt and max_tokens.

Why aiperf and not guidellm: guidellm 0.8.1 requires torch, which on Linux
pulls the CUDA wheels (several GB); aiperf 0.13.0 needs Python >= 3.11 and no
torch. aiperf counts tokens with a Hugging Face tokenizer, which it would
download; there is no network here, so it gets a small byte-level BPE tokenizer
made on the spot from the mock's own words (one token per streamed chunk).

Everything runs on 127.0.0.1 and stops by itself (process groups, SIGTERM
then SIGKILL). The result is printed and written as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `meshgate` importable
    sys.path.insert(0, str(ROOT))

from bench import peers, report  # noqa: E402
from bench.mock_openai import DIMENSIONS, WORDS  # noqa: E402
from bench.payloads import Payload  # noqa: E402
from bench.run import Generators, Leg, Profile, run_scenario  # noqa: E402
from bench.stack import Child, MeshProcess, MockProcess, openai_http_models  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "realtool.json"
AIPERF_TIMEOUT_S = 300.0
CHUNKS = 16  # the mock's content chunks per stream; the payload's max_tokens matches

# Run with the aiperf venv's Python: a byte-level BPE whose merges make each of the
# mock's words one token, so aiperf's count of output tokens equals the chunks sent.
TOKENIZER_SCRIPT = """
import json, sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
out, words, prompt = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
)
tok.train_from_iterator(words * 50 + [prompt] * 50, trainer)
text = "".join(words[i % len(words)] for i in range(16))
assert len(tok.encode(text).ids) == 16, tok.encode(text).tokens
PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(out)
"""


def ensure_tokenizer(venv: Path, prompt: str) -> Path:
    """The local tokenizer directory aiperf loads instead of downloading one."""
    import subprocess

    out = peers.PEERS_DIR / "aiperf" / "tokenizer"
    stamp = out / "words.json"
    words = json.dumps(list(WORDS))
    if stamp.is_file() and stamp.read_text() == words and (out / "tokenizer.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-c", TOKENIZER_SCRIPT, str(out), words, prompt], check=True, timeout=300
    )
    stamp.write_text(words)
    return out


def ours(
    gens: Generators, leg: Leg, concurrency: int, warmup: float, duration: float, payload: Payload
) -> dict[str, Any]:
    """One closed-loop streaming scenario with our generator (bench/run.py's own code)."""
    profile = Profile("realtool", (concurrency,), warmup, duration, 0.0, 0.0, 0.0, drain_s=10.0)
    scenario = run_scenario(gens, leg, "chat_stream", "closed", concurrency, profile, payload)
    lat, ttft, gap = scenario["latency_us"] or {}, scenario["ttft_us"] or {}, scenario["gap_us"]
    last = scenario["last_token_us"] or {}
    return {
        "requests": scenario["requests"],
        "errors": scenario["errors"],
        "error_samples": scenario["error_samples"],
        "rps": scenario["rps"],
        # aiperf's request latency ends at the last content token; ours at the end of the
        # stream, after the finish chunk and [DONE], which the paced mock sends a token
        # delay apart each. Both are kept: the first is what compares with aiperf.
        "latency_p50_ms": last.get("p50", 0) / 1000,
        "latency_p99_ms": last.get("p99", 0) / 1000,
        "stream_end_p50_ms": lat.get("p50", 0) / 1000,
        "stream_end_p99_ms": lat.get("p99", 0) / 1000,
        "ttft_p50_ms": ttft.get("p50", 0) / 1000,
        "ttft_p99_ms": ttft.get("p99", 0) / 1000,
        "itl_mean_ms": (gap or {}).get("mean", 0) / 1000,
        "tokens_per_request": scenario["tokens_per_stream"],
        "mesh_cpu_us_per_req": scenario["cpu"].get("gateway_us_per_req"),
        "other_core_pct": scenario["cpu"].get("other_core_pct"),
    }


def aiperf_argv(
    venv: Path,
    tokenizer: Path,
    mesh: MeshProcess,
    payload: Payload,
    prompts: Path,
    artifacts: Path,
    concurrency: int,
    warmup: float,
    duration: float,
) -> list[str]:
    """aiperf's command line for the same load: closed loop, streaming, same prompt and length."""
    base = mesh.base_url.removesuffix("/v1")
    return [
        str(venv / "bin" / "aiperf"),
        "profile",
        "--model",
        payload.chat_model,
        "--url",
        base,
        "--endpoint-type",
        "chat",
        "--streaming",
        "--api-key",
        mesh.key,
        "--tokenizer",
        str(tokenizer),
        "--input-file",
        str(prompts),
        "--custom-dataset-type",
        "single-turn",
        "--extra-inputs",
        f"max_tokens:{payload.max_tokens}",
        "--extra-inputs",
        f"seed:{payload.seed}",
        "--concurrency",
        str(concurrency),
        "--warmup-duration",
        f"{warmup:g}",
        "--benchmark-duration",
        f"{duration:g}",
        "--benchmark-grace-period",
        "10",
        "--artifact-dir",
        str(artifacts),
        "--ui-type",
        "none",
        # Nothing to scrape on 127.0.0.1 and no GPU: both would only wait on timeouts.
        "--no-server-metrics",
        "--no-gpu-telemetry",
    ]


def _metric(metrics: dict[str, Any], name: str, stat: str) -> float | None:
    value = (metrics.get(name) or {}).get(stat)
    return float(value) if value is not None else None


def run_aiperf(argv: list[str], workdir: Path, artifacts: Path) -> dict[str, Any]:
    """Run aiperf to the end (in its own process group) and read its JSON export."""
    # Not HF_HUB_OFFLINE: with it aiperf 0.13.0 looks a local tokenizer path up in the
    # Hub's cache and fails; without it a local path is loaded as it is.
    env = peers.peer_env({"HF_DATASETS_OFFLINE": "1", "TMPDIR": str(workdir)})
    child = Child(argv, workdir, "aiperf", env=env, cwd=workdir)
    deadline = time.monotonic() + AIPERF_TIMEOUT_S
    try:
        while child.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        code = peers.stop_group(child) if child.proc.poll() is None else child.proc.returncode
    exports = sorted(artifacts.rglob("profile_export_aiperf.json"))
    if code != 0 or not exports:
        printed = "\n".join(child.output()[-60:])
        raise RuntimeError(f"aiperf exited with {code}, no export\n{printed}\n{child.tail()}")
    raw: dict[str, Any] = json.loads(exports[-1].read_text())
    metrics = raw.get("records") or raw  # the metrics sit at the top level or under "records"
    out = {
        "requests": _metric(metrics, "request_count", "avg"),
        "errors": _metric(metrics, "error_request_count", "avg") or 0,
        "rps": _metric(metrics, "request_throughput", "avg"),
        "latency_p50_ms": _metric(metrics, "request_latency", "p50"),
        "latency_p99_ms": _metric(metrics, "request_latency", "p99"),
        "ttft_p50_ms": _metric(metrics, "time_to_first_token", "p50"),
        "ttft_p99_ms": _metric(metrics, "time_to_first_token", "p99"),
        "itl_mean_ms": _metric(metrics, "inter_token_latency", "avg"),
        "tokens_per_request": _metric(metrics, "output_sequence_length", "avg"),
        "export": str(exports[-1]),
    }
    return out


FIGURES = (
    ("rps", "throughput, req/s"),
    ("latency_p50_ms", "latency to last token p50, ms"),
    ("latency_p99_ms", "latency to last token p99, ms"),
    ("stream_end_p50_ms", "latency to end of stream p50, ms"),
    ("ttft_p50_ms", "TTFT p50, ms"),
    ("ttft_p99_ms", "TTFT p99, ms"),
    ("itl_mean_ms", "inter-token latency mean, ms"),
    ("tokens_per_request", "content tokens per stream"),
)


def compare(runs: list[dict[str, Any]], tool: dict[str, Any]) -> list[dict[str, Any]]:
    """Each figure: ours (mean of the runs around the tool's), the tool's, their difference in %."""
    rows = []
    for key, label in FIGURES:
        mine = [r[key] for r in runs if r.get(key) is not None]
        theirs = tool.get(key)
        mean = statistics.fmean(mine) if mine else None
        diff = (theirs - mean) / mean * 100 if mean and theirs is not None else None
        rows.append(
            {
                "figure": label,
                "ours": [round(v, 3) for v in mine],
                "ours_mean": round(mean, 3) if mean is not None else None,
                "aiperf": round(theirs, 3) if theirs is not None else None,
                "diff_pct": round(diff, 1) if diff is not None else None,
            }
        )
    return rows


def render(result: dict[str, Any]) -> str:
    load = result["load"]
    head = (
        f"meshgate in front of the mock paced at {load['token_delay_ms']:g} ms a token "
        f"({CHUNKS} chunks), chat_stream, closed loop c={load['concurrency']}, "
        f"{load['duration_s']:g} s windows; ours = bench/loadgen.py before and after aiperf "
        f"{result['aiperf_version']}"
    )
    rows = [
        [
            r["figure"],
            " / ".join(f"{v:,.2f}" for v in r["ours"]) or "-",
            report._fmt(r["aiperf"], 2),
            f"{r['diff_pct']:+.1f}%" if r["diff_pct"] is not None else "-",
        ]
        for r in result["comparison"]
    ]
    table = report.table(["figure", "ours (before / after)", "aiperf", "aiperf vs ours"], rows)
    return f"{head}\n{table}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/realtool.py", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="c=4, 3 s windows: proves the path")
    parser.add_argument("--concurrency", type=int, help="default 64 (smoke: 4)")
    parser.add_argument("--duration", type=float, help="seconds per window (default 20; smoke 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each window")
    parser.add_argument("--token-delay-ms", type=float, default=20.0, help="the mock's pacing")
    parser.add_argument("--ledger", choices=["on", "off"], default="on")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.concurrency = args.concurrency or (4 if args.smoke else 64)
    args.duration = args.duration or (3.0 if args.smoke else 20.0)
    return args


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds through the finally blocks that stop the children


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    payload = Payload(max_tokens=CHUNKS)
    venv = peers.ensure_aiperf()
    tokenizer = ensure_tokenizer(venv, payload.message)
    started = time.monotonic()
    result: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "aiperf_version": peers.installed_versions("aiperf").get("aiperf"),
        "load": {
            "endpoint": "chat_stream",
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "token_delay_ms": args.token_delay_ms,
            "max_tokens": payload.max_tokens,
            "ledger": args.ledger,
        },
    }
    with tempfile.TemporaryDirectory(prefix="meshgate-realtool-") as tmp:
        workdir = Path(tmp)
        prompts = workdir / "prompts.jsonl"
        prompts.write_text(json.dumps({"text": payload.message}) + "\n")
        mock = MockProcess(workdir, token_delay_ms=args.token_delay_ms)
        mesh: MeshProcess | None = None
        gens: Generators | None = None
        try:
            models = openai_http_models(
                mock.base_url, payload.chat_model, payload.embed_model, DIMENSIONS
            )
            print("starting meshgate in front of the paced mock ...", flush=True)
            mesh = MeshProcess(workdir, 0.0, models=models, ledger=args.ledger == "on")
            mesh_processes, mock_pid = mesh.processes, mock.pid
            leg = Leg(
                name="meshgate",
                kind="http",
                target=mesh.base_url,
                key=mesh.key,
                direct=False,
                processes=lambda: {**mesh_processes(), mock_pid: "mock"},
                upstream_label="mock",
            )
            gens = Generators(1, workdir)
            runs = []
            print("our generator ...", flush=True)
            runs.append(ours(gens, leg, args.concurrency, args.warmup, args.duration, payload))
            print("aiperf ...", flush=True)
            argv_ = aiperf_argv(
                venv,
                tokenizer,
                mesh,
                payload,
                prompts,
                workdir / "aiperf",
                args.concurrency,
                args.warmup,
                args.duration,
            )
            result["aiperf_argv"] = argv_
            result["aiperf"] = run_aiperf(argv_, workdir, workdir / "aiperf")
            print("our generator again ...", flush=True)
            runs.append(ours(gens, leg, args.concurrency, args.warmup, args.duration, payload))
            result["ours"] = runs
        finally:
            if gens is not None:
                gens.close()
            if mesh is not None:
                result["meshgate_exit_code"] = mesh.stop()
            mock.stop()
    result["comparison"] = compare(result["ours"], result["aiperf"])
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print()
    print(render(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    print(f"\nwrote {args.out} ({result['elapsed_s']} s)")
    errors = sum(r["errors"] for r in result["ours"]) + (result["aiperf"]["errors"] or 0)
    return 1 if errors else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
