"""The dashboard's frame: sign-in, sessions, CSRF, rendering and security headers.

Every page is a plain function of a `Page` (admin/pages.py). `page()` wraps it:
it opens the session cookie (admin/session.py), has auth check the admin key
in it (so a revoked key is out at once), checks the CSRF token of every POST,
and turns an ApiError into a readable page. The pages then call the admin
API's own handlers in-process (admin/api.py) with an `api.Call`: the same
checks, gRPC calls and audit events as `/admin/v1`, never a loopback request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import jinja2
from pydantic import BaseModel
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from admin import api
from admin.forms import Form, read_form
from admin.mesh import AdminMesh
from admin.session import (
    COOKIE,
    CREATED_COOKIE,
    CREATED_TTL_S,
    SIGNIN_TTL_S,
    Created,
    Sealer,
    Session,
    cookie_header,
    new_session,
    served_over_tls,
)
from admin.throttle import SigninThrottle
from edge.headers import request_id_of
from meshgate import logs
from meshgate.config import Config
from meshgate.errors import ApiError
from meshgate.v1 import common_pb2

log = logging.getLogger("meshgate.admin")

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
M = TypeVar("M", bound=BaseModel)

# Every dashboard page and asset: scripts and styles from this listener only (no inline
# script, no CDN), no framing, no referrer leaking key ids to other sites.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cross-origin-opener-policy": "same-origin",
}


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every answer outside the JSON API (pages, assets, redirects)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(api.PREFIX):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in have:
                        headers.append((name.encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def _when(value: datetime | str | None, seconds: bool = False) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M UTC")


def _usd(value: str | None) -> str:
    if value is None:
        return "—"
    return "$" + value


def _limit(value: int) -> str:
    return f"{value:,}" if value else "∞"


class Dashboard:
    """What the pages share for the life of the process: templates, the sealer, the throttle."""

    def __init__(self, config: Config) -> None:
        admin = config.admin
        self.public_url = admin.public_url
        self.session_ttl_s = admin.session_ttl_s
        self.max_body_bytes = admin.max_body_bytes
        self.sealer = Sealer(admin.session_secret)
        self.throttle = SigninThrottle(admin.signin_attempts, admin.signin_window_s)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,  # every value, a key's name included, is text, never markup
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters |= {"when": _when, "usd": _usd, "limit": _limit}

    def secure(self, request: Request) -> bool:
        return served_over_tls(request.url.scheme, self.public_url)

    def session_of(self, request: Request) -> Session | None:
        value = request.cookies.get(COOKIE, "")
        return self.sealer.open(value) if value else None

    def set_session(self, response: Response, request: Request, session: Session) -> None:
        max_age = max(session.expires - int(time.time()), 1)
        response.headers.append(
            "set-cookie",
            cookie_header(self.sealer.seal(session), max_age, secure=self.secure(request)),
        )

    def drop_session(self, response: Response, request: Request) -> None:
        response.headers.append("set-cookie", cookie_header("", 0, secure=self.secure(request)))

    def hand_over(self, response: Response, request: Request, created: Created) -> None:
        """Carry a new key's secret across the redirect to the page that shows it."""
        value = self.sealer.seal_created(created)
        response.headers.append(
            "set-cookie",
            cookie_header(value, CREATED_TTL_S, secure=self.secure(request), name=CREATED_COOKIE),
        )

    def created_of(self, request: Request) -> Created | None:
        """The new key handed over to this page, if any (forget_created must follow)."""
        value = request.cookies.get(CREATED_COOKIE, "")
        return self.sealer.open_created(value) if value else None

    def forget_created(self, response: Response, request: Request) -> None:
        response.headers.append(
            "set-cookie", cookie_header("", 0, secure=self.secure(request), name=CREATED_COOKIE)
        )

    def render(
        self,
        request: Request,
        template: str,
        status: int = 200,
        session: Session | None = None,
        **context: Any,
    ) -> Response:
        html = self.templates.get_template(template).render(
            path=request.url.path,
            csrf=session.csrf if session else "",
            signed_in=bool(session and session.signed_in),
            **context,
        )
        return Response(
            html,
            status_code=status,
            media_type="text/html; charset=utf-8",
            headers={"cache-control": "no-store"},
        )


def dashboard_of(request: Request) -> Dashboard:
    dash: Dashboard = request.app.state.dashboard
    return dash


@dataclass(frozen=True, slots=True)
class Page:
    """One signed-in page request: the session, the admin it authenticated as, the form."""

    request: Request
    dash: Dashboard
    mesh: AdminMesh
    session: Session
    admin: common_pb2.Principal
    rid: str
    deadline: float
    form: Form

    def call(self, body: BaseModel | None = None, query: BaseModel | None = None) -> api.Call:
        """An admin API call as this admin, for the API's own handlers."""
        return api.Call(self.request, self.mesh, self.rid, self.deadline, self.admin, body, query)

    async def run(
        self,
        handler: api.Handler,
        answer: type[M],
        body: BaseModel | None = None,
        query: BaseModel | None = None,
    ) -> M:
        """Run an admin API handler and check that it answered `answer`."""
        result = await handler(self.call(body, query))
        if not isinstance(result, answer):
            raise AssertionError(f"{handler.__name__} answered {type(result).__name__}")
        return result

    def render(self, template: str, status: int = 200, **context: Any) -> Response:
        return self.dash.render(
            self.request, template, status, self.session, admin=self.admin, **context
        )


PageHandler = Callable[[Page], Awaitable[Response]]


def signin_redirect(request: Request, notice: str = "") -> Response:
    target = "/signin"
    query = []
    if request.method == "GET" and request.url.path not in ("/", "/signin"):
        next_path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        query.append("next=" + quote(next_path, safe="/"))
    if notice:
        query.append("notice=" + notice)
    if query:
        target += "?" + "&".join(query)
    return RedirectResponse(target, status_code=303)


def refused(dash: Dashboard, request: Request, session: Session | None, message: str) -> Response:
    """403: a POST without its form's CSRF token (another site's, or a stale page)."""
    return dash.render(
        request,
        "error.html",
        403,
        session,
        title="Form refused",
        message=message,
        admin=None,
    )


def page(handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint of a signed-in page: session, auth, CSRF, then the page."""

    async def endpoint(request: Request) -> Response:
        dash = dashboard_of(request)
        mesh: AdminMesh = request.app.state.mesh
        rid = request_id_of(request)
        logs.request_id.set(rid)
        deadline = time.monotonic() + mesh.request_timeout
        session = dash.session_of(request)
        if session is None or not session.signed_in:
            return signin_redirect(request)
        try:
            form = Form({})
            if request.method == "POST":
                form = await read_form(request, dash.max_body_bytes)
                if not session.csrf_matches(form.get("csrf")):
                    return refused(
                        dash,
                        request,
                        session,
                        "This form has no valid CSRF token. Reload the page and try again.",
                    )
            admin = await api.authenticate(mesh, "Bearer " + session.secret, rid, deadline)
        except ApiError as exc:
            if exc.status in (401, 403):
                response = signin_redirect(request, "ended")
                dash.drop_session(response, request)
                return response
            return failure(dash, request, session, exc)
        except ClientDisconnect:
            return Response(status_code=499)
        try:
            return await handler(Page(request, dash, mesh, session, admin, rid, deadline, form))
        except ApiError as exc:
            return failure(dash, request, session, exc)
        except ClientDisconnect:
            return Response(status_code=499)

    endpoint.__name__ = handler.__name__
    return endpoint


_TITLES = {404: "Not found", 409: "Already exists", 413: "Too large", 503: "Mesh unavailable"}


def failure(dash: Dashboard, request: Request, session: Session | None, exc: ApiError) -> Response:
    """An error of the mesh as a page, with the envelope's status and message."""
    if exc.status >= 500:
        log.error("dashboard page failed", extra={"path": request.url.path, "error": exc.message})
    return dash.render(
        request,
        "error.html",
        exc.status,
        session,
        title=_TITLES.get(exc.status, "Something went wrong" if exc.status >= 500 else "Not done"),
        message=exc.message,
        admin=None,
    )


# -------------------------------------------------------------- sign-in ----


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


def _next(form: Form) -> str:
    """Where to go after signing in: a path on this listener only (no open redirect)."""
    target = form.get("next")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/keys"
    return target


NOTICES = {
    "ended": "Your session ended (signed out, expired, or the admin key was revoked).",
    "signed-out": "You are signed out.",
}


async def signin_form(request: Request) -> Response:
    """The sign-in page; signed in already, the keys page."""
    dash = dashboard_of(request)
    session = dash.session_of(request)
    if session is not None and session.signed_in:
        return RedirectResponse("/keys", status_code=303)
    return _signin_page(request, dash, NOTICES.get(request.query_params.get("notice", ""), ""))


def _signin_page(
    request: Request,
    dash: Dashboard,
    notice: str = "",
    error: str = "",
    status: int = 200,
    next_path: str = "",
    headers: dict[str, str] | None = None,
) -> Response:
    # A sign-in form's own session: only a CSRF token, kept for the form's lifetime.
    session = dash.session_of(request)
    if session is None or session.signed_in:
        session = new_session("", SIGNIN_TTL_S)
    response = dash.render(
        request,
        "signin.html",
        status,
        session,
        notice=notice,
        error=error,
        next_path=next_path or request.query_params.get("next", ""),
        admin=None,
    )
    response.headers.update(headers or {})
    dash.set_session(response, request, session)
    return response


async def signin(request: Request) -> Response:
    """Check an admin key and start a session; failures count towards the throttle."""
    dash = dashboard_of(request)
    mesh: AdminMesh = request.app.state.mesh
    rid = request_id_of(request)
    logs.request_id.set(rid)
    client = _client(request)
    wait = dash.throttle.retry_after(client)
    if wait:
        return _signin_page(
            request,
            dash,
            error=f"Too many failed sign-ins from your address. Try again in {wait} s.",
            status=429,
            headers={"retry-after": str(wait)},
        )
    try:
        form = await read_form(request, dash.max_body_bytes)
    except ApiError as exc:
        return _signin_page(request, dash, error=exc.message, status=exc.status)
    except ClientDisconnect:
        return Response(status_code=499)
    pending = dash.session_of(request)
    if pending is None or not pending.csrf_matches(form.get("csrf")):
        return refused(
            dash, request, None, "The sign-in form expired or came from elsewhere. Reload it."
        )
    secret = form.get("key")
    try:
        await api.authenticate(
            mesh, "Bearer " + secret, rid, time.monotonic() + mesh.request_timeout
        )
    except ApiError as exc:
        if exc.status not in (401, 403):
            return _signin_page(request, dash, error=exc.message, status=exc.status)
        dash.throttle.failed(client)
        message = (
            "That key is not an admin key: API keys cannot use the dashboard."
            if exc.status == 403
            else "That key is not a valid admin key."
        )
        return _signin_page(
            request, dash, error=message, status=exc.status, next_path=form.get("next")
        )
    response = RedirectResponse(_next(form), status_code=303)
    dash.set_session(response, request, new_session(secret, dash.session_ttl_s))
    return response


async def signout(request: Request) -> Response:
    """End the session (a POST with its CSRF token, so no other site can sign you out)."""
    dash = dashboard_of(request)
    session = dash.session_of(request)
    try:
        form = await read_form(request, dash.max_body_bytes)
    except (ApiError, ClientDisconnect):
        form = Form({})
    if session is None or not session.csrf_matches(form.get("csrf")):
        return refused(dash, request, session, "Sign-out needs the form's CSRF token.")
    response = RedirectResponse("/signin?notice=signed-out", status_code=303)
    dash.drop_session(response, request)
    return response


async def home(request: Request) -> Response:
    session = dashboard_of(request).session_of(request)
    target = "/keys" if session is not None and session.signed_in else "/signin"
    return RedirectResponse(target, status_code=303)
