"""Response headers: request ids and OpenAI's `x-ratelimit-*` formats."""

from __future__ import annotations

import re
import secrets

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshgate.pricing import micro_text
from meshgate.v1 import common_pb2

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
SCOPE_KEY = "meshgate.request_id"


def new_request_id() -> str:
    return "req_" + secrets.token_hex(16)


def request_id_of(request: Request) -> str:
    """This request's id (RequestIds): the caller's `x-request-id` if it is sane, else a new one."""
    return str(request.scope[SCOPE_KEY])


class RequestIds:
    """Every HTTP response carries `x-request-id`: the one place it is set.

    Outermost middleware, so the id is in the scope before any handler or other
    middleware runs, and on every answer they give (431s, CORS refusals, 404s).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        rid = incoming if _CLIENT_ID.match(incoming) else new_request_id()
        scope[SCOPE_KEY] = rid
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


def go_duration(ms: int) -> str:
    """Milliseconds as a Go duration string, as OpenAI sends them: `12ms`, `1s`, `6m0s`, `1h2m3.5s`."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{seconds}s"


def rate_limit_headers(state: common_pb2.RateLimitState) -> dict[str, str]:
    """OpenAI's six `x-ratelimit-*` headers, and meshgate's three for a dollar budget
    (`x-ratelimit-limit-budget-usd`, `-remaining-budget-usd`, `-reset-budget`, this
    last only for a daily or monthly budget); empty for an unlimited key."""
    headers: dict[str, str] = {}
    if state.limit_budget_micro_usd:
        remaining = max(state.remaining_budget_micro_usd, 0)
        headers["x-ratelimit-limit-budget-usd"] = micro_text(state.limit_budget_micro_usd)
        headers["x-ratelimit-remaining-budget-usd"] = micro_text(remaining)
        if state.reset_budget_ms:
            headers["x-ratelimit-reset-budget"] = go_duration(state.reset_budget_ms)
    if state.limit_requests:
        headers["x-ratelimit-limit-requests"] = str(state.limit_requests)
        headers["x-ratelimit-remaining-requests"] = str(max(state.remaining_requests, 0))
        headers["x-ratelimit-reset-requests"] = go_duration(state.reset_requests_ms)
    if state.limit_tokens:
        headers["x-ratelimit-limit-tokens"] = str(state.limit_tokens)
        headers["x-ratelimit-remaining-tokens"] = str(max(state.remaining_tokens, 0))
        headers["x-ratelimit-reset-tokens"] = go_duration(state.reset_tokens_ms)
    return headers
