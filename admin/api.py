"""The admin API (`/admin/v1`): one function per operation, translating JSON to gRPC and back.

Every operation is declared once in OPERATIONS (method, path, body, query,
answer): the app routes from it and the OpenAPI document is written from it
(admin/openapi.py). Each request is authenticated first, as an admin key
(auth refuses others with 403), then its body and query are checked against
admin/schema.py. The state lives behind gRPC: keys and tenants with auth's
AdminService, usage and the audit log with the ledger, replica health with
the router. Every change is recorded in the audit log, without secrets.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from admin import schema
from admin.mesh import AdminMesh, call
from edge.errors import error_response
from edge.headers import request_id_of
from edge.pipeline import read_body
from meshgate import errors, logs
from meshgate.errors import ApiError, invalid_request
from meshgate.pricing import to_micro_usd
from meshgate.v1 import (
    admin_pb2,
    audit_pb2,
    auth_pb2,
    common_pb2,
    ledger_pb2,
    router_pb2,
)
from services.auth.keys import (
    PERIOD_NAMES,
    PERIODS,
    POLICIES,
    POLICY_NAMES,
    ROLE_NAMES,
    ROLES,
    counts,
    usd_text,
)
from services.ledger import report
from services.ledger.store import to_datetime, to_unix_us

log = logging.getLogger("meshgate.admin")

PREFIX = "/admin/v1"
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Call:
    """One authenticated admin request: who asked, from where, and what, already checked."""

    request: Request
    mesh: AdminMesh
    rid: str
    deadline: float
    admin: common_pb2.Principal
    body: BaseModel | None
    query: BaseModel | None

    def arg(self, name: str) -> str:
        return str(self.request.path_params[name])

    def parsed(self, model: type[M]) -> M:
        """The body or query as its operation declared it (checked before the handler ran)."""
        for value in (self.body, self.query):
            if isinstance(value, model):
                return value
        raise AssertionError(f"{model.__name__} is not this operation's body or query")

    async def rpc(self, method: Any, message: Any, service: str = "auth") -> Any:
        """A change: sent once."""
        return await call(method, message, service, self.rid, self.deadline)

    async def read(self, method: Any, message: Any, service: str = "auth") -> Any:
        """A read: retried on another replica if its replica died mid-call."""
        return await call(method, message, service, self.rid, self.deadline, idempotent=True)

    async def audit(self, action: str, target: str, details: Mapping[str, Any]) -> None:
        """Record a change in the audit log; a ledger outage is logged, never hidden as success
        of the log (the change itself is done by then and is not undone)."""
        client = self.request.client
        event = audit_pb2.AuditEvent(
            actor_key_id=self.admin.key_id,
            actor_name=self.admin.name,
            source=f"{client.host}:{client.port}" if client else "",
            action=action,
            target=target,
            details_json=json.dumps(details, default=str, sort_keys=True),
            request_id=self.rid,
        )
        try:
            await self.rpc(
                self.mesh.audit.RecordAuditEvent,
                audit_pb2.RecordAuditEventRequest(event=event),
                "ledger",
            )
        except ApiError as exc:
            log.error(
                "audit event not recorded",
                extra={"action": action, "target": target, "error": exc.message},
            )


Answer = BaseModel | Response
Handler = Callable[[Call], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class Operation:
    """One admin API operation, as routed and as documented."""

    method: str
    path: str
    summary: str
    handler: Handler
    answer: type[BaseModel] | None
    status: int = 200
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    csv: bool = False


# ------------------------------------------------------------ rendering ----


def _when(unix_us: int) -> datetime | None:
    return to_datetime(unix_us) if unix_us else None


def _budget(limits: common_pb2.Limits, spent: int) -> dict[str, Any]:
    budget = limits.budget_micro_usd
    return {
        "budget_usd": usd_text(budget),
        "budget_period": PERIOD_NAMES.get(limits.budget_period, "total"),
        "spent_usd": usd_text(spent),
        "remaining_usd": usd_text(max(budget - spent, 0)) if budget else None,
    }


def key_view(key: admin_pb2.Key) -> schema.Key:
    return schema.Key.model_validate(_key_fields(key))


def _key_fields(key: admin_pb2.Key) -> dict[str, Any]:
    now = to_unix_us(datetime.now(UTC))
    if key.revoked_unix_us:
        status = "revoked"
    elif key.expires_unix_us and now >= key.expires_unix_us:
        status = "expired"
    else:
        status = "active"
    return {
        "id": key.key_id,
        "name": key.name,
        "tenant": key.tenant or None,
        "status": status,
        **counts(key.limits),
        **_budget(key.limits, key.spent_micro_usd),
        "models": list(key.models),
        "fallbacks": {model: list(chain.models) for model, chain in sorted(key.fallbacks.items())},
        "roles": [ROLE_NAMES[r] for r in key.roles if r in ROLE_NAMES],
        "redis_failure_policy": POLICY_NAMES.get(key.redis_failure_policy, "fail_closed"),
        "created_at": _when(key.created_unix_us),
        "expires_at": _when(key.expires_unix_us),
        "revoked_at": _when(key.revoked_unix_us),
    }


def tenant_view(tenant: admin_pb2.Tenant) -> schema.Tenant:
    return schema.Tenant.model_validate(
        {
            "id": tenant.id,
            "source": "config" if tenant.source == "config" else "redis",
            **counts(tenant.limits),
            **_budget(tenant.limits, tenant.spent_micro_usd),
            "created_at": _when(tenant.created_unix_us),
        }
    )


def _wire_limits(body: schema.LimitsFields) -> common_pb2.Limits:
    return common_pb2.Limits(
        requests_per_minute=body.rpm,
        tokens_per_minute=body.tpm,
        max_concurrency=body.max_concurrency,
        budget_tokens=body.budget_tokens,
        budget_micro_usd=to_micro_usd(body.budget_usd),
        budget_period=PERIODS[body.budget_period],
    )


def _wire_fallbacks(fallbacks: dict[str, list[str]]) -> dict[str, common_pb2.ModelFallbacks]:
    return {model: common_pb2.ModelFallbacks(models=chain) for model, chain in fallbacks.items()}


def _wire_update(body: schema.UpdateLimits) -> admin_pb2.LimitsUpdate:
    update = admin_pb2.LimitsUpdate()
    for field, wire in (
        ("rpm", "requests_per_minute"),
        ("tpm", "tokens_per_minute"),
        ("max_concurrency", "max_concurrency"),
        ("budget_tokens", "budget_tokens"),
    ):
        value = getattr(body, field)
        if value is not None:
            setattr(update, wire, value)
    if body.budget_usd is not None:
        update.budget_micro_usd = to_micro_usd(body.budget_usd)
    if body.budget_period is not None:
        update.budget_period = PERIODS[body.budget_period]
    return update


def _given(body: BaseModel) -> dict[str, Any]:
    """The fields a request set, as JSON values: what the audit log records of a change."""
    given: dict[str, Any] = body.model_dump(mode="json", exclude_unset=True)
    return given


def _unix_us(moment: datetime | None) -> int:
    if moment is None:
        return 0
    return to_unix_us(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


# ----------------------------------------------------------------- keys ----


async def create_key(c: Call) -> Answer:
    body = c.parsed(schema.CreateKey)
    request = admin_pb2.CreateKeyRequest(
        name=body.name,
        tenant=body.tenant,
        limits=_wire_limits(body),
        models=body.models,
        expires_unix_us=_unix_us(body.expires_at),
        redis_failure_policy=POLICIES[body.redis_failure_policy],
        roles=[ROLES[r] for r in body.roles],
        fallbacks=_wire_fallbacks(body.fallbacks),
    )
    answer = await c.rpc(c.mesh.keys.CreateKey, request)
    await c.audit("key.create", answer.key.key_id, _given(body))
    return schema.CreatedKey(**_key_fields(answer.key), secret=answer.secret)


async def list_keys(c: Call) -> Answer:
    answer = await c.read(c.mesh.keys.ListKeys, admin_pb2.ListKeysRequest())
    return schema.KeyList(data=[key_view(k) for k in answer.keys])


async def get_key(c: Call) -> Answer:
    answer = await c.read(c.mesh.keys.GetKey, admin_pb2.GetKeyRequest(key_id=c.arg("key_id")))
    return key_view(answer.key)


async def update_key(c: Call) -> Answer:
    body = c.parsed(schema.UpdateKey)
    request = admin_pb2.UpdateKeyRequest(key_id=c.arg("key_id"), limits=_wire_update(body))
    given = body.model_fields_set
    if "models" in given:
        request.replace_models = True
        request.models.extend(body.models or [])
    if "fallbacks" in given:
        request.replace_fallbacks = True
        for model, chain in _wire_fallbacks(body.fallbacks or {}).items():
            request.fallbacks[model].CopyFrom(chain)
    if "expires_at" in given:
        request.expires_unix_us = _unix_us(body.expires_at)
    if body.roles is not None:
        request.roles.extend(ROLES[r] for r in body.roles)
    if not given:
        raise invalid_request("nothing to update: give at least one field")
    answer = await c.rpc(c.mesh.keys.UpdateKey, request)
    await c.audit("key.update", answer.key.key_id, _given(body))
    return key_view(answer.key)


async def revoke_key(c: Call) -> Answer:
    key_id = c.arg("key_id")
    answer = await c.rpc(c.mesh.keys.RevokeKey, admin_pb2.RevokeKeyRequest(key_id=key_id))
    await c.audit("key.revoke", key_id, {})
    return key_view(answer.key)


async def rotate_key(c: Call) -> Answer:
    key_id = c.arg("key_id")
    answer = await c.rpc(c.mesh.keys.RotateKey, admin_pb2.RotateKeyRequest(key_id=key_id))
    await c.audit("key.rotate", key_id, {"new_key_id": answer.key.key_id})
    return schema.RotatedKey(
        **_key_fields(answer.key), secret=answer.secret, revoked_key_id=answer.revoked.key_id
    )


# -------------------------------------------------------------- tenants ----


async def create_tenant(c: Call) -> Answer:
    body = c.parsed(schema.CreateTenant)
    request = admin_pb2.CreateTenantRequest(id=body.id, limits=_wire_limits(body))
    answer = await c.rpc(c.mesh.keys.CreateTenant, request)
    await c.audit("tenant.create", body.id, _given(body))
    return tenant_view(answer.tenant)


async def list_tenants(c: Call) -> Answer:
    answer = await c.read(c.mesh.keys.ListTenants, admin_pb2.ListTenantsRequest())
    return schema.TenantList(data=[tenant_view(t) for t in answer.tenants])


async def update_tenant(c: Call) -> Answer:
    body = c.parsed(schema.UpdateTenant)
    tenant_id = c.arg("tenant_id")
    request = admin_pb2.UpdateTenantRequest(id=tenant_id, limits=_wire_update(body))
    answer = await c.rpc(c.mesh.keys.UpdateTenant, request)
    await c.audit("tenant.update", tenant_id, _given(body))
    return tenant_view(answer.tenant)


# ---------------------------------------------------------------- usage ----

_DIMENSIONS = {
    "key": ledger_pb2.DIMENSION_KEY,
    "tenant": ledger_pb2.DIMENSION_TENANT,
    "model": ledger_pb2.DIMENSION_MODEL,
}
_GRAINS = {"hour": ledger_pb2.BUCKET_HOUR, "day": ledger_pb2.BUCKET_DAY}


def _filter(q: schema.UsageQuery | schema.RecordsQuery) -> ledger_pb2.UsageFilter:
    now = datetime.now(UTC)
    bounds: dict[str, int] = {}
    for name in ("since", "until"):
        text = getattr(q, name)
        if text is None:
            continue
        try:
            value = to_unix_us(report.moment(text, name, now))
        except report.ReportError as exc:
            raise invalid_request(str(exc), name) from None
        if value <= 0:
            raise invalid_request(f"{name} must be after 1970-01-01", name)
        bounds[name] = value
    since, until = bounds.get("since", 0), bounds.get("until", 0)
    if since and until and until <= since:
        raise invalid_request("until must be later than since", "until")
    return ledger_pb2.UsageFilter(
        key_id=q.key_id, tenant=q.tenant, model=q.model, since_unix_us=since, until_unix_us=until
    )


def _grouping(text: str) -> tuple[list[str], str | None]:
    dims: list[str] = []
    grain: str | None = None
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part in _GRAINS:
            if grain not in (None, part):
                raise invalid_request("group_by names both hour and day", "group_by")
            grain = part
        elif part in _DIMENSIONS:
            if part not in dims:
                dims.append(part)
        else:
            raise invalid_request(
                f"group_by: {part!r} is not one of key, tenant, model, hour, day", "group_by"
            )
    return dims, grain


def _plain(value: Decimal) -> str:
    return report.plain(value)


def _csv(rows: list[dict[str, Any]], columns: list[str], name: str) -> Response:
    text = report.to_csv(rows, columns) + "\n"
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}.csv"'},
    )


async def usage(c: Call) -> Answer:
    q = c.parsed(schema.UsageQuery)
    flt = _filter(q)
    dims, grain = _grouping(q.group_by)
    request = ledger_pb2.SummarizeUsageRequest(
        filter=flt,
        group_by=[_DIMENSIONS[d] for d in dims],
        bucket=_GRAINS.get(grain or "", ledger_pb2.BUCKET_UNSPECIFIED),
    )
    answer = await c.read(c.mesh.usage.SummarizeUsage, request, "ledger")
    rows: list[dict[str, Any]] = []
    for row in answer.rows:
        item: dict[str, Any] = {}
        if grain:
            item[grain] = to_datetime(row.bucket_start_unix_us).isoformat().replace("+00:00", "Z")
        for dim in dims:
            item[report.COLUMN[dim]] = getattr(row, report.COLUMN[dim])
        item |= {
            "requests": row.requests,
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "cached_tokens": row.cached_tokens,
            "cost_usd": _plain(Decimal(row.cost_usd)),
            "errors": row.errors,
        }
        rows.append(item)
    if q.format == "csv":
        columns = [*([grain] if grain else []), *(report.COLUMN[d] for d in dims)]
        columns += ["requests", "prompt_tokens", "completion_tokens", "cached_tokens"]
        return _csv(rows, [*columns, "cost_usd", "errors"], "usage")
    return schema.UsageSummary(data=[schema.UsageRow.model_validate(r) for r in rows])


def _record(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) if isinstance(v, Decimal) else v for k, v in fields.items()}


async def usage_records(c: Call) -> Answer:
    q = c.parsed(schema.RecordsQuery)
    request = ledger_pb2.ListUsageRecordsRequest(
        filter=_filter(q), page_size=q.limit, page_token=q.page_token
    )
    answer = await c.read(c.mesh.usage.ListUsageRecords, request, "ledger")
    rows = [_record(report.record_fields(r)) for r in answer.records]
    if q.format == "csv":
        return _csv(rows, list(schema.UsageRecord.model_fields), "usage-records")
    return schema.RecordPage(
        data=[schema.UsageRecord.model_validate(r) for r in rows],
        next_page_token=answer.next_page_token or None,
    )


# --------------------------------------------------------- models, audit ----


async def list_models(c: Call) -> Answer:
    answer = await c.read(
        c.mesh.router.ListModelReplicas, router_pb2.ListModelReplicasRequest(), "router"
    )
    return schema.ModelList(
        data=[
            schema.ModelHealth(
                id=m.model.id,
                category=m.model.category,
                capabilities=list(m.model.capabilities),
                context_length=m.model.context_length,
                aliases=list(m.model.aliases),
                fallbacks=list(m.model.fallbacks),
                serving=m.serving,
                replicas=[
                    schema.Replica(
                        target=r.target,
                        healthy=r.healthy,
                        outstanding=r.outstanding,
                        failed_checks=r.failed_checks,
                        ejections=r.ejections,
                        weight=r.weight,
                        max_concurrency=r.max_concurrency,
                        signals=_signals(r.signals),
                        score=round(r.score, 3),
                    )
                    for r in m.replicas
                ],
                decisions=dict(m.decisions),
            )
            for m in answer.models
        ]
    )


_SIGNAL_STATES = {
    router_pb2.SIGNAL_STATE_NONE: "none",
    router_pb2.SIGNAL_STATE_FRESH: "fresh",
    router_pb2.SIGNAL_STATE_STALE: "stale",
    router_pb2.SIGNAL_STATE_MISSING: "missing",
}


def _signals(s: router_pb2.EngineSignals) -> schema.EngineSignals:
    return schema.EngineSignals(
        state=_SIGNAL_STATES.get(s.state, "unknown"),  # type: ignore[arg-type]
        kind=s.kind,
        waiting=s.waiting,
        running=s.running,
        kv_cache_usage=s.kv_cache_usage if s.HasField("kv_cache_usage") else None,
        slots=s.slots,
        busy_slots=s.busy_slots,
        age_seconds=round(s.age_seconds, 2) if s.HasField("age_seconds") else None,
        error=s.error,
    )


async def audit_log(c: Call) -> Answer:
    q = c.parsed(schema.AuditQuery)
    request = audit_pb2.ListAuditEventsRequest(
        target=q.target, actor_key_id=q.actor_key_id, page_size=q.limit, page_token=q.page_token
    )
    answer = await c.read(c.mesh.audit.ListAuditEvents, request, "ledger")
    return schema.AuditPage(
        data=[
            schema.AuditEvent(
                id=e.id,
                time=to_datetime(e.time_unix_us),
                actor_key_id=e.actor_key_id,
                actor_name=e.actor_name,
                source=e.source,
                action=e.action,
                target=e.target,
                details=json.loads(e.details_json or "{}"),
                request_id=e.request_id,
            )
            for e in answer.events
        ],
        next_page_token=answer.next_page_token or None,
    )


OPERATIONS: tuple[Operation, ...] = (
    Operation("POST", "/keys", "Create a key; the answer shows its secret, once.", create_key,
              schema.CreatedKey, 201, body=schema.CreateKey),
    Operation("GET", "/keys", "List keys (never their secrets).", list_keys, schema.KeyList),
    Operation("GET", "/keys/{key_id}", "Describe one key.", get_key, schema.Key),
    Operation("PATCH", "/keys/{key_id}", "Change a key's limits, models, expiry or roles.",
              update_key, schema.Key, body=schema.UpdateKey),
    Operation("DELETE", "/keys/{key_id}", "Revoke a key; every auth replica refuses it at once.",
              revoke_key, schema.Key),
    Operation("POST", "/keys/{key_id}/rotate",
              "Replace a key with a new one of the same settings, and revoke it.", rotate_key,
              schema.RotatedKey, 201),
    Operation("POST", "/tenants", "Create a tenant.", create_tenant, schema.Tenant, 201,
              body=schema.CreateTenant),
    Operation("GET", "/tenants", "List tenants: the config file's, then the key store's.",
              list_tenants, schema.TenantList),
    Operation("PATCH", "/tenants/{tenant_id}", "Change a tenant's limits and budget.",
              update_tenant, schema.Tenant, body=schema.UpdateTenant),
    Operation("GET", "/usage", "Usage and spend summed by key, tenant, model, hour or day.",
              usage, schema.UsageSummary, query=schema.UsageQuery, csv=True),
    Operation("GET", "/usage/records", "The raw usage records, newest first.", usage_records,
              schema.RecordPage, query=schema.RecordsQuery, csv=True),
    Operation("GET", "/models", "Catalog models with the live health of their replicas.",
              list_models, schema.ModelList),
    Operation("GET", "/audit", "The audit log of admin changes, newest first.", audit_log,
              schema.AuditPage, query=schema.AuditQuery),
)  # fmt: skip


# ------------------------------------------------------------ the frame ----


def invalid_fields(exc: ValidationError, where: str) -> ApiError:
    """A 400 naming the first bad field (`param`), for the API's bodies and the dashboard's forms."""
    first = exc.errors()[0]
    param = "".join(
        f"[{part}]" if isinstance(part, int) else (f".{part}" if i else str(part))
        for i, part in enumerate(first["loc"])
    )
    return invalid_request(f"Invalid {where}: {param or 'body'}: {first['msg']}", param or None)


async def _parse_body(request: Request, model: type[BaseModel], limit: int) -> BaseModel:
    raw = await read_body(request, limit)
    try:
        decoded = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise invalid_request(
            "We could not parse the JSON body of your request. The body must be a JSON object."
        ) from None
    if not isinstance(decoded, dict):
        raise invalid_request("The request body must be a JSON object.")
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise invalid_fields(exc, "body") from None


def _parse_query(request: Request, model: type[BaseModel] | None) -> BaseModel | None:
    params = dict(request.query_params)
    if model is None:
        if params:
            name = next(iter(params))
            raise invalid_request(f"Unknown query parameter {name!r}.", name)
        return None
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise invalid_fields(exc, "query") from None


async def authenticate(
    mesh: AdminMesh, authorization: str, rid: str, deadline: float
) -> common_pb2.Principal:
    """The admin behind an Authorization header; auth refuses a key without the admin role (403).

    The one check of every admin request, the API's and the dashboard's pages alike.
    """
    request = auth_pb2.AuthenticateRequest(authorization=authorization, role=common_pb2.ROLE_ADMIN)
    answer = await call(mesh.auth.Authenticate, request, "auth", rid, deadline)
    principal: common_pb2.Principal = answer.principal
    return principal


def endpoint(op: Operation) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint of one operation: authenticate, check, run, render."""

    async def run(request: Request) -> Response:
        mesh: AdminMesh = request.app.state.mesh
        rid = request_id_of(request)
        logs.request_id.set(rid)
        deadline = time.monotonic() + mesh.request_timeout
        try:
            admin = await authenticate(
                mesh, request.headers.get("authorization", ""), rid, deadline
            )
            body = await _parse_body(request, op.body, mesh.max_body_bytes) if op.body else None
            query = _parse_query(request, op.query)
            answer = await op.handler(Call(request, mesh, rid, deadline, admin, body, query))
        except ApiError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return error_response(
                ApiError(499, "invalid_request_error", "The client closed the connection.")
            )
        except Exception as exc:
            log.error("unhandled error", extra={"error": type(exc).__name__}, exc_info=exc)
            return error_response(errors.server_error())
        if isinstance(answer, Response):
            return answer
        return Response(
            answer.model_dump_json(exclude_none=False),
            status_code=op.status,
            media_type="application/json",
        )

    run.__name__ = op.handler.__name__
    return run
