"""The audit log: who changed what, when and from where, in the ledger's database.

`AuditService` appends one row per admin change (services/ledger/migrations.py,
version 2) and pages them back newest first. Rows are never updated or deleted
here. What a row says is the admin listener's to decide; that it holds no
secret is checked by the admin API's tests.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
from typing import Any

import grpc

from meshgate.grpcio import Context
from meshgate.v1 import audit_pb2, audit_pb2_grpc
from services.ledger.store import to_unix_us

log = logging.getLogger("meshgate.ledger")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_COLUMNS = (
    "seq, id, recorded_at, actor_key_id, actor_name, source, action, target, details, request_id"
)
_UNAVAILABLE: tuple[type[BaseException], ...] = (OSError, TimeoutError)


def _event(row: Any) -> audit_pb2.AuditEvent:
    details = row["details"]
    return audit_pb2.AuditEvent(
        id=row["id"],
        time_unix_us=to_unix_us(row["recorded_at"]),
        actor_key_id=row["actor_key_id"],
        actor_name=row["actor_name"],
        source=row["source"],
        action=row["action"],
        target=row["target"],
        details_json=details if isinstance(details, str) else json.dumps(details),
        request_id=row["request_id"],
    )


def _token(seq: int) -> str:
    return base64.urlsafe_b64encode(str(seq).encode()).decode().rstrip("=")


def _seq(token: str) -> int:
    try:
        return int(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("page_token is not one this ledger issued") from None


class AuditLog:
    """The audit_events table behind the ledger's pool."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def record(self, event: audit_pb2.AuditEvent) -> audit_pb2.AuditEvent:
        try:
            details = json.loads(event.details_json or "{}")
        except ValueError:
            raise ValueError("details_json is not JSON") from None
        if not isinstance(details, dict):
            raise ValueError("details_json must be a JSON object")
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "INSERT INTO audit_events (id, actor_key_id, actor_name, source, action, target,"
                " details, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)"
                f" RETURNING {_COLUMNS}",
                "audit_" + secrets.token_hex(12),
                event.actor_key_id,
                event.actor_name,
                event.source,
                event.action,
                event.target,
                json.dumps(details),
                event.request_id,
            )
        return _event(row)

    async def page(
        self, target: str, actor: str, size: int, token: str
    ) -> tuple[list[audit_pb2.AuditEvent], str]:
        where: list[str] = []
        values: list[Any] = []
        for column, value in (("target", target), ("actor_key_id", actor)):
            if value:
                values.append(value)
                where.append(f"{column} = ${len(values)}")
        if token:
            values.append(_seq(token))
            where.append(f"seq < ${len(values)}")
        values.append(size + 1)
        sql = (
            f"SELECT {_COLUMNS} FROM audit_events"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY seq DESC LIMIT ${len(values)}"
        )
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(sql, *values)
        page = rows[:size]
        following = _token(page[-1]["seq"]) if len(rows) > size else ""
        return [_event(row) for row in page], following


class AuditService(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, audit: AuditLog, unavailable: tuple[type[BaseException], ...]) -> None:
        self._audit = audit
        self._unavailable = unavailable

    async def RecordAuditEvent(
        self, request: audit_pb2.RecordAuditEventRequest, context: Context
    ) -> audit_pb2.RecordAuditEventResponse:
        if not request.event.action:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "event.action is required")
        try:
            event = await self._audit.record(request.event)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"event.{exc}")
        except self._unavailable as exc:
            await _down(context, exc)
        return audit_pb2.RecordAuditEventResponse(event=event)

    async def ListAuditEvents(
        self, request: audit_pb2.ListAuditEventsRequest, context: Context
    ) -> audit_pb2.ListAuditEventsResponse:
        if request.page_size < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must be 0 or more")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        try:
            events, token = await self._audit.page(
                request.target, request.actor_key_id, size, request.page_token
            )
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except self._unavailable as exc:
            await _down(context, exc)
        return audit_pb2.ListAuditEventsResponse(events=events, next_page_token=token)


async def _down(context: Context, exc: BaseException) -> None:
    log.warning("audit query failed", extra={"error": type(exc).__name__})
    await context.abort(
        grpc.StatusCode.UNAVAILABLE, "the ledger's database is unavailable; retry shortly"
    )
