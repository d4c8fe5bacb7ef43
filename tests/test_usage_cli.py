"""`meshgate usage` and the ledger service as real processes: `meshgate serve ledger`
against a real Redis and PostgreSQL, the CLI's JSON, CSV and table output, its errors,
the service's metrics, and a ledger killed with -9 while its database hung."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from bench import procstat
from bench.procstat import descendants
from meshgate import shards
from meshgate.config import Config, load_config
from meshgate.launcher import grpc_serving
from meshgate.v1 import ledger_pb2, ledger_pb2_grpc, usage_pb2
from tests.conftest import (
    RunningMesh,
    free_ports,
    meshgate_cmd,
    processes_mentioning,
    subprocess_env,
    write_config,
)
from tests.support import PostgresServer, RedisServer, metric
from tests.test_ledger_store import record

NOW = datetime.now(UTC).replace(microsecond=0)


class Ledger:
    """One `meshgate serve ledger`, its stderr kept in a file for failure messages."""

    def __init__(self, config_path: Path, workdir: Path) -> None:
        self.config: Config = load_config(config_path, environ={})
        self.stderr_path = workdir / f"ledger-{time.monotonic_ns()}.stderr"
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                meshgate_cmd("serve", "ledger", "--config", str(config_path)),
                env=subprocess_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        target = self.config.services.ledger.dial_target()
        deadline = time.monotonic() + 40
        while not grpc_serving(target):
            assert self.proc.poll() is None, f"ledger exited:\n{self.stderr()}"
            assert time.monotonic() < deadline, f"ledger not serving:\n{self.stderr()}"
            time.sleep(0.1)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.kill()


def ledger_config(workdir: Path, redis_url: str, db_url: str, **ledger: Any) -> Path:
    (metrics_port,) = free_ports(1)
    return write_config(
        workdir,
        {
            "redis": {"url": redis_url},
            "ledger": {"database_url": db_url, **ledger},
            "services": {"ledger": {"metrics_port": metrics_port}},
        },
    )


def usage(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        meshgate_cmd("usage", "--config", str(config_path), *args),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def xadd(client: redis.Redis, records: list[usage_pb2.UsageRecord]) -> None:
    for r in records:
        stream = shards.usage_stream(shards.shard_of(r.tenant, r.key_id, 16))
        client.xadd(stream, {shards.RECORD_FIELD: r.SerializeToString()})


def wait_records(config_path: Path, key: str, count: int, timeout: float = 10) -> list[Any]:
    """The key's records as `meshgate usage` prints them, once there are `count`."""
    deadline = time.monotonic() + timeout
    while True:
        done = usage(config_path, "--key", key, "--records", "--format", "json")
        assert done.returncode == 0, done.stderr
        found: list[Any] = json.loads(done.stdout, parse_float=Decimal)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


POPULATION = [
    record(1, NOW - timedelta(minutes=30), key_id="key-cli", prompt=1200, completion=300,
           cached=200, cost_pico=1_000 * 500_000 + 200 * 250_000 + 300 * 1_500_000),
    record(2, NOW - timedelta(minutes=20), key_id="key-cli", model="meshgate/reference-mini",
           prompt=7, completion=0, cost_pico=700_000, outcome=usage_pb2.OUTCOME_FAILED),
    record(3, NOW - timedelta(minutes=10), key_id="key-cli", prompt=3, completion=5,
           cost_pico=9_000_000),
    record(4, NOW - timedelta(minutes=5), key_id="key-other", tenant="globex", model="bge-m3",
           prompt=100, completion=0, cost_pico=1_000_000),
]  # fmt: skip


@pytest.fixture
def running(
    tmp_path: Path, redis_server: RedisServer, postgres_url: str
) -> Iterator[tuple[Path, Ledger]]:
    config_path = ledger_config(tmp_path, redis_server.url, postgres_url)
    ledger = Ledger(config_path, tmp_path)
    xadd(redis_server.client(), POPULATION)
    try:
        yield config_path, ledger
    finally:
        ledger.stop()


def test_records_as_json_carry_the_contract_fields_with_exact_dollars(
    running: tuple[Path, Ledger],
) -> None:
    config_path, _ = running
    started = time.monotonic()
    found = wait_records(config_path, "key-cli", 3)
    print(f"\nrecords visible to `meshgate usage` after {time.monotonic() - started:.2f}s")
    assert [r["request_id"] for r in found] == ["req-000003", "req-000002", "req-000001"]
    first = found[-1]
    for field in (
        "request_id",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "status",
    ):
        assert field in first
    assert isinstance(first["cost_usd"], Decimal), "cost_usd is a JSON number"
    assert first["cost_usd"] == Decimal("0.00100")  # 1000 x $0.5 + 200 x $0.25 + 300 x $1.5 / M
    assert found[1]["cost_usd"] == Decimal("0.0000007")
    assert first | {"cost_usd": None} == {
        "request_id": "req-000001",
        "started_at": (NOW - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ended_at": (NOW - timedelta(minutes=30, seconds=-1, microseconds=-500_000)).strftime(
            "%Y-%m-%dT%H:%M:%S.500000Z"
        ),
        "key_id": "key-cli",
        "tenant": "acme",
        "model": "meshgate/reference-pro",
        "requested_model": "",
        "endpoint": "chat.completions",
        "stream": False,
        "outcome": "completed",
        "status": 200,
        "error_code": "",
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "cached_tokens": 200,
        "cost_usd": None,
        "reserved_tokens": 2224,
        "reserved_usd": Decimal("0.0016"),
        "replica": "127.0.0.1:50055",
        "latency_ms": 1500,
        "ttft_ms": 0,
        "id": "lease-000001",
    }
    assert found[1]["outcome"] == "failed" and found[1]["status"] == 502
    assert found[1]["error_code"] == "upstream_error"


def test_limit_pages_and_the_newest_come_first(running: tuple[Path, Ledger]) -> None:
    config_path, _ = running
    wait_records(config_path, "key-cli", 3)
    done = usage(config_path, "--records", "--limit", "2", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert [r["request_id"] for r in json.loads(done.stdout)] == ["req-000004", "req-000003"]


def test_summaries_by_model_and_day_as_json_and_csv(running: tuple[Path, Ledger]) -> None:
    config_path, _ = running
    wait_records(config_path, "key-cli", 3)
    args = ("--since", "2h", "--group-by", "model,day", "--tenant", "acme")
    done = usage(config_path, *args, "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout, parse_float=Decimal)
    day = {NOW - timedelta(minutes=m) for m in (30, 20, 10)}
    assert {d.strftime("%Y-%m-%dT00:00:00Z") for d in day} == {r["day"] for r in rows}
    by_model: dict[str, dict[str, Any]] = {}
    for row in rows:
        totals = by_model.setdefault(row["model"], {"requests": 0, "cost_usd": Decimal(0)})
        totals["requests"] += row["requests"]
        totals["cost_usd"] += row["cost_usd"]
        assert set(row) == {"day", "model", "requests", "prompt_tokens", "completion_tokens",
                            "cached_tokens", "cost_usd", "errors"}  # fmt: skip
    assert by_model == {
        "meshgate/reference-pro": {"requests": 2, "cost_usd": Decimal("0.001009")},
        "meshgate/reference-mini": {"requests": 1, "cost_usd": Decimal("0.0000007")},
    }

    done = usage(config_path, *args, "--format", "csv")
    assert done.returncode == 0, done.stderr
    table = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(table) == len(rows)
    assert {r["model"]: r["cost_usd"] for r in table if r["model"].endswith("mini")} == {
        "meshgate/reference-mini": "0.0000007"
    }


def test_grand_total_and_records_as_tables(running: tuple[Path, Ledger]) -> None:
    config_path, _ = running
    wait_records(config_path, "key-other", 1)
    wait_records(config_path, "key-cli", 3)
    done = usage(config_path, "--group-by", "")
    assert done.returncode == 0, done.stderr
    header, total = done.stdout.splitlines()
    assert header.split() == ["REQUESTS", "PROMPT", "COMPLETION", "CACHED", "COST", "USD", "ERRORS"]
    assert total.split() == ["4", "1310", "305", "200", "$0.0010107", "1"]

    done = usage(config_path, "--records", "--key", "key-cli")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["STARTED", "AT", "REQUEST"]
    assert len(lines) == 4 and "$0.000009" in lines[1] and "req-000003" in lines[1]

    done = usage(config_path, "--records", "--key", "key-cli", "--format", "csv")
    assert done.returncode == 0, done.stderr
    parsed = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["request_id"] for r in parsed] == ["req-000003", "req-000002", "req-000001"]
    assert parsed[2]["cost_usd"] == "0.001" and parsed[2]["stream"] == "false"


def test_the_ledger_exports_its_metrics(running: tuple[Path, Ledger]) -> None:
    config_path, ledger = running
    wait_records(config_path, "key-other", 1)
    wait_records(config_path, "key-cli", 3)
    port = ledger.config.services.ledger.metrics_port
    assert metric(port, "meshgate_ledger_records_written_total") == 4
    assert metric(port, "meshgate_ledger_duplicates_total") == 0
    assert metric(port, "meshgate_ledger_lag_records") == 0
    spend = metric(port, "meshgate_spend_usd_total", 'model="bge-m3"')
    assert spend == pytest.approx(0.000001)
    tokens = metric(port, "meshgate_billed_tokens_total", 'direction="input"')
    assert tokens == 1310


def test_bad_flags_and_a_missing_ledger_are_one_line_errors(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    nothing = write_config(tmp_path, {"redis": {"url": redis_server.url}})  # no ledger runs
    done = usage(nothing, "--records", "--format", "json")
    assert done.returncode == 1
    assert done.stderr.startswith("meshgate: cannot reach the ledger at 127.0.0.1:")
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert done.stdout == ""
    for args, message in [
        (("--since", "yesterday"), "meshgate: --since 'yesterday': use a duration"),
        (("--since", "1h", "--until", "2h"), "meshgate: --until must be later than --since"),
        (("--group-by", "key,colour"), "meshgate: --group-by 'colour': choose from"),
        (("--group-by", "day", "--bucket", "hour"), "meshgate: --group-by day contradicts"),
    ]:
        done = usage(nothing, *args)
        assert done.returncode == 2, args
        assert done.stderr.startswith(message), done.stderr
        assert len(done.stderr.splitlines()) == 1


def test_bad_arguments_over_grpc_are_invalid_argument(running: tuple[Path, Ledger]) -> None:
    _, ledger = running
    target = ledger.config.services.ledger.dial_target()
    with grpc.insecure_channel(target) as channel:
        stub = ledger_pb2_grpc.UsageServiceStub(channel)
        cases = [
            (ledger_pb2.SummarizeUsageRequest(group_by=[0]), "group_by[0]"),
            (
                ledger_pb2.SummarizeUsageRequest(group_by=[1, 3, 1]),
                "group_by[2]: DIMENSION_KEY is listed twice",
            ),
            (ledger_pb2.SummarizeUsageRequest(bucket=7), "bucket: 7 is not a bucket"),  # type: ignore[arg-type]
            (
                ledger_pb2.SummarizeUsageRequest(
                    filter=ledger_pb2.UsageFilter(since_unix_us=20, until_unix_us=10)
                ),
                "until_unix_us must be later",
            ),
        ]
        for request, message in cases:
            with pytest.raises(grpc.RpcError) as caught:
                stub.SummarizeUsage(request, timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in caught.value.details()
        for page in (
            ledger_pb2.ListUsageRecordsRequest(page_size=-1),
            ledger_pb2.ListUsageRecordsRequest(page_token="garbage"),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListUsageRecords(page, timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def freeze(server: PostgresServer) -> list[int]:
    """SIGSTOP the server and every backend: each backend is its own process group
    (PostgreSQL's children call setsid), so stopping the postmaster's group is not enough."""
    assert server.proc is not None
    pids = [server.proc.pid, *descendants(server.proc.pid)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def test_a_ledger_killed_while_its_database_hung_loses_nothing(
    tmp_path: Path, redis_server: RedisServer, postgres_server: PostgresServer, postgres_url: str
) -> None:
    """kill -9 of a replica holding unwritten entries: another claims and writes them once."""
    config_path = ledger_config(tmp_path, redis_server.url, postgres_url, claim_idle_ms=1000)
    first = Ledger(config_path, tmp_path)
    client = redis_server.client()
    records = [
        record(100 + i, NOW - timedelta(seconds=i), key_id="key-kill", cost_pico=1_234_567)
        for i in range(50)
    ]
    frozen = freeze(postgres_server)  # the write hangs: entries are read, never acknowledged
    try:
        xadd(client, records)
        stream = shards.usage_stream(shards.shard_of("acme", "key-kill", 16))
        deadline = time.monotonic() + 10
        while client.xpending(stream, shards.LEDGER_GROUP)["pending"] < len(records):
            assert time.monotonic() < deadline, first.stderr()
            time.sleep(0.05)
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert client.xlen(stream) == len(records)

    second = Ledger(config_path, tmp_path)
    try:
        found = wait_records(config_path, "key-kill", len(records), timeout=20)
        assert sorted(r["request_id"] for r in found) == sorted(r.request_id for r in records)
        deadline = time.monotonic() + 10
        while client.xlen(stream) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.xlen(stream) == 0
        port = second.config.services.ledger.metrics_port
        assert metric(port, "meshgate_ledger_redeliveries_total") == len(records)
        done = usage(config_path, "--key", "key-kill", "--group-by", "key", "--format", "json")
        (total,) = json.loads(done.stdout, parse_float=Decimal)
        assert total["requests"] == len(records)
        assert total["cost_usd"] == Decimal(1_234_567 * len(records)).scaleb(-12)
    finally:
        second.stop()


def test_the_ledger_without_a_usable_database_exits_with_one_line(
    tmp_path: Path, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    missing = postgres_server.server.database_url("no_such_database")
    for database_url, message in [
        ("", "meshgate ledger: ledger.database_url is empty"),
        (missing, "meshgate ledger: the database at 127.0.0.1:"),
    ]:
        config_path = ledger_config(tmp_path, redis_server.url, database_url)
        done = subprocess.run(
            meshgate_cmd("serve", "ledger", "--config", str(config_path)),
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1
        assert done.stderr.startswith(message), done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
    assert 'database "no_such_database" does not exist' in done.stderr


def test_meshgate_up_runs_the_ledger_only_when_it_is_enabled(
    start_mesh: Callable[..., RunningMesh],
) -> None:
    def served(mesh: RunningMesh) -> set[str]:
        names = set()
        for pid in processes_mentioning(str(mesh.config_path)):
            argv = procstat.argv(pid)
            if "serve" in argv and argv.index("serve") + 1 < len(argv):
                names.add(argv[argv.index("serve") + 1])
        return names

    off = start_mesh(ledger={"enabled": False})
    try:
        assert "ledger" not in served(off)
        assert "postgres" not in off.stderr()  # no embedded database either
    finally:
        off.stop()
    on = start_mesh()
    try:
        assert "ledger" in served(on)
    finally:
        on.stop()
