"""The dashboard against a real mesh: its security over HTTP, then its flow in a real browser.

Without a session no page shows data (every one redirects to the sign-in);
a plain API key cannot sign in; every POST needs its form's CSRF token;
failed sign-ins are throttled per client address; pages carry a strict CSP.
In Debian's chromium (Playwright, never a downloaded browser): sign in,
create a key with an rpm limit, read its secret off the page, use it with the
openai SDK, find the request and its cost in Usage, revoke the key in the
page and see the SDK get 401; an XSS probe in a key's name stays text; every
page is screenshotted at 1280x800 and 390x844 with no console error.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from admin.api import PREFIX
from admin.session import COOKIE
from tests.conftest import RunningMesh, launch_mesh

PRO = "meshgate/reference-pro"
CHROMIUM = os.environ.get("MESHGATE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGES = ["/keys", "/tenants", "/usage", "/engines", "/audit"]
SIZES = {"laptop": (1280, 800), "phone": (390, 844)}
XSS = '<script>alert("xss")</script><img src=x onerror="alert(1)">'
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    running = launch_mesh(
        tmp_path_factory.mktemp("dashboard"),
        {"admin": {"signin_attempts": 5, "signin_window_s": 60}},
    )
    try:
        yield running
    finally:
        assert running.stop() == 0, running.output()


@pytest.fixture(scope="module")
def admin_api(mesh: RunningMesh) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {mesh.admin_key}"}
    with httpx.Client(base_url=mesh.admin_origin + PREFIX, headers=headers, timeout=30) as c:
        yield c


def browser_client(mesh: RunningMesh, address: str = "127.0.0.1") -> httpx.Client:
    """A cookie-keeping client from a loopback address of its own (the throttle's key)."""
    return httpx.Client(
        base_url=mesh.admin_origin,
        timeout=30,
        follow_redirects=False,
        transport=httpx.HTTPTransport(local_address=address),
    )


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, html
    return found.group(1)


def sign_in(client: httpx.Client, key: str, next_path: str = "") -> httpx.Response:
    form = client.get("/signin")
    assert form.status_code == 200, form.text
    return client.post("/signin", data={"csrf": csrf_of(form.text), "key": key, "next": next_path})


def create_key(admin_api: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = admin_api.post("/keys", json={"name": "dashboard test", **fields})
    assert response.status_code == 201, response.text
    key: dict[str, Any] = response.json()
    return key


# ------------------------------------------------------------ no session ----

GUARDED = [
    *(("GET", path) for path in PAGES),
    ("GET", "/keys/key_0000000000000000"),
    ("GET", "/keys/key_0000000000000000/revoke"),
    ("GET", "/tenants/acme"),
    ("GET", "/usage?key_id=key_0000000000000000&range=30d"),
    ("POST", "/keys"),
    ("POST", "/keys/key_0000000000000000"),
    ("POST", "/keys/key_0000000000000000/revoke"),
    ("POST", "/tenants"),
    ("POST", "/tenants/acme"),
]


@pytest.mark.parametrize(
    ("method", "path"), [pytest.param(m, p, id=f"{m} {p}") for m, p in GUARDED]
)
def test_without_a_session_every_page_redirects_to_sign_in_and_shows_no_data(
    mesh: RunningMesh, method: str, path: str
) -> None:
    with browser_client(mesh) as client:
        response = client.request(method, path, data={"name": "sneaky"})
    assert response.status_code == 303
    assert response.headers["location"].startswith("/signin")
    assert "key_" not in response.text and "sk-mg" not in response.text


def test_a_forged_session_cookie_is_no_session(mesh: RunningMesh) -> None:
    with browser_client(mesh) as client:
        client.cookies.set(COOKIE, "A" * 120)
        response = client.get("/keys")
    assert response.status_code == 303
    assert response.headers["location"] == "/signin?next=/keys"


def test_the_root_sends_a_visitor_to_sign_in_and_an_admin_to_keys(mesh: RunningMesh) -> None:
    with browser_client(mesh) as client:
        assert client.get("/").headers["location"] == "/signin"
        assert sign_in(client, mesh.admin_key).headers["location"] == "/keys"
        assert client.get("/").headers["location"] == "/keys"
        assert client.get("/signin").headers["location"] == "/keys"


# ------------------------------------------------------------- sign-in ----


def test_a_plain_api_key_cannot_sign_in(mesh: RunningMesh) -> None:
    with browser_client(mesh, "127.0.0.3") as client:
        response = sign_in(client, mesh.api_key)
        assert response.status_code == 403
        assert "not an admin key" in response.text
        # What it was given is the sign-in form's session only: still no page.
        assert client.get("/keys").status_code == 303
        assert client.get("/usage").headers["location"].startswith("/signin")


def test_an_unknown_key_cannot_sign_in(mesh: RunningMesh) -> None:
    with browser_client(mesh, "127.0.0.3") as client:
        response = sign_in(client, "sk-mg-" + "x" * 43)
        assert response.status_code == 401
        assert "not a valid admin key" in response.text
        assert client.get("/keys").status_code == 303


def test_the_session_cookie_is_httponly_samesite_strict_and_not_secure_over_http(
    mesh: RunningMesh,
) -> None:
    with browser_client(mesh) as client:
        response = sign_in(client, mesh.admin_key)
    assert response.status_code == 303
    header = response.headers["set-cookie"]
    parts = [p.strip().lower() for p in header.split(";")]
    assert parts[0].startswith(COOKIE + "=")
    assert "httponly" in parts and "samesite=strict" in parts and "path=/" in parts
    assert "secure" not in parts  # plain http here; test_dashboard_session covers TLS
    assert mesh.admin_key not in header


def test_sign_in_is_rate_limited_per_client_address(mesh: RunningMesh) -> None:
    attempts = mesh.config.admin.signin_attempts
    assert attempts == 5
    with browser_client(mesh, "127.0.0.2") as client:
        for _ in range(attempts):
            assert sign_in(client, "sk-mg-wrong").status_code == 401
        refused = sign_in(client, "sk-mg-wrong")
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "Too many failed sign-ins" in refused.text
        # Throttled, the right key is refused too: the window must end first.
        held = sign_in(client, mesh.admin_key)
        assert held.status_code == 429
        assert client.get("/keys").status_code == 303  # and no session was made
    with browser_client(mesh, "127.0.0.4") as other:  # another address is not held back
        assert sign_in(other, mesh.admin_key).status_code == 303


def test_sign_in_goes_back_to_the_page_asked_for_but_never_off_site(mesh: RunningMesh) -> None:
    with browser_client(mesh) as client:
        assert sign_in(client, mesh.admin_key, "/usage?by=model").headers["location"] == (
            "/usage?by=model"
        )
    for target in ("//evil.example.com/", "https://evil.example.com/", "/\\evil.example.com"):
        with browser_client(mesh) as client:
            assert sign_in(client, mesh.admin_key, target).headers["location"] == "/keys"


def test_revoking_an_admin_key_ends_its_sessions_at_once(
    mesh: RunningMesh, admin_api: httpx.Client
) -> None:
    other = create_key(admin_api, name="short-lived admin", roles=["admin"])
    with browser_client(mesh) as client:
        assert sign_in(client, other["secret"]).status_code == 303
        assert client.get("/keys").status_code == 200
        assert admin_api.delete(f"/keys/{other['id']}").status_code == 200
        deadline = time.monotonic() + 2.0
        while (response := client.get("/keys")).status_code == 200:
            assert time.monotonic() < deadline, "the revoked admin key still signs pages"
            time.sleep(0.05)
    assert response.status_code == 303
    assert response.headers["location"] == "/signin?next=/keys&notice=ended"


def test_sign_out_drops_the_cookie_and_needs_the_csrf_token(mesh: RunningMesh) -> None:
    with browser_client(mesh) as client:
        sign_in(client, mesh.admin_key)
        page = client.get("/keys")
        assert client.post("/signout", data={}).status_code == 403
        assert client.get("/keys").status_code == 200
        response = client.post("/signout", data={"csrf": csrf_of(page.text)})
        assert response.status_code == 303
        assert "max-age=0" in response.headers["set-cookie"].lower()
        assert client.get("/keys").status_code == 303


def test_a_new_keys_secret_is_shown_once_after_the_redirect(
    mesh: RunningMesh, admin_api: httpx.Client
) -> None:
    with browser_client(mesh) as client:
        sign_in(client, mesh.admin_key)
        token = csrf_of(client.get("/keys").text)
        created = client.post("/keys", data={"csrf": token, "name": "shown once", "rpm": "7"})
        assert created.status_code == 303
        assert created.headers["location"] == "/keys?notice=key-created"
        assert "sk-mg-" not in created.headers["set-cookie"]  # sealed, like the session
        first = client.get(created.headers["location"])
        secret = re.search(r'data-testid="new-secret">([^<]+)<', first.text)
        assert secret, first.text
        assert first.headers["cache-control"] == "no-store"
        again = client.get("/keys")
        assert secret.group(1) not in again.text
    key = next(k for k in admin_api.get("/keys").json()["data"] if k["name"] == "shown once")
    assert key["rpm"] == 7
    with openai.OpenAI(base_url=mesh.base_url, api_key=secret.group(1), max_retries=0) as sdk:
        assert sdk.models.list().data


def test_limits_are_edited_in_the_pages_and_land_in_the_api_and_audit_log(
    mesh: RunningMesh, admin_api: httpx.Client
) -> None:
    key = create_key(admin_api, name="to edit", rpm=5)
    with browser_client(mesh) as client:
        sign_in(client, mesh.admin_key)
        form = client.get(f"/keys/{key['id']}")
        assert form.status_code == 200 and 'value="5"' in form.text
        fields = {"csrf": csrf_of(form.text), "rpm": "50", "tpm": "9,000", "budget_usd": "3"}
        fields |= {"budget_period": "day", "models": PRO}
        saved = client.post(f"/keys/{key['id']}", data=fields)
        assert saved.status_code == 303 and saved.headers["location"] == "/keys?notice=key-updated"
        bad = client.post(f"/keys/{key['id']}", data={**fields, "rpm": "lots"})
        assert bad.status_code == 400 and "rpm must be a whole number" in bad.text

        token = csrf_of(client.get("/tenants").text)
        made = client.post("/tenants", data={"csrf": token, "id": "pages-co", "rpm": "100"})
        assert made.status_code == 303
        again = client.post("/tenants", data={"csrf": token, "id": "pages-co"})
        assert again.status_code == 409
        assert "Tenant &#39;pages-co&#39; exists." in again.text  # the service's own message
        edited = client.post(
            "/tenants/pages-co", data={"csrf": token, "rpm": "200", "budget_usd": "40"}
        )
        assert edited.status_code == 303
        missing = client.get("/keys/key_0000000000000000")
        assert missing.status_code == 404 and "Not found" in missing.text
    now = admin_api.get(f"/keys/{key['id']}").json()
    assert (now["rpm"], now["tpm"], now["budget_usd"], now["budget_period"]) == (
        50,
        9000,
        "3.00",
        "day",
    )
    assert now["models"] == [PRO]
    tenant = next(t for t in admin_api.get("/tenants").json()["data"] if t["id"] == "pages-co")
    assert (tenant["rpm"], tenant["budget_usd"]) == (200, "40.00")
    actions = {(e["action"], e["target"]) for e in admin_api.get("/audit").json()["data"]}
    assert {("key.update", key["id"]), ("tenant.create", "pages-co")} <= actions
    assert ("tenant.update", "pages-co") in actions


# ------------------------------------------------------------------ CSRF ----


def test_a_post_without_its_csrf_token_is_refused_and_changes_nothing(
    mesh: RunningMesh, admin_api: httpx.Client
) -> None:
    before = {k["id"] for k in admin_api.get("/keys").json()["data"]}
    with browser_client(mesh) as client, browser_client(mesh) as other:
        sign_in(client, mesh.admin_key)
        sign_in(other, mesh.admin_key)
        foreign = csrf_of(other.get("/keys").text)  # a token of another session
        for data in ({}, {"csrf": ""}, {"csrf": "forged"}, {"csrf": foreign}):
            response = client.post("/keys", data={"name": "csrf probe", "rpm": "1", **data})
            assert response.status_code == 403, data
            assert "CSRF" in response.text
        mine = csrf_of(client.get("/keys").text)
        assert client.post("/keys", data={"name": "csrf ok", "csrf": mine}).status_code == 303
    names = {k["name"] for k in admin_api.get("/keys").json()["data"] if k["id"] not in before}
    assert names == {"csrf ok"}


def test_the_sign_in_form_needs_its_csrf_token_too(mesh: RunningMesh) -> None:
    with browser_client(mesh) as client:
        client.get("/signin")
        response = client.post("/signin", data={"key": mesh.admin_key})
        assert response.status_code == 403
        assert client.get("/keys").status_code == 303


def test_pages_and_assets_carry_a_strict_csp_and_refuse_framing(mesh: RunningMesh) -> None:
    with browser_client(mesh) as client:
        sign_in(client, mesh.admin_key)
        for path in ("/signin", "/keys", "/static/dashboard.js"):
            response = client.get(path, follow_redirects=True)
            assert response.status_code == 200, path
            csp = response.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["referrer-policy"] == "no-referrer"
        keys = client.get("/keys")
        assert keys.headers["cache-control"] == "no-store"
        assert "<script>" not in keys.text  # every script is a file: no inline script
    api = httpx.get(mesh.admin_origin + PREFIX + "/keys")
    assert "content-security-policy" not in api.headers  # the JSON API is left as it is


# --------------------------------------------------------------- browser ----


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright; skipped where it is absent, except in CI."""
    reason = ""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[test]')"
    if not reason and not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        reason = f"no chromium at {CHROMIUM} (apt-get install chromium)"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests cannot be skipped in CI: {reason}")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Console:
    """Every console message, page error and dialog of a page, to check none was an error."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on(
            "console",
            lambda m: self.errors.append(f"{m.type}: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


def browser_sign_in(page: Any, mesh: RunningMesh) -> None:
    page.goto(mesh.admin_origin + "/keys")
    assert page.url.startswith(mesh.admin_origin + "/signin")
    page.fill("input[name=key]", mesh.admin_key)
    page.click("form[action='/signin'] button[type=submit]")
    page.wait_for_url(mesh.admin_origin + "/keys")


def find_record(page: Any, mesh: RunningMesh, key_id: str, request_id: str) -> Any:
    """The request's row on the Usage page, reloading while the ledger catches up."""
    row = f"#usage-records tr[data-request-id='{request_id}']"
    deadline = time.monotonic() + 30
    while True:
        page.goto(f"{mesh.admin_origin}/usage?key_id={key_id}&range=24h")
        if page.locator(row).count():
            return page.locator(row)
        assert time.monotonic() < deadline, f"request {request_id} never showed in Usage"
        time.sleep(0.5)


def test_a_key_made_in_the_browser_works_shows_its_cost_and_dies_when_revoked(
    browser: Any, mesh: RunningMesh, tmp_path: Path
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=mesh.admin_origin)
    page = context.new_page()
    console = Console(page)
    browser_sign_in(page, mesh)

    # Create a key with an rpm limit; its secret is on the page, once, with a copy button.
    page.fill("#create-key input[name=name]", "browser flow")
    page.fill("#create-key input[name=rpm]", "30")
    page.fill("#create-key input[name=budget_usd]", "2.5")
    page.check(f"#create-key input[name=models][value='{PRO}']")
    page.click("#create-key button[type=submit]")
    secret = page.locator("[data-testid=new-secret]").inner_text().strip()
    assert secret.startswith("sk-mg-")
    page.click("button[data-copy=new-secret]")
    page.wait_for_function(
        "document.querySelector('button[data-copy=new-secret]').textContent === 'Copied'"
    )
    assert page.evaluate("navigator.clipboard.readText()") == secret
    key_id = page.locator("tr[data-key-id]", has_text="browser flow").get_attribute("data-key-id")
    row = page.locator(f"tr[data-key-id='{key_id}']")
    assert row.locator("td").nth(3).inner_text() == "30"
    assert "$2.50" in row.inner_text() and PRO in row.inner_text()
    page.reload()
    assert secret not in page.content()  # shown once: the listing never has it
    assert page.locator("tr[data-key-id]", has_text="browser flow").count() == 1  # no re-POST

    # The key works with the openai SDK.
    with openai.OpenAI(base_url=mesh.base_url, api_key=secret, max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model=PRO, messages=[{"role": "user", "content": "hello dashboard"}], max_tokens=8
        )
        completion = raw.parse()
        assert completion.choices[0].message.content
        request_id = raw.headers["x-request-id"]

        # Usage shows that request, with its tokens and a cost above zero.
        record = find_record(page, mesh, key_id, request_id)
        cells = record.locator("td")
        assert "browser flow" in cells.nth(1).inner_text()
        assert cells.nth(2).inner_text() == PRO
        assert cells.nth(4).inner_text() == str(completion.usage.prompt_tokens)
        cost = record.locator("td.cost").inner_text()
        assert cost.startswith("$") and Decimal(cost[1:]) > 0
        totals = page.locator("#usage-totals tbody tr").first.inner_text()
        assert "browser flow" in totals and cost in totals
        assert page.locator("#chart-spend canvas").count() >= 1  # uPlot drew the charts

        # Revoke in the page (a confirmation first); the SDK then gets 401.
        page.goto(mesh.admin_origin + "/keys")
        page.locator(f"tr[data-key-id='{key_id}'] a.danger").click()
        page.wait_for_url(f"{mesh.admin_origin}/keys/{key_id}/revoke")
        page.click("form button.danger")
        page.wait_for_url(mesh.admin_origin + "/keys?notice=key-revoked")
        assert page.locator(f"tr[data-key-id='{key_id}'] .status").inner_text() == "revoked"
        deadline = time.monotonic() + 2.0
        while True:
            try:
                sdk.chat.completions.create(
                    model=PRO, messages=[{"role": "user", "content": "again"}], max_tokens=4
                )
            except openai.AuthenticationError as exc:
                assert exc.status_code == 401
                break
            assert time.monotonic() < deadline, "the revoked key still works"
            time.sleep(0.05)

    # The audit log has the dashboard's changes, made as the signed-in admin.
    page.goto(mesh.admin_origin + "/audit")
    audit = page.locator("main").inner_text()
    assert "key.create" in audit and "key.revoke" in audit and key_id in audit
    assert secret not in page.content()
    assert not console.errors, console.errors
    context.close()


def test_a_form_posted_without_its_csrf_token_is_refused_in_the_browser(
    browser: Any, mesh: RunningMesh
) -> None:
    page = browser.new_page()
    console = Console(page)
    browser_sign_in(page, mesh)
    page.fill("#create-key input[name=name]", "no token")
    page.evaluate("document.querySelector('#create-key input[name=csrf]').remove()")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.click("#create-key button[type=submit]")
    assert posted.value.status == 403
    assert "CSRF" in page.locator("[role=alert]").inner_text()
    page.goto(mesh.admin_origin + "/keys")
    assert page.locator("tr[data-key-id]", has_text="no token").count() == 0
    # The refusal is a page, not a script error; the 403 is the only "error" logged.
    assert all("403" in e for e in console.errors), console.errors
    page.close()


def test_an_xss_probe_in_a_key_name_is_rendered_as_text(
    browser: Any, mesh: RunningMesh, admin_api: httpx.Client
) -> None:
    probe = create_key(admin_api, name=XSS)
    with openai.OpenAI(base_url=mesh.base_url, api_key=probe["secret"], max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model=PRO, messages=[{"role": "user", "content": XSS}], max_tokens=4
        )
        request_id = raw.headers["x-request-id"]
    page = browser.new_page()
    console = Console(page)
    browser_sign_in(page, mesh)
    page.evaluate("window.__xss = 0")
    name = page.locator(f"tr[data-key-id='{probe['id']}'] .name")
    assert name.inner_text() == XSS  # the text itself, shown as text
    assert page.locator("img[src=x]").count() == 0
    find_record(page, mesh, probe["id"], request_id)
    legend = page.locator("#chart-spend .u-legend").inner_text()
    assert XSS in legend  # uPlot's legend, too, has the name as text
    for path in ("/keys/" + probe["id"], "/keys/" + probe["id"] + "/revoke", "/audit"):
        page.goto(mesh.admin_origin + path)
        assert page.locator("img[src=x]").count() == 0
        assert XSS in page.locator("main").inner_text()
    assert page.locator("script:not([src]):not([type='application/json'])").count() == 0
    assert console.dialogs == []  # no alert() ran anywhere
    assert not console.errors, console.errors
    page.close()


def test_every_page_is_screenshotted_at_laptop_and_phone_width_without_console_errors(
    browser: Any, mesh: RunningMesh, admin_api: httpx.Client, tmp_path: Path
) -> None:
    key = create_key(admin_api, name="screenshot", rpm=60, budget_usd="5")
    admin_api.post("/tenants", json={"id": "screens", "rpm": 600, "budget_usd": "100"})
    paths = [
        "/signin",
        *PAGES,
        "/usage?by=model&range=24h",
        f"/keys/{key['id']}",
        f"/keys/{key['id']}/revoke",
        "/tenants/screens",
    ]
    shots: list[Path] = []
    for size, (width, height) in SIZES.items():
        context = browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        console = Console(page)
        page.goto(mesh.admin_origin + "/signin")
        shot = tmp_path / f"{size}-signin.png"
        page.screenshot(path=str(shot), full_page=True)
        shots.append(shot)
        browser_sign_in(page, mesh)
        for path in paths[1:]:
            response = page.goto(mesh.admin_origin + path)
            assert response is not None and response.status == 200, path
            name = re.sub(r"[^a-z0-9]+", "-", path.strip("/").lower()).strip("-")
            shot = tmp_path / f"{size}-{name}.png"
            page.screenshot(path=str(shot), full_page=True)
            shots.append(shot)
            # Usable at this width: the page itself never scrolls sideways (wide tables do,
            # inside their own box).
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{path} is {overflow}px wider than {width}px"
        assert not console.errors, (size, console.errors)
        context.close()
    assert len(shots) == 2 * len(paths)
    for shot in shots:
        assert shot.stat().st_size > 5000, shot  # a rendered page, not a blank one
