"""Take the README's dashboard screenshot (docs/dashboard.png) from a real mesh.

It runs `meshgate up` on free ports (the tests' launcher), makes a tenant and
a few keys through the admin API, sends them some chat completions with the
openai SDK, signs in to the dashboard in Debian's chromium and captures the
Usage page at 1280x800. Run it from the checkout:

    .venv/bin/python scripts/dashboard_screenshot.py [--page /usage?range=24h] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import openai  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from tests.conftest import launch_mesh  # noqa: E402
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

TEAMS = [
    # name, tenant, rpm, dollar budget, requests, max_tokens, models
    ("search-team", "acme", 600, "25", 14, 48, ["meshgate/reference-pro"]),
    ("support-bot", "acme", 300, "10", 22, 24, []),
    ("nightly-evals", "research", 120, "50", 9, 96, ["meshgate/reference-mini"]),
]


def traffic(admin: httpx.Client, base_url: str) -> None:
    for tenant, budget in (("acme", "100"), ("research", "250")):
        admin.post("/tenants", json={"id": tenant, "rpm": 1200, "budget_usd": budget})
    for name, tenant, rpm, budget, requests, max_tokens, models in TEAMS:
        key = admin.post(
            "/keys",
            json={"name": name, "tenant": tenant, "rpm": rpm, "budget_usd": budget},
        ).json()
        with openai.OpenAI(base_url=base_url, api_key=key["secret"], max_retries=0) as sdk:
            for i in range(requests):
                model = (
                    models[0]
                    if models
                    else ("meshgate/reference-pro", "meshgate/reference-mini")[i % 2]
                )
                sdk.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "Summarize this ticket. " * (i + 2)}],
                    max_tokens=max_tokens,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--page", default="/usage?range=24h&by=key")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshgate-shot-") as work:
        mesh = launch_mesh(Path(work))
        try:
            headers = {"Authorization": f"Bearer {mesh.admin_key}"}
            with httpx.Client(base_url=mesh.admin_origin + "/admin/v1", headers=headers) as admin:
                traffic(admin, mesh.base_url)
            time.sleep(2)  # the ledger applies records from its buffer
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(mesh.admin_origin + "/signin")
                page.fill("input[name=key]", mesh.admin_key)
                page.click("form[action='/signin'] button[type=submit]")
                page.wait_for_url(mesh.admin_origin + "/keys")
                page.goto(mesh.admin_origin + args.page)
                page.screenshot(path=str(args.out))
                browser.close()
        finally:
            mesh.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
