"""`meshgate keys|tenants|usage` as clients of a running mesh's admin API.

Which mesh (`target`): `--url` with an admin key (`--admin-key` or
`MESHGATE_ADMIN_KEY`) names a remote one; otherwise a local `meshgate up`
found through its runtime file (meshgate/runtime.py), unless `REDIS_URL` (or
`redis.url`) names a key store other than that mesh's. With no mesh, the CLI
acts on the key store directly (services/auth/admin.py): first setup, scripts
and CI, before any admin key exists.

Going through the admin API means a change is made by auth like every other
change, and lands in the audit log under the admin key that made it. The
answers are turned into the same rows the direct commands print, so a
command's output does not depend on the path it took.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TextIO

from meshgate import runtime
from meshgate.config import ADMIN_KEY_ENV, CONFIG_ENV, Config, config_file
from meshgate.pricing import micro_text, to_micro_usd
from meshgate.v1 import usage_pb2
from services.auth.admin import (
    AdminError,
    Format,
    describe,
    parse_expires,
    update_expiry,
    write_keys,
    write_tenants,
)
from services.auth.keys import LimitsChange
from services.ledger import report
from services.ledger.store import to_datetime

PREFIX = "/admin/v1"
TIMEOUT_S = 30.0
# The most records one admin API page holds (admin/schema.py RecordsQuery.limit).
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class AdminClient:
    """The admin API of one mesh, called with one admin key."""

    url: str
    admin_key: str

    def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
    ) -> Any:
        """One request; AdminError carries the envelope's message (or why none came back)."""
        address = self.url.rstrip("/") + PREFIX + path
        given = {k: v for k, v in (query or {}).items() if v not in (None, "")}
        if given:
            address += "?" + urllib.parse.urlencode(given)
        request = urllib.request.Request(
            address,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={
                "Authorization": f"Bearer {self.admin_key}",
                "Content-Type": "application/json",
                "User-Agent": "meshgate-cli",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise AdminError(_envelope_message(exc)) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(f"cannot reach the admin API at {self.url}: {reason}") from None


def _envelope_message(exc: urllib.error.HTTPError) -> str:
    try:
        error = json.loads(exc.read())["error"]
    except (ValueError, KeyError, TypeError, OSError):
        return f"the admin API answered {exc.code}"
    where = f" ({error['param']})" if error.get("param") else ""
    return f"{error.get('message', 'error')}{where} [{exc.code}]"


def target(
    config: Config,
    *,
    url: str | None,
    admin_key: str | None,
    config_path: str | None,
    environ: Mapping[str, str],
) -> AdminClient | None:
    """The admin API to use, or None to act directly (on Redis, or on the ledger's gRPC).

    A local mesh is taken only if it is the one the command points at: started
    from the same `--config` when one is given, and on the same key store when
    REDIS_URL (or redis.url) names one. Anything else means the user aims elsewhere.
    """
    key = admin_key or environ.get(ADMIN_KEY_ENV, "")
    if url:
        if not key:
            raise AdminError("--url needs an admin key: --admin-key or MESHGATE_ADMIN_KEY")
        return AdminClient(url, key)
    meshes = [m for m in runtime.running(environ) if m.admin_url and m.admin_key]
    if config_path is not None or environ.get(CONFIG_ENV):
        chosen = str(config_file(config_path, environ).resolve())
        meshes = [m for m in meshes if m.config == chosen]
    if config.redis.configured:
        meshes = [m for m in meshes if m.redis_url == config.redis.url]
    if not meshes:
        return None
    if len(meshes) > 1:
        names = ", ".join(m.admin_url for m in meshes)
        raise AdminError(f"{len(meshes)} local meshes are running ({names}): pick one with --url")
    mesh = meshes[0]
    return AdminClient(mesh.admin_url, key or mesh.admin_key)


# ----------------------------------------------------------------- keys ----


def _time(text: str | None) -> str | None:
    """The admin API's ISO time as the direct commands print it (seconds, Z)."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dollars(text: str | None) -> str | None:
    return None if text is None else micro_text(to_micro_usd(Decimal(text)))


def _budget(item: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "budget_usd": _dollars(item["budget_usd"]),
        "budget_period": item["budget_period"],
        "spent_usd": _dollars(item["spent_usd"]),
        "remaining_usd": _dollars(item["remaining_usd"]),
    }


def _limits(item: Mapping[str, Any]) -> dict[str, int]:
    return {name: item[name] for name in ("rpm", "tpm", "max_concurrency", "budget_tokens")}


def key_row(item: Mapping[str, Any]) -> dict[str, Any]:
    """An admin API key as `meshgate keys list --format json` prints one."""
    return {
        "key_id": item["id"],
        "name": item["name"],
        "tenant": item["tenant"],
        "status": item["status"],
        **_limits(item),
        **_budget(item),
        "models": item["models"],
        "redis_failure_policy": item["redis_failure_policy"],
        "roles": item["roles"],
        "expires_at": _time(item["expires_at"]),
        "created_at": _time(item["created_at"]),
    }


def tenant_row(item: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": item["id"],
        "source": item["source"],
        **_limits(item),
        **_budget(item),
        "created_at": _time(item["created_at"]),
    }


def _limits_body(change: LimitsChange) -> dict[str, Any]:
    """The limits a command changes, as the admin API takes them (dollars as exact strings)."""
    return {
        name: str(value) if isinstance(value, Decimal) else value
        for name, value in asdict(change).items()
        if value is not None
    }


def _iso(unix: float) -> str | None:
    """An expiry as the admin API takes it (null: none)."""
    return datetime.fromtimestamp(unix, UTC).isoformat() if unix else None


def create_key(
    client: AdminClient,
    *,
    name: str,
    tenant: str,
    change: LimitsChange,
    models: Sequence[str],
    expires: str | None,
    redis_failure_policy: str,
    roles: Sequence[str],
    fallbacks: Mapping[str, Sequence[str]] | None = None,
    out: TextIO = sys.stdout,
) -> None:
    body: dict[str, Any] = {
        "name": name,
        "tenant": tenant,
        **_limits_body(change),
        "models": list(models),
        "fallbacks": {model: list(chain) for model, chain in (fallbacks or {}).items()},
        "redis_failure_policy": redis_failure_policy,
        "roles": list(roles),
    }
    if expires:
        body["expires_at"] = _iso(parse_expires(expires))
    created = client.call("POST", "/keys", body)
    out.write(f"{created['secret']}\n")
    out.flush()
    sys.stderr.write(f"created {created['id']} ({name}); the key above is shown only once\n")


def update_key(
    client: AdminClient,
    key_id: str,
    change: LimitsChange,
    *,
    models: Sequence[str] | None,
    expires: str | None,
    fallbacks: Mapping[str, Sequence[str]] | None = None,
    out: TextIO = sys.stdout,
) -> None:
    body = _limits_body(change)
    expires_at = None if expires is None else update_expiry(expires)
    if models is not None:
        body["models"] = list(models)
    if fallbacks is not None:
        body["fallbacks"] = {model: list(chain) for model, chain in fallbacks.items()}
    if expires_at is not None:
        body["expires_at"] = _iso(expires_at)
    if not body:
        raise AdminError(
            "nothing to update: give at least one limit, --models, --fallbacks or --expires"
        )
    key = client.call("PATCH", f"/keys/{urllib.parse.quote(key_id, safe='')}", body)
    described = describe(change, models, expires_at, fallbacks)
    out.write(f"updated {key['id']} ({key['name']}): {described}\n")


def list_keys(client: AdminClient, fmt: Format = "table", out: TextIO = sys.stdout) -> None:
    write_keys([key_row(item) for item in client.call("GET", "/keys")["data"]], fmt, out)


def revoke(client: AdminClient, key_id: str, out: TextIO = sys.stdout) -> None:
    key = client.call("DELETE", f"/keys/{urllib.parse.quote(key_id, safe='')}")
    out.write(f"revoked {key['id']} ({key['name']})\n")


# -------------------------------------------------------------- tenants ----


def create_tenant(
    client: AdminClient, tenant_id: str, change: LimitsChange, out: TextIO = sys.stdout
) -> None:
    tenant = client.call("POST", "/tenants", {"id": tenant_id, **_limits_body(change)})
    out.write(f"created tenant {tenant['id']}\n")


def update_tenant(
    client: AdminClient, tenant_id: str, change: LimitsChange, out: TextIO = sys.stdout
) -> None:
    body = _limits_body(change)
    if not body:
        raise AdminError("nothing to update: give at least one limit")
    tenant = client.call("PATCH", f"/tenants/{urllib.parse.quote(tenant_id, safe='')}", body)
    out.write(f"updated tenant {tenant['id']}: {describe(change)}\n")


def list_tenants(client: AdminClient, fmt: Format = "table", out: TextIO = sys.stdout) -> None:
    write_tenants([tenant_row(item) for item in client.call("GET", "/tenants")["data"]], fmt, out)


# ---------------------------------------------------------------- usage ----

_DECIMALS = ("cost_usd", "reserved_usd", "latency_ms", "ttft_ms")


def _decimals(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: Decimal(v) if k in _DECIMALS and isinstance(v, str) else v for k, v in row.items()}


def _iso_us(unix_us: int) -> str | None:
    if not unix_us:
        return None
    return to_datetime(unix_us).isoformat().replace("+00:00", "Z")


def usage(client: AdminClient, query: report.Query, out: TextIO = sys.stdout) -> None:
    """`meshgate usage` through the admin API: the same rows, rendered by report.render."""
    flt = query.flt
    common = {
        "key_id": flt.key_id,
        "tenant": flt.tenant,
        "model": flt.model,
        "since": _iso_us(flt.since_unix_us),
        "until": _iso_us(flt.until_unix_us),
    }
    rows: list[dict[str, Any]] = []
    if query.records:
        order = list(report.record_fields(usage_pb2.UsageRecord()))
        token = ""
        while len(rows) < query.limit:
            page = client.call(
                "GET",
                "/usage/records",
                query={
                    **common,
                    "limit": min(query.limit - len(rows), MAX_PAGE),
                    "page_token": token,
                },
            )
            rows += [{k: _decimals(r)[k] for k in order} for r in page["data"]]
            token = page.get("next_page_token") or ""
            if not token:
                break
    else:
        grouping = [*query.group_by, *([query.bucket] if query.bucket != "none" else [])]
        summary = client.call("GET", "/usage", query={**common, "group_by": ",".join(grouping)})
        rows = [_summary_row(r, query) for r in summary["data"]]
    out.write(report.render(rows[: query.limit] if query.records else rows, query) + "\n")


def _summary_row(row: Mapping[str, Any], query: report.Query) -> dict[str, Any]:
    """Only the columns the query asked for, in the direct command's order."""
    item: dict[str, Any] = {}
    if query.bucket != "none":
        item[query.bucket] = row[query.bucket].replace("+00:00", "Z")
    for dim in query.group_by:
        column = report.COLUMN[dim]
        item[column] = row[column]
    for name in ("requests", "prompt_tokens", "completion_tokens", "cached_tokens"):
        item[name] = row[name]
    item["cost_usd"] = Decimal(row["cost_usd"])
    item["errors"] = row["errors"]
    return item
