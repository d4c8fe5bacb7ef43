"""The dashboard's pages: keys, tenants, usage, engines and the audit log.

Each is a function of a dashboard.Page that calls the admin API's handlers
in-process and renders a template. `/keys` and `/usage` are the pages that
errors' `doc_url` points at (admin.public_url + the path): keep those paths.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from statistics import median
from typing import Any

from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from admin import api, schema
from admin.dashboard import Page, page
from admin.forms import build, limits
from admin.session import Created
from meshgate.errors import ApiError
from services.ledger import report

NOTICES = {
    "key-created": "Key created.",
    "key-updated": "Key updated.",
    "key-revoked": "Key revoked: every auth replica refuses it now.",
    "tenant-created": "Tenant created.",
    "tenant-updated": "Tenant updated.",
}
ROLE_CHOICES = {"api": ["api"], "admin": ["admin"], "both": ["api", "admin"]}


def _notice(p: Page) -> str:
    return NOTICES.get(p.request.query_params.get("notice", ""), "")


# ----------------------------------------------------------------- keys ----


async def _key_choices(p: Page) -> dict[str, Any]:
    tenants = await p.run(api.list_tenants, schema.TenantList)
    models = await p.run(api.list_models, schema.ModelList)
    return {"tenants": [t.id for t in tenants.data], "models": [m.id for m in models.data]}


async def keys(p: Page) -> Response:
    """The keys, newest first, the form that creates one, and a new key's secret, once."""
    return await _keys_page(p)


async def _keys_page(
    p: Page,
    status: int = 200,
    error: ApiError | None = None,
    values: dict[str, Any] | None = None,
) -> Response:
    listing = await p.run(api.list_keys, schema.KeyList)
    ordered = sorted(listing.data, key=lambda k: k.created_at or datetime.min.replace(tzinfo=UTC))
    created = p.dash.created_of(p.request) if status == 200 else None
    response = p.render(
        "keys.html",
        status,
        keys=list(reversed(ordered)),
        created=created,
        error=error,
        values=values or {},
        notice=_notice(p),
        **await _key_choices(p),
    )
    if created is not None:  # shown once: the next load of the page has no secret
        p.dash.forget_created(response, p.request)
    return response


async def create_key(p: Page) -> Response:
    """Create a key, then show its secret once on the keys page (POST, redirect, GET)."""
    form = p.form
    values = {name: form.get(name) for name in form.fields} | {"models": form.every("models")}
    try:
        body = build(
            schema.CreateKey,
            {
                "name": form.get("name"),
                "tenant": form.get("tenant"),
                "models": form.every("models"),
                "roles": ROLE_CHOICES.get(form.get("roles"), ["api"]),
                **limits(form),
            },
        )
        created = await p.run(api.create_key, schema.CreatedKey, body)
    except ApiError as exc:
        if exc.status >= 500:
            raise
        return await _keys_page(p, exc.status, error=exc, values=values)
    response = RedirectResponse("/keys?notice=key-created", status_code=303)
    p.dash.hand_over(response, p.request, Created(created.id, created.name, created.secret))
    return response


async def edit_key(p: Page) -> Response:
    key = await p.run(api.get_key, schema.Key)
    return p.render("key.html", key=key, error=None, **await _key_choices(p))


async def update_key(p: Page) -> Response:
    form = p.form
    try:
        body = build(
            schema.UpdateKey,
            {"models": form.every("models"), **limits(form)},
        )
        await p.run(api.update_key, schema.Key, body)
    except ApiError as exc:
        if exc.status >= 500:
            raise
        key = await p.run(api.get_key, schema.Key)
        return p.render("key.html", exc.status, key=key, error=exc, **await _key_choices(p))
    return RedirectResponse("/keys?notice=key-updated", status_code=303)


async def confirm_revoke(p: Page) -> Response:
    key = await p.run(api.get_key, schema.Key)
    return p.render("revoke.html", key=key)


async def revoke_key(p: Page) -> Response:
    await p.run(api.revoke_key, schema.Key)
    return RedirectResponse("/keys?notice=key-revoked", status_code=303)


# -------------------------------------------------------------- tenants ----


async def _tenants_page(
    p: Page, status: int = 200, error: ApiError | None = None, values: dict[str, Any] | None = None
) -> Response:
    listing = await p.run(api.list_tenants, schema.TenantList)
    return p.render(
        "tenants.html",
        status,
        tenants=listing.data,
        error=error,
        values=values or {},
        notice=_notice(p),
    )


async def tenants(p: Page) -> Response:
    return await _tenants_page(p)


async def create_tenant(p: Page) -> Response:
    form = p.form
    try:
        body = build(schema.CreateTenant, {"id": form.get("id"), **limits(form)})
        await p.run(api.create_tenant, schema.Tenant, body)
    except ApiError as exc:
        if exc.status >= 500:
            raise
        values = {name: form.get(name) for name in form.fields}
        return await _tenants_page(p, exc.status, error=exc, values=values)
    return RedirectResponse("/tenants?notice=tenant-created", status_code=303)


async def _tenant(p: Page) -> schema.Tenant:
    tenant_id = p.request.path_params["tenant_id"]
    listing = await p.run(api.list_tenants, schema.TenantList)
    for tenant in listing.data:
        if tenant.id == tenant_id:
            return tenant
    raise ApiError(404, "invalid_request_error", f"No tenant {tenant_id!r}.", code="not_found")


async def edit_tenant(p: Page) -> Response:
    return p.render("tenant.html", tenant=await _tenant(p), error=None)


async def update_tenant(p: Page) -> Response:
    try:
        body = build(schema.UpdateTenant, limits(p.form))
        await p.run(api.update_tenant, schema.Tenant, body)
    except ApiError as exc:
        if exc.status >= 500:
            raise
        return p.render("tenant.html", exc.status, tenant=await _tenant(p), error=exc)
    return RedirectResponse("/tenants?notice=tenant-updated", status_code=303)


# ---------------------------------------------------------------- usage ----

# The usage page's time ranges: (query value, label, how far back, bucket grain).
RANGES = {
    "24h": ("Last 24 hours", timedelta(hours=24), "hour"),
    "7d": ("Last 7 days", timedelta(days=7), "day"),
    "30d": ("Last 30 days", timedelta(days=30), "day"),
}
DIMENSIONS = {"key": "key_id", "tenant": "tenant", "model": "model"}
# At most this many series per chart; the rest are summed as "other".
MAX_SERIES = 8


def _buckets(now: datetime, back: timedelta, grain: str) -> list[datetime]:
    step = timedelta(hours=1) if grain == "hour" else timedelta(days=1)
    last = now.replace(minute=0, second=0, microsecond=0)
    if grain == "day":
        last = last.replace(hour=0)
    count = int(back / step)
    return [last - step * i for i in range(count - 1, -1, -1)]


def usage_chart(
    rows: list[schema.UsageRow],
    dimension: str,
    grain: str,
    buckets: list[datetime],
    labels: dict[str, str],
) -> dict[str, Any]:
    """The charts' data: one x axis (bucket starts, unix seconds) and per-group series.

    Spend is in dollars and tokens are prompt plus completion, per bucket; the
    groups with the most spend come first, at most MAX_SERIES of them.
    """
    column = DIMENSIONS[dimension]
    index = {b: i for i, b in enumerate(buckets)}
    spend: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(buckets))
    tokens: dict[str, list[int]] = defaultdict(lambda: [0] * len(buckets))
    rank: dict[str, tuple[Decimal, int]] = defaultdict(lambda: (Decimal(0), 0))
    for row in rows:
        moment = getattr(row, grain)
        if moment is None or moment not in index:
            continue
        group = getattr(row, column) or ""
        spend[group][index[moment]] += float(row.cost_usd)
        tokens[group][index[moment]] += row.prompt_tokens + row.completion_tokens
        cost, requests = rank[group]
        rank[group] = (cost + Decimal(row.cost_usd), requests + row.requests)
    ranked = sorted(rank, key=lambda g: rank[g], reverse=True)
    shown, rest = ranked[:MAX_SERIES], ranked[MAX_SERIES:]
    series = [
        {"label": labels.get(g, g) or "(none)", "spend": spend[g], "tokens": tokens[g]}
        for g in shown
    ]
    if rest:
        series.append(
            {
                "label": f"other ({len(rest)})",
                "spend": [sum(spend[g][i] for g in rest) for i in range(len(buckets))],
                "tokens": [sum(tokens[g][i] for g in rest) for i in range(len(buckets))],
            }
        )
    return {"x": [int(b.timestamp()) for b in buckets], "grain": grain, "series": series}


def usage_totals(
    rows: list[schema.UsageRow], dimension: str, labels: dict[str, str]
) -> list[dict[str, Any]]:
    """One line per group over the whole range, most spend first."""
    column = DIMENSIONS[dimension]
    sums: dict[str, dict[str, Any]] = {}
    for row in rows:
        group = getattr(row, column) or ""
        item = sums.setdefault(
            group,
            {
                "id": group,
                "label": labels.get(group, group) or "(none)",
                "requests": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "errors": 0,
                "cost": Decimal(0),
            },
        )
        for field in ("requests", "prompt_tokens", "completion_tokens", "errors"):
            item[field] += getattr(row, field)
        item["cost"] += Decimal(row.cost_usd)
    ordered = sorted(sums.values(), key=lambda i: (i["cost"], i["requests"]), reverse=True)
    for item in ordered:
        item["cost_usd"] = report.plain(item.pop("cost"))
    return ordered


def key_labels(names: dict[str, str]) -> dict[str, str]:
    """How the charts name a key: its name, with its id only where two keys share a name."""
    seen = Counter(names.values())
    return {k: name if seen[name] == 1 else f"{name} ({k})" for k, name in names.items()}


async def usage(p: Page) -> Response:
    """Spend and tokens over time per key, tenant or model, and the latest records."""
    params = p.request.query_params
    span = params.get("range", "7d") if params.get("range") in RANGES else "7d"
    dimension = params.get("by", "key") if params.get("by") in DIMENSIONS else "key"
    label, back, grain = RANGES[span]
    filters = {name: params.get(name, "") for name in ("key_id", "tenant", "model")}
    now = datetime.now(UTC)
    buckets = _buckets(now, back, grain)
    since = buckets[0].isoformat().replace("+00:00", "Z")
    summary = await p.run(
        api.usage,
        schema.UsageSummary,
        query=schema.UsageQuery(
            since=since, group_by=f"{dimension},{grain}", **filters, format="json"
        ),
    )
    records = await p.run(
        api.usage_records,
        schema.RecordPage,
        query=schema.RecordsQuery(since=since, limit=50, **filters, format="json"),
    )
    listing = await p.run(api.list_keys, schema.KeyList)
    names = {k.id: k.name for k in listing.data}
    labels = key_labels(names) if dimension == "key" else {}
    return p.render(
        "usage.html",
        chart=usage_chart(summary.data, dimension, grain, buckets, labels),
        totals=usage_totals(summary.data, dimension, labels),
        records=records.data,
        names=names,
        span=span,
        span_label=label,
        ranges={k: v[0] for k, v in RANGES.items()},
        dimension=dimension,
        filters={k: v for k, v in filters.items() if v},
    )


# -------------------------------------------------------- engines, audit ----


def replica_latency(records: list[schema.UsageRecord]) -> dict[tuple[str, str], dict[str, Any]]:
    """Recent latency per (model, replica), from the ledger's records (the router keeps none).

    The median and the slowest of the completed requests among the latest
    records, and the median time to first token of the streamed ones.
    """
    seen: dict[tuple[str, str], list[float]] = defaultdict(list)
    ttft: dict[tuple[str, str], list[float]] = defaultdict(list)
    for record in records:
        if not record.replica or record.outcome != "completed":
            continue
        where = (record.model, record.replica)
        seen[where].append(float(record.latency_ms))
        if record.stream and float(record.ttft_ms) > 0:
            ttft[where].append(float(record.ttft_ms))
    return {
        where: {
            "count": len(values),
            "p50_ms": median(values),
            "max_ms": max(values),
            "ttft_p50_ms": median(ttft[where]) if ttft[where] else None,
        }
        for where, values in seen.items()
    }


async def engines(p: Page) -> Response:
    """The catalog's models and each replica's live health, with recent latency."""
    models = await p.run(api.list_models, schema.ModelList)
    try:
        records = await p.run(
            api.usage_records, schema.RecordPage, query=schema.RecordsQuery(since="1h", limit=1000)
        )
    except ApiError:  # the ledger is off or down: the router's live state still shows
        return p.render("engines.html", models=models.data, latency={}, window="")
    return p.render(
        "engines.html", models=models.data, latency=replica_latency(records.data), window="1 h"
    )


async def audit(p: Page) -> Response:
    events = await p.run(api.audit_log, schema.AuditPage, query=schema.AuditQuery(limit=200))
    return p.render("audit.html", events=events.data)


ROUTES = [
    Route("/keys", page(keys), methods=["GET"]),
    Route("/keys", page(create_key), methods=["POST"]),
    Route("/keys/{key_id}", page(edit_key), methods=["GET"]),
    Route("/keys/{key_id}", page(update_key), methods=["POST"]),
    Route("/keys/{key_id}/revoke", page(confirm_revoke), methods=["GET"]),
    Route("/keys/{key_id}/revoke", page(revoke_key), methods=["POST"]),
    Route("/tenants", page(tenants), methods=["GET"]),
    Route("/tenants", page(create_tenant), methods=["POST"]),
    Route("/tenants/{tenant_id}", page(edit_tenant), methods=["GET"]),
    Route("/tenants/{tenant_id}", page(update_tenant), methods=["POST"]),
    Route("/usage", page(usage), methods=["GET"]),
    Route("/engines", page(engines), methods=["GET"]),
    Route("/audit", page(audit), methods=["GET"]),
]
