"""The admin API's JSON shapes, defined once: they check requests and write the OpenAPI document.

Request models forbid unknown fields and take integers strictly (no `"10"` for
10, no `true` for 1), so a typo is a 400 naming the field, never a silent
default. Dollars are exact: decimal strings in answers (`"12.50"`), a string or
a number with at most six decimal places in requests. Times are ISO 8601 UTC.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from meshgate.config import BudgetPeriod, RoleName

Count = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]
Dollars = Annotated[Decimal, Field(ge=0, decimal_places=6, max_digits=19)]
Policy = Literal["fail_closed", "fail_open"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True)


# ------------------------------------------------------------- requests ----


class LimitsFields(_Request):
    """Limits shared by keys and tenants; 0 means unlimited."""

    rpm: Count = Field(default=0, description="Requests per minute.")
    tpm: Count = Field(default=0, description="Tokens (prompt plus completion) per minute.")
    max_concurrency: Count = Field(default=0, description="Requests in flight at once.")
    budget_tokens: Count = Field(default=0, description="Lifetime token budget.")
    budget_usd: Dollars = Field(
        default=Decimal(0), description="Dollar budget per budget_period, exact to 6 places."
    )
    budget_period: BudgetPeriod = Field(
        default="total", description="What budget_usd covers: in total, or per UTC day or month."
    )


class CreateKey(LimitsFields):
    """A key to make; the answer carries its secret, this once."""

    name: str = Field(min_length=1, max_length=200, description="A label for people.")
    tenant: str = Field(default="", description="An existing tenant whose limits it shares.")
    models: list[str] = Field(default=[], description="Model ids it may use; empty: all.")
    expires_at: datetime | None = Field(default=None, description="When it stops working.")
    redis_failure_policy: Policy = "fail_closed"
    roles: list[RoleName] = Field(
        default=["api"], min_length=1, description="api (the inference API), admin, or both."
    )


class UpdateLimits(_Request):
    """Limits to change; a field left out is unchanged."""

    rpm: Count | None = None
    tpm: Count | None = None
    max_concurrency: Count | None = None
    budget_tokens: Count | None = None
    budget_usd: Dollars | None = None
    budget_period: BudgetPeriod | None = None


class UpdateKey(UpdateLimits):
    """What to change in a key; the secret stays the same."""

    models: list[str] | None = Field(default=None, description="Replaces the list; [] allows all.")
    expires_at: datetime | None = Field(default=None, description="A new expiry; null lifts it.")
    roles: list[RoleName] | None = Field(default=None, min_length=1)


class CreateTenant(LimitsFields):
    """A tenant to make in the key store."""

    id: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Its id."
    )


class UpdateTenant(UpdateLimits):
    """Limits to change in a key-store tenant."""


class UsageQuery(_Request):
    """Which usage to summarize, and how."""

    key_id: str = ""
    tenant: str = ""
    model: str = ""
    since: str | None = Field(default=None, description="ISO date/time, or a duration ago: 24h.")
    until: str | None = Field(default=None, description="Exclusive; the same forms as since.")
    group_by: str = Field(
        default="key,model", description="Any of key,tenant,model and one of hour,day."
    )
    format: Literal["json", "csv"] = "json"


class RecordsQuery(_Request):
    """Which raw usage records to list."""

    key_id: str = ""
    tenant: str = ""
    model: str = ""
    since: str | None = None
    until: str | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    page_token: str = ""
    format: Literal["json", "csv"] = "json"


class AuditQuery(_Request):
    """Which audit events to list."""

    target: str = Field(default="", description="Only events about this key or tenant id.")
    actor_key_id: str = Field(default="", description="Only events by this admin key.")
    limit: int = Field(default=100, ge=1, le=1000)
    page_token: str = ""


# -------------------------------------------------------------- answers ----


class Key(_Answer):
    """A key, never its secret."""

    id: str
    object: Literal["key"] = "key"
    name: str
    tenant: str | None
    status: Literal["active", "expired", "revoked"]
    rpm: int
    tpm: int
    max_concurrency: int
    budget_tokens: int
    budget_usd: str
    budget_period: BudgetPeriod
    spent_usd: str = Field(description="Counted against budget_usd in its current period.")
    remaining_usd: str | None = Field(description="null without a dollar budget.")
    models: list[str]
    roles: list[RoleName]
    redis_failure_policy: Policy
    created_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class CreatedKey(Key):
    """A new key and its secret: the only time the secret is shown."""

    secret: str


class RotatedKey(CreatedKey):
    """The new key (with its secret) that replaces a revoked one."""

    revoked_key_id: str


class Tenant(_Answer):
    id: str
    object: Literal["tenant"] = "tenant"
    source: Literal["config", "redis"]
    rpm: int
    tpm: int
    max_concurrency: int
    budget_tokens: int
    budget_usd: str
    budget_period: BudgetPeriod
    spent_usd: str
    remaining_usd: str | None
    created_at: datetime | None


class UsageRow(_Answer):
    """Totals of one group (and hour or day); the dimensions not grouped by are null."""

    model_config = ConfigDict(frozen=True, extra="allow")

    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: str
    errors: int
    key_id: str | None = None
    tenant: str | None = None
    model: str | None = None
    hour: datetime | None = None
    day: datetime | None = None


class UsageRecord(_Answer):
    id: str
    request_id: str
    started_at: str
    ended_at: str
    key_id: str
    tenant: str
    model: str
    endpoint: str
    stream: bool
    outcome: str
    status: int
    error_code: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: str
    reserved_tokens: int
    reserved_usd: str
    replica: str
    latency_ms: str
    ttft_ms: str


class EngineSignals(_Answer):
    """The engine's own load as the router last read it (vLLM, SGLang, llama.cpp)."""

    # "none" (no signal source: balanced by outstanding), "fresh", "stale" or "missing"
    # (the last two count as saturated).
    state: Literal["unknown", "none", "fresh", "stale", "missing"]
    kind: str
    waiting: float
    running: float
    kv_cache_usage: float | None
    slots: int
    busy_slots: int
    age_seconds: float | None
    error: str


class Replica(_Answer):
    target: str
    healthy: bool
    outstanding: int
    failed_checks: int
    ejections: int
    weight: int
    max_concurrency: int
    signals: EngineSignals
    # The balancer's last score of it (higher is better).
    score: float


class ModelHealth(_Answer):
    id: str
    object: Literal["model"] = "model"
    category: str
    capabilities: list[str]
    context_length: int
    serving: bool
    replicas: list[Replica]
    # How this router replica chose among them: reason -> count.
    decisions: dict[str, int]


class AuditEvent(_Answer):
    id: str
    object: Literal["audit_event"] = "audit_event"
    time: datetime
    actor_key_id: str
    actor_name: str
    source: str
    action: str
    target: str
    details: dict[str, Any]
    request_id: str


class KeyList(_Answer):
    object: Literal["list"] = "list"
    data: list[Key]


class TenantList(_Answer):
    object: Literal["list"] = "list"
    data: list[Tenant]


class UsageSummary(_Answer):
    object: Literal["list"] = "list"
    data: list[UsageRow]


class RecordPage(_Answer):
    object: Literal["list"] = "list"
    data: list[UsageRecord]
    next_page_token: str | None


class ModelList(_Answer):
    object: Literal["list"] = "list"
    data: list[ModelHealth]


class AuditPage(_Answer):
    object: Literal["list"] = "list"
    data: list[AuditEvent]
    next_page_token: str | None


class ErrorBody(_Answer):
    message: str
    type: str
    param: str | None
    code: str | None
    doc_url: str | None = None


class ErrorEnvelope(_Answer):
    """Every admin API error: OpenAI's envelope."""

    error: ErrorBody
