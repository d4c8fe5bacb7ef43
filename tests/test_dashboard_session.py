"""The dashboard's session, throttle and page data, without a mesh.

The cookie is sealed (a forged, altered, foreign or expired one opens to
nothing), its flags are HttpOnly and SameSite=Strict always and Secure under
TLS; the sign-in throttle refuses a client after N failures until its window
ends; the usage charts and the engines' latency are computed from the API's rows.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response

from admin import schema
from admin.dashboard import Dashboard
from admin.forms import Form, build, limits
from admin.pages import replica_latency, usage_chart, usage_totals
from admin.session import (
    COOKIE,
    Created,
    Sealer,
    cookie_header,
    new_session,
    served_over_tls,
)
from admin.throttle import SigninThrottle
from meshgate.config import Config
from meshgate.errors import ApiError


def cookie_attributes(header: str) -> tuple[str, dict[str, str]]:
    first, *rest = [part.strip() for part in header.split(";")]
    attributes = {}
    for part in rest:
        name, _, value = part.partition("=")
        attributes[name.lower()] = value
    return first, attributes


# ---------------------------------------------------------------- sealing ----


def test_a_sealed_session_opens_to_the_same_secret_token_and_expiry() -> None:
    sealer = Sealer("shared secret")
    session = new_session("sk-mg-admin", 3600)
    opened = sealer.open(sealer.seal(session))
    assert opened == session
    assert opened is not None and opened.signed_in


def test_the_cookie_value_does_not_show_the_secret() -> None:
    sealer = Sealer("shared secret")
    value = sealer.seal(new_session("sk-mg-visible-secret", 3600))
    assert "sk-mg" not in value
    assert "visible" not in value


def test_replicas_sharing_session_secret_open_each_others_sessions() -> None:
    value = Sealer("shared").seal(new_session("sk-mg-admin", 3600))
    assert Sealer("shared").open(value) is not None


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda v: v[:-2] + ("A" if v[-2] != "A" else "B") + v[-1], id="one-char"),
        pytest.param(lambda v: v[:20], id="truncated"),
        pytest.param(lambda v: "", id="empty"),
        pytest.param(lambda v: "not base64 !!", id="garbage"),
        pytest.param(lambda v: Sealer("other").seal(new_session("sk-mg-x", 60)), id="foreign"),
    ],
)
def test_a_damaged_or_foreign_cookie_opens_to_nothing(damage: Any) -> None:
    sealer = Sealer("shared")
    assert sealer.open(damage(sealer.seal(new_session("sk-mg-admin", 3600)))) is None


def test_an_expired_session_opens_to_nothing() -> None:
    sealer = Sealer("shared")
    value = sealer.seal(new_session("sk-mg-admin", 60, now=1_000_000))
    assert sealer.open(value, now=1_000_059) is not None
    assert sealer.open(value, now=1_000_060) is None


def test_without_session_secret_each_process_draws_its_own_key() -> None:
    value = Sealer("").seal(new_session("sk-mg-admin", 60))
    assert Sealer("").open(value) is None


def test_a_new_keys_secret_crosses_the_redirect_sealed_and_only_as_that() -> None:
    sealer = Sealer("shared")
    value = sealer.seal_created(Created("key_1", "team", "sk-mg-new"))
    assert "sk-mg" not in value
    assert sealer.open_created(value) == Created("key_1", "team", "sk-mg-new")
    assert sealer.open(value) is None  # not a session
    assert sealer.open_created(sealer.seal(new_session("sk-mg-admin", 60))) is None
    assert sealer.open_created(value, now=time.time() + 121) is None


def test_the_csrf_token_is_compared_exactly_and_never_matches_empty() -> None:
    session = new_session("", 60)
    assert session.csrf_matches(session.csrf)
    assert not session.csrf_matches("")
    assert not session.csrf_matches(session.csrf[:-1])
    assert not new_session("", 60).csrf_matches(session.csrf)


# ---------------------------------------------------------------- cookies ----


@pytest.mark.parametrize("secure", [False, True])
def test_the_cookie_is_httponly_and_samesite_strict_and_secure_only_under_tls(
    secure: bool,
) -> None:
    first, attributes = cookie_attributes(cookie_header("v", 3600, secure=secure))
    assert first == f"{COOKIE}=v"
    assert "httponly" in attributes
    assert attributes["samesite"] == "Strict"
    assert attributes["path"] == "/"
    assert attributes["max-age"] == "3600"
    assert ("secure" in attributes) is secure


@pytest.mark.parametrize(
    ("scheme", "public_url", "tls"),
    [
        ("http", "", False),
        ("https", "", True),
        ("http", "https://admin.example.com", True),
        ("http", "http://admin.example.com", False),
    ],
)
def test_tls_is_the_request_scheme_or_an_https_public_url(
    scheme: str, public_url: str, tls: bool
) -> None:
    assert served_over_tls(scheme, public_url) is tls


def _request(scheme: str) -> Request:
    scope = {
        "type": "http",
        "scheme": scheme,
        "method": "GET",
        "path": "/keys",
        "query_string": b"",
        "headers": [(b"host", b"admin.example.com")],
        "server": ("admin.example.com", 443 if scheme == "https" else 80),
    }
    return Request(scope)


@pytest.mark.parametrize(
    ("scheme", "public_url", "secure"),
    [("http", "", False), ("https", "", True), ("http", "https://admin.example.com/", True)],
)
def test_the_dashboard_sets_secure_cookies_when_served_over_tls(
    scheme: str, public_url: str, secure: bool
) -> None:
    config = Config.model_validate({"admin": {"public_url": public_url, "session_secret": "s"}})
    dash = Dashboard(config)
    response = Response()
    dash.set_session(response, _request(scheme), new_session("sk-mg-admin", 600))
    first, attributes = cookie_attributes(response.headers["set-cookie"])
    assert first.startswith(COOKIE + "=")
    assert "httponly" in attributes and attributes["samesite"] == "Strict"
    assert ("secure" in attributes) is secure
    assert 590 <= int(attributes["max-age"]) <= 600
    dropped = Response()
    dash.drop_session(dropped, _request(scheme))
    first, attributes = cookie_attributes(dropped.headers["set-cookie"])
    assert first == COOKIE + "=" and attributes["max-age"] == "0"
    assert ("secure" in attributes) is secure


# --------------------------------------------------------------- throttle ----


def test_the_throttle_refuses_after_n_failures_until_the_window_ends() -> None:
    throttle = SigninThrottle(attempts=3, window_s=60)
    for _ in range(3):
        assert throttle.retry_after("10.0.0.1", now=100.0) == 0
        throttle.failed("10.0.0.1", now=100.0)
    assert throttle.retry_after("10.0.0.1", now=100.0) == 60
    assert throttle.retry_after("10.0.0.1", now=159.5) == 1
    assert throttle.retry_after("10.0.0.2", now=120.0) == 0  # another address is not held back
    assert throttle.retry_after("10.0.0.1", now=160.0) == 0  # a new window
    throttle.failed("10.0.0.1", now=160.0)
    assert throttle.retry_after("10.0.0.1", now=160.0) == 0


def test_the_throttle_forgets_ended_windows_when_it_is_full() -> None:
    throttle = SigninThrottle(attempts=1, window_s=10)
    for i in range(10_000):
        throttle.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", now=0.0)
    throttle.failed("192.0.2.1", now=20.0)
    assert throttle.retry_after("192.0.2.1", now=20.0) == 10
    assert throttle.retry_after("10.0.0.0", now=20.0) == 0


# ------------------------------------------------------------------ forms ----


def test_a_form_becomes_the_admin_apis_model_with_empty_limits_unlimited() -> None:
    form = Form(
        {
            "name": ["  team  "],
            "rpm": ["1,000"],
            "tpm": [""],
            "budget_usd": ["$12.50"],
            "budget_period": ["month"],
        }
    )
    body = build(schema.CreateKey, {"name": form.get("name"), **limits(form)})
    assert body.name == "team"
    assert (body.rpm, body.tpm, body.max_concurrency) == (1000, 0, 0)
    assert str(body.budget_usd) == "12.50" and body.budget_period == "month"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"rpm": ["ten"]}, "rpm"),
        ({"max_concurrency": ["-1"]}, "max_concurrency"),
        ({"budget_usd": ["1.0000001"]}, "budget_usd"),
        ({"budget_period": ["week"]}, "budget_period"),
    ],
)
def test_a_bad_form_field_is_a_400_naming_it(fields: dict[str, list[str]], param: str) -> None:
    form = Form({"name": ["k"], **fields})
    with pytest.raises(ApiError) as caught:
        build(schema.CreateKey, {"name": form.get("name"), **limits(form)})
    assert caught.value.status == 400
    assert caught.value.param == param


# ------------------------------------------------------------- page data ----


def _row(**fields: Any) -> schema.UsageRow:
    base = {
        "requests": 1,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached_tokens": 0,
        "cost_usd": "0.001",
        "errors": 0,
    }
    return schema.UsageRow.model_validate(base | fields)


def test_the_usage_chart_puts_each_groups_spend_and_tokens_in_its_bucket() -> None:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    buckets = [start + timedelta(hours=i) for i in range(3)]
    rows = [
        _row(key_id="key_a", hour=buckets[0], cost_usd="0.25"),
        _row(key_id="key_a", hour=buckets[2], cost_usd="0.50", prompt_tokens=100),
        _row(key_id="key_b", hour=buckets[1], cost_usd="1.00"),
        _row(key_id="key_c", hour=start - timedelta(days=1)),  # outside the range: left out
    ]
    chart = usage_chart(rows, "key", "hour", buckets, {"key_a": "alpha"})
    assert chart["x"] == [int(b.timestamp()) for b in buckets]
    assert [s["label"] for s in chart["series"]] == ["key_b", "alpha"]  # most spend first
    alpha = chart["series"][1]
    assert alpha["spend"] == [0.25, 0.0, 0.5]
    assert alpha["tokens"] == [15, 0, 105]
    totals = usage_totals(rows, "key", {"key_a": "alpha"})
    assert [(t["label"], t["cost_usd"], t["requests"]) for t in totals] == [
        ("key_b", "1", 1),
        ("alpha", "0.75", 2),
        ("key_c", "0.001", 1),
    ]


def test_the_usage_chart_sums_groups_past_the_eighth_as_other() -> None:
    bucket = datetime(2026, 12, 1, tzinfo=UTC)
    rows = [_row(model=f"m{i}", day=bucket, cost_usd=str(i + 1)) for i in range(10)]
    chart = usage_chart(rows, "model", "day", [bucket], {})
    assert len(chart["series"]) == 9
    assert chart["series"][0]["label"] == "m9"
    assert chart["series"][-1] == {"label": "other (2)", "spend": [3.0], "tokens": [30]}


def test_engine_latency_is_per_model_and_replica_from_completed_requests() -> None:
    def record(model: str, replica: str, latency: str, **fields: Any) -> schema.UsageRecord:
        base = dict.fromkeys(schema.UsageRecord.model_fields, "")
        base |= {
            "stream": False,
            "status": 200,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cached_tokens": 0,
            "reserved_tokens": 0,
            "outcome": "completed",
            "ttft_ms": "0",
        }
        return schema.UsageRecord.model_validate(
            base | {"model": model, "replica": replica, "latency_ms": latency} | fields
        )

    records = [
        record("pro", "r1", "10"),
        record("pro", "r1", "30"),
        record("pro", "r1", "20", stream=True, ttft_ms="4"),
        record("pro", "r1", "999", outcome="failed"),
        record("mini", "r1", "5"),
        record("pro", "", "7"),
    ]
    latency = replica_latency(records)
    assert set(latency) == {("pro", "r1"), ("mini", "r1")}
    assert latency["pro", "r1"] == {"count": 3, "p50_ms": 20.0, "max_ms": 30.0, "ttft_p50_ms": 4.0}
    assert latency["mini", "r1"]["ttft_p50_ms"] is None
