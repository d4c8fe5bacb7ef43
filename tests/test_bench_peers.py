"""bench/run.py --peer and bench/realtool.py, without installing or starting any peer.

The end-to-end path (pinned installs, LiteLLM and Portkey on the mock, aiperf
through meshgate) downloads hundreds of MB and takes minutes on two cores, so
it is run by hand (bench/README.md); these check the pieces that decide what
the figures mean: the options, the headers a peer needs, the peers' configs,
and how RESULTS.md turns one run into meshgate-versus-peer ratios.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import peers, realtool, results_md  # noqa: E402
from bench import run as bench_run  # noqa: E402
from bench.httpclient import build_request  # noqa: E402


def test_peer_headers_go_on_every_request() -> None:
    raw = build_request(
        "http://127.0.0.1:8787/v1",
        "/chat/completions",
        "sk-mock",
        b"{}",
        {"x-portkey-provider": "openai", "x-portkey-custom-host": "http://127.0.0.1:9/v1"},
    )
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert "\r\nx-portkey-provider: openai" in head
    assert "\r\nx-portkey-custom-host: http://127.0.0.1:9/v1" in head
    assert "\r\nAuthorization: Bearer sk-mock" in head


def test_peer_option_is_repeatable_and_comma_separated_and_implies_the_mock() -> None:
    args = bench_run.parse_args(["--smoke", "--peer", "litellm,portkey", "--peer", "portkey"])
    assert args.peer == ["litellm", "portkey"]
    assert args.upstream == "mock"
    assert bench_run.parse_args(["--smoke"]).upstream == "reference"


@pytest.mark.parametrize(
    "argv",
    [
        ["--peer", "kong"],
        ["--upstream", "reference", "--peer", "litellm"],
        ["--gateway-url", "http://127.0.0.1:1/v1", "--gateway-header", "no colon"],
    ],
)
def test_bad_peer_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        bench_run.parse_args(argv)


def test_litellm_runs_with_no_key_no_database_and_routes_both_models_to_the_mock() -> None:
    config = peers.litellm_config("http://127.0.0.1:9/v1", "chat-model", "embed-model")
    assert "master_key" not in config["general_settings"]
    assert "database_url" not in config["general_settings"]
    routes = {m["model_name"]: m["litellm_params"] for m in config["model_list"]}
    assert set(routes) == {"chat-model", "embed-model"}
    assert {p["api_base"] for p in routes.values()} == {"http://127.0.0.1:9/v1"}
    assert all(p["model"].startswith("openai/") for p in routes.values())


def test_peer_env_drops_meshgate_settings_and_the_repository_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MESHGATE_EDGE__PORT", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-x")
    env = peers.peer_env({"A": "b"})
    assert "MESHGATE_EDGE__PORT" not in env and "PYTHONPATH" not in env
    assert "LITELLM_MASTER_KEY" not in env
    assert env["A"] == "b" and "127.0.0.1" in env["NO_PROXY"]


def _scenario(
    endpoint: str, leg: str, conc: int, rps: float, p50: float, p99: float, gw: float
) -> dict[str, Any]:
    s: dict[str, Any] = {
        "mode": "closed",
        "endpoint": endpoint,
        "leg": leg,
        "concurrency": conc,
        "errors": 0,
        "rps": rps,
        "latency_us": {"p50": p50, "p99": p99},
        "cpu": {"gateway_us_per_req": gw},
    }
    if endpoint == "chat_stream":
        s["cpu"]["gateway_per_chunk_us"] = gw / 16
    return s


def _result() -> dict[str, Any]:
    scenarios = []
    for conc in (1, 4):
        scenarios += [
            _scenario("chat", "direct", conc, 5000, 100, 200, 0),
            _scenario("chat", "meshgate", conc, 400, 3100, 6100, 2000),
            _scenario("chat", "portkey", conc, 800, 1100, 9050, 1000),
            _scenario("chat_stream", "direct", conc, 4000, 150, 300, 0),
            _scenario("chat_stream", "meshgate", conc, 300, 4000, 8000, 3600),
            _scenario("chat_stream", "portkey", conc, 700, 30000, 40000, 1600),
        ]
    overhead = [
        {
            "endpoint": "chat_stream",
            "concurrency": 1,
            "gateway": "meshgate",
            "ttft_overhead_p50_us": 3000,
        },
        {
            "endpoint": "chat_stream",
            "concurrency": 1,
            "gateway": "portkey",
            "ttft_overhead_p50_us": 27000,
        },
    ]
    meta = {
        "peers": {
            "portkey": {"description": "Portkey", "versions": {"@portkey-ai/gateway": "1.15.2"}}
        },
        "floor": {"grpc_unary": {"p50_us": 500.0, "cpu_us": 500.0}},
    }
    return {"meta": meta, "scenarios": scenarios, "overhead": overhead}


def test_results_md_gives_meshgate_against_each_peer_as_ratios() -> None:
    text = "\n".join(results_md.peers_section(_result()))
    assert "## Peers side by side" in text
    rows = {
        line.split(" | ")[0].strip("| "): line
        for line in text.splitlines()
        if line.startswith("| ")
    }
    # Throughput: meshgate / peer; c=64 was not measured, so the nearest (c=4) is named.
    assert "c=4 (c=64 not measured)" in rows["chat throughput, req/s"]
    assert rows["chat throughput, req/s"].endswith("| 0.50 |")
    # Added latency at c=1: (3100 - 100) vs (1100 - 100), peer / meshgate; floors of 500 µs.
    assert "3.00 ms (6.0 fl)" in rows["chat added latency p50"]
    assert rows["chat added latency p50"].endswith("| 0.33 |")
    assert rows["chat added latency p99"].endswith("| 1.50 |")
    assert rows["chat CPU per request (gateway)"].endswith("| 0.50 |")
    assert rows["chat_stream TTFT added p50"].endswith("| 9.00 |")
    assert "meshgate is behind on: chat throughput" in text
    assert "@portkey-ai/gateway 1.15.2" in text


def test_results_md_has_no_peers_section_without_peers() -> None:
    result = _result()
    del result["meta"]["peers"]
    assert results_md.peers_section(result) == []
    assert "Peers side by side" not in results_md.render(result, None)


@pytest.mark.parametrize(
    ("mesh", "peer", "higher", "ratio"),
    [(200.0, 100.0, True, 2.0), (100.0, 300.0, False, 3.0), (-5.0, 100.0, False, None)],
)
def test_peer_ratio_says_how_many_times_meshgate_is_ahead(
    mesh: float, peer: float, higher: bool, ratio: float | None
) -> None:
    assert results_md.peer_ratio(mesh, peer, higher) == ratio


def test_realtool_compares_the_tool_with_the_mean_of_our_runs() -> None:
    ours = [
        {"rps": 10.0, "latency_p50_ms": 300.0, "tokens_per_request": 16.0},
        {"rps": 12.0, "latency_p50_ms": 320.0, "tokens_per_request": 16.0},
    ]
    tool = {"rps": 9.9, "latency_p50_ms": 341.0, "tokens_per_request": 16.0}
    rows = {r["figure"]: r for r in realtool.compare(ours, tool)}
    assert rows["throughput, req/s"]["ours_mean"] == 11.0
    assert rows["throughput, req/s"]["diff_pct"] == -10.0
    assert rows["latency to last token p50, ms"]["diff_pct"] == 10.0
    assert rows["TTFT p50, ms"]["diff_pct"] is None  # neither measured it


def test_the_validation_share_is_of_meshgates_overhead_not_a_peers() -> None:
    """With peers in the run, every (endpoint, concurrency) has an overhead per gateway:
    the validation hop's share of the c=1 overhead is of meshgate's."""
    run = bench_run.Run(meta={"hops_p50_us": {"validation": 600.0}})
    for leg, p50 in (("direct", 100.0), ("meshgate", 3100.0), ("portkey", 1100.0)):
        scenario = _scenario("chat", leg, 1, 400, p50, 2 * p50, 0)
        scenario["direct"] = leg == "direct"
        scenario["cpu"]["by_process_us_per_req"] = {"validation": 300.0, "edge": 900.0}
        run.scenarios.append(scenario)
    bench_run._add_validation_share(run)
    assert run.meta["validation_share"]["of_c1_overhead_pct"] == 20.0  # 600 of 3,000 µs
