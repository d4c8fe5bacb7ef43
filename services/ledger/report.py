"""`meshgate usage`: usage and spend from the ledger, as a table, JSON or CSV.

A client of the ledger's `UsageService` at the configured address (like the
rest of the mesh, with mutual TLS when `tls` is set), so it works against a
running `meshgate up` with the same config and environment. Dollars are exact
decimals from the records' integer pico-dollars: JSON carries them as numbers
written digit for digit, never through a float.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, TextIO

import grpc

from meshgate import grpcio
from meshgate.config import Config
from meshgate.v1 import ledger_pb2, ledger_pb2_grpc, usage_pb2
from services.ledger.store import ENDPOINTS, OUTCOMES, to_datetime, to_unix_us

Format = Literal["table", "json", "csv"]
CALL_TIMEOUT_S = 15.0
MAX_PAGE = 1000
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DIMENSIONS = {
    "key": ledger_pb2.DIMENSION_KEY,
    "tenant": ledger_pb2.DIMENSION_TENANT,
    "model": ledger_pb2.DIMENSION_MODEL,
}
_BUCKETS = {"none": ledger_pb2.BUCKET_UNSPECIFIED, "hour": ledger_pb2.BUCKET_HOUR,
            "day": ledger_pb2.BUCKET_DAY}  # fmt: skip
COLUMN = {"key": "key_id", "tenant": "tenant", "model": "model"}


class ReportError(Exception):
    """A failure with a one-line message for the terminal; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Query:
    """What `meshgate usage` was asked for, already checked."""

    flt: ledger_pb2.UsageFilter
    group_by: tuple[str, ...] = ("key", "model")
    bucket: str = "none"
    records: bool = False
    limit: int = 100
    fmt: Format = "table"


def moment(text: str, flag: str, now: datetime) -> datetime:
    """`24h`, `7d`, `90m` (that long before now) or an ISO date/time, UTC unless it says."""
    match = _DURATION.match(text.strip())
    if match:
        try:
            return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError:
            raise ReportError(f"{flag} {text!r} reaches before the year 1", code=2) from None
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(
            f"{flag} {text!r}: use a duration like 24h, 7d or 90m, or an ISO date/time "
            "like 2026-05-01 or 2026-05-01T12:00",
            code=2,
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def build_query(
    *,
    key: str = "",
    tenant: str = "",
    model: str = "",
    since: str | None = None,
    until: str | None = None,
    group_by: str = "key,model",
    bucket: str | None = None,
    records: bool = False,
    limit: int = 100,
    fmt: Format = "table",
    now: datetime | None = None,
) -> Query:
    """Check the flags together; ReportError (exit 2) names the one at fault.

    `--group-by` may also name `hour` or `day`, the same as `--bucket`.
    """
    now = now or datetime.now(UTC)
    start = moment(since, "--since", now) if since else None
    end = moment(until, "--until", now) if until else None
    if start and end and end <= start:
        raise ReportError("--until must be later than --since", code=2)
    dims: list[str] = []
    grain = bucket
    for part in filter(None, (p.strip() for p in group_by.split(","))):
        if part in ("hour", "day"):
            if grain not in (None, part):
                raise ReportError(f"--group-by {part} contradicts --bucket {grain}", code=2)
            grain = part
        elif part not in _DIMENSIONS:
            raise ReportError(
                f"--group-by {part!r}: choose from key, tenant, model (and hour or day)", code=2
            )
        elif part not in dims:
            dims.append(part)
    if limit < 1:
        raise ReportError("--limit must be 1 or more", code=2)
    flt = ledger_pb2.UsageFilter(
        key_id=key,
        tenant=tenant,
        model=model,
        since_unix_us=_unix_us(start, "--since") if start else 0,
        until_unix_us=_unix_us(end, "--until") if end else 0,
    )
    return Query(flt, tuple(dims), grain or "none", records, limit, fmt)


def _unix_us(when: datetime, flag: str) -> int:
    value = to_unix_us(when)
    if value <= 0:
        raise ReportError(f"{flag} must be after 1970-01-01", code=2)
    return value


# ------------------------------------------------------------------ fetching ----


async def fetch(config: Config, query: Query) -> list[dict[str, Any]]:
    """The summary rows or the records, as plain dicts; ReportError on any failure."""
    target = config.services.ledger.dial_target()
    try:
        channel = grpcio.channel(target, config.tls)
    except OSError as exc:  # a TLS file that cannot be read
        raise ReportError(f"cannot read the TLS files: {exc}") from None
    try:
        stub = ledger_pb2_grpc.UsageServiceStub(channel)
        if query.records:
            return await _records(stub, query)
        return await _summary(stub, query)
    except grpc.aio.AioRpcError as exc:
        raise ReportError(_rpc_error(exc, target)) from None
    finally:
        await channel.close()


def _rpc_error(exc: grpc.aio.AioRpcError, target: str) -> str:
    code, details = exc.code(), exc.details() or ""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        if "database" in details:
            return f"the ledger at {target} cannot reach its database: {details}"
        return (
            f"cannot reach the ledger at {target} (is it running? `meshgate up` starts it; "
            "services.ledger sets the address)"
        )
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"the service at {target} is not a ledger (UsageService is not served there)"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return f"the ledger refused the query: {details}"
    return f"the ledger at {target} failed: {code.name}: {details}"


async def _summary(stub: Any, query: Query) -> list[dict[str, Any]]:
    request = ledger_pb2.SummarizeUsageRequest(
        filter=query.flt,
        group_by=[_DIMENSIONS[d] for d in query.group_by],
        bucket=_BUCKETS[query.bucket],
    )
    response = await stub.SummarizeUsage(request, timeout=CALL_TIMEOUT_S)
    rows = []
    for row in response.rows:
        item: dict[str, Any] = {}
        if query.bucket != "none":
            item[query.bucket] = _iso(row.bucket_start_unix_us)
        for dim in query.group_by:
            item[COLUMN[dim]] = getattr(row, COLUMN[dim])
        item |= {
            "requests": row.requests,
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "cached_tokens": row.cached_tokens,
            "cost_usd": Decimal(row.cost_usd),
            "errors": row.errors,
        }
        rows.append(item)
    return rows


async def _records(stub: Any, query: Query) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    token = ""
    while len(found) < query.limit:
        request = ledger_pb2.ListUsageRecordsRequest(
            filter=query.flt, page_size=min(query.limit - len(found), MAX_PAGE), page_token=token
        )
        response = await stub.ListUsageRecords(request, timeout=CALL_TIMEOUT_S)
        found += [record_fields(r) for r in response.records]
        token = response.next_page_token
        if not token:
            break
    return found[: query.limit]


def record_fields(record: usage_pb2.UsageRecord) -> dict[str, Any]:
    """Every field of a record, in the units people read: ISO times, dollars, milliseconds."""
    return {
        "request_id": record.request_id,
        "started_at": _iso(record.started_unix_us),
        "ended_at": _iso(record.ended_unix_us),
        "key_id": record.key_id,
        "tenant": record.tenant,
        "model": record.model,
        "requested_model": record.requested_model,
        "endpoint": ENDPOINTS.get(record.endpoint, "unspecified"),
        "stream": record.stream,
        "outcome": OUTCOMES.get(record.outcome, "unspecified"),
        "status": record.status,
        "error_code": record.error_code,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cached_tokens": record.cached_tokens,
        "cost_usd": Decimal(record.cost_pico_usd).scaleb(-12),
        "reserved_tokens": record.reserved_tokens,
        "reserved_usd": Decimal(record.reserved_micro_usd).scaleb(-6),
        "replica": record.replica,
        "latency_ms": Decimal(record.latency_us).scaleb(-3),
        "ttft_ms": Decimal(record.ttft_us).scaleb(-3),
        "id": record.id,
    }


def _iso(unix_us: int) -> str:
    moment = to_datetime(unix_us)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{moment.microsecond:06d}Z" if moment.microsecond else "Z")


# ----------------------------------------------------------------- rendering ----


def plain(value: Decimal) -> str:
    """A decimal digit for digit, without exponent or trailing zeros: 0.0000125, 12.5, 0."""
    text = f"{value:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _dollars(value: Decimal) -> str:
    """For tables: at least two places, every significant digit kept ($0.0000125, $12.50)."""
    whole, _, fraction = plain(value).partition(".")
    return f"${whole}.{fraction.ljust(2, '0')}"


def _json_value(value: Any) -> str:
    if isinstance(value, Decimal):
        return plain(value)  # a JSON number, exactly the decimal's digits
    return json.dumps(value)


def to_json(items: Sequence[dict[str, Any]]) -> str:
    """A JSON array, one object per line."""
    if not items:
        return "[]"
    lines = [
        "  {" + ", ".join(f"{json.dumps(k)}: {_json_value(v)}" for k, v in item.items()) + "}"
        for item in items
    ]
    return "[\n" + ",\n".join(lines) + "\n]"


def to_csv(items: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for item in items:
        writer.writerow([_cell(item.get(column), csv_form=True) for column in columns])
    return out.getvalue().rstrip("\n")


def _cell(value: Any, *, csv_form: bool = False) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return plain(value)
    if value == "" and not csv_form:
        return "-"
    return str(value)


# The records' table keeps to what fits a terminal; json and csv carry every field.
_RECORD_TABLE = ("started_at", "request_id", "key_id", "model", "status", "prompt_tokens",
                 "completion_tokens", "cost_usd", "latency_ms")  # fmt: skip
_HEADINGS = {"prompt_tokens": "PROMPT", "completion_tokens": "COMPLETION",
             "cached_tokens": "CACHED", "key_id": "KEY ID"}  # fmt: skip
_NUMERIC = {"requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd",
            "errors", "status", "latency_ms"}  # fmt: skip


def to_table(items: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not items:
        return "no usage recorded for this query"
    header = [_HEADINGS.get(c, c.upper().replace("_", " ")) for c in columns]
    body = [
        [_dollars(item[c]) if c == "cost_usd" else _cell(item.get(c, "")) for c in columns]
        for item in items
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(columns))]
    lines = []
    for row in [header, *body]:
        cells = [
            cell.rjust(w) if c in _NUMERIC and row is not header else cell.ljust(w)
            for cell, w, c in zip(row, widths, columns, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def render(items: Sequence[dict[str, Any]], query: Query) -> str:
    if query.fmt == "json":
        return to_json(items)
    if query.records:
        columns: Sequence[str] = list(record_fields(usage_pb2.UsageRecord()))
    else:
        columns = [
            *([query.bucket] if query.bucket != "none" else []),
            *(COLUMN[d] for d in query.group_by),
            "requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd",
            "errors",
        ]  # fmt: skip
    if query.fmt == "csv":
        return to_csv(items, columns)
    return to_table(items, _RECORD_TABLE if query.records else columns)


async def usage(config: Config, query: Query, out: TextIO) -> None:
    """The whole command: ask the ledger, print the answer."""
    out.write(render(await fetch(config, query), query) + "\n")
