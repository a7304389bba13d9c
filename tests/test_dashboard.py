"""The /ui dashboard: plain HTTP (page, assets, JSON endpoint, auth on/off) and end to end in
headless Chromium (seeded numbers, live updates, a blocked scope turns red, no console errors).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage
from budgetlimiter.server import ServerConfig, create_app, parse_tokens
from budgetlimiter.server.models import UiTreeOut
from budgetlimiter.server.testing import LiveServer

from .servers import RedisServer

pytestmark = pytest.mark.redis

POLICY = """
timezone: UTC
reservation_ttl_seconds: 60
pricing:
  gpt: {input_per_million: "1", output_per_million: "2"}
orgs:
  acme:
    limits:
      - {metric: cost, amount: "10", period: month}
    teams:
      eng:
        limits:
          - {metric: cost, amount: "5", period: day}
      ops:
        limits:
          - {metric: cost, amount: "0.001", period: day}
"""
ALICE = Subject("acme", "gpt", team="eng", user="alice")
BOB = Subject("acme", "gpt", team="ops", user="bob")
READ = "reader:r" + "x" * 20 + ":read"
READ_SECRET = "r" + "x" * 20
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]

Start = Callable[..., tuple[LiveServer, BudgetLimiter]]


@pytest.fixture
def start(fresh_redis: RedisServer, tmp_path: Path) -> Iterator[Start]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    running: list[tuple[LiveServer, BudgetLimiter]] = []

    def make(**overrides: Any) -> tuple[LiveServer, BudgetLimiter]:
        cfg = {"redis_url": fresh_redis.url, "policy_path": str(policy), "redis_timeout": 5.0,
               **overrides}
        live = LiveServer(create_app(ServerConfig(**cfg))).start()
        limiter = BudgetLimiter(str(policy), fresh_redis.url)
        running.append((live, limiter))
        return live, limiter

    yield make
    for live, limiter in running:
        limiter.close()
        live.stop()


def spend(limiter: BudgetLimiter, subject: Subject, usd: str, rid: str) -> None:
    limiter.record(subject, Usage(cost=Decimal(usd)), request_id=rid)


def test_ui_http_without_auth(start: Start) -> None:
    live, limiter = start()
    spend(limiter, ALICE, "1.25", "r1")
    with httpx.Client(base_url=live.url, timeout=10) as c:
        for path in ("/ui", "/ui/", "/ui?org=acme", "/ui/org/acme"):
            page = c.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"].startswith("text/html")
            assert "/ui/static/dashboard.js" in page.text
            assert "script-src 'self'" in page.headers["content-security-policy"]
        js = c.get("/ui/static/dashboard.js")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]
        assert c.get("/ui/static/dashboard.css").headers["content-type"].startswith("text/css")
        assert c.get("/ui/static/../app.py").status_code == 404
        assert c.get("/ui/static/nope.js").status_code == 404
        assert c.post("/ui").status_code == 405
        doc = c.get("/v1/ui/tree", params={"org": "acme"}).json()
        assert doc["org"] == "acme" and doc["store"] is False and doc["alerts"] is None
        assert doc["timezone"] == "UTC"  # the org's zone: the page shows every time in it
        UiTreeOut.model_validate(doc)
        by_scope = {n["scope"]: n for n in doc["scopes"]}
        assert set(by_scope) >= {"org:acme", "org:acme/team:eng", "org:acme/team:ops"}
        assert by_scope["org:acme/team:eng"]["parent"] == "org:acme"
        eng = by_scope["org:acme/team:eng"]["limits"][0]
        assert (eng["used"], eng["limit"], eng["state"]) == ("1.250000", "5.000000", "ok")
        assert doc["top"][0]["scope"] == "org:acme/team:eng"
        assert c.get("/v1/ui/tree").status_code == 422
        assert c.get("/v1/ui/tree", params={"org": "x" * 300}).status_code == 422


def test_ui_http_with_auth_and_store(start: Start, tmp_path: Path) -> None:
    live, _ = start(tokens=parse_tokens([READ]), db_url=f"sqlite:///{tmp_path / 'bl.db'}")
    with httpx.Client(base_url=live.url, timeout=10) as c:
        assert c.get("/ui?org=acme").status_code == 200  # the shell holds no data
        assert c.get("/ui/static/dashboard.js").status_code == 200
        denied = c.get("/v1/ui/tree", params={"org": "acme"})
        assert denied.status_code == 401 and denied.json()["code"] == "unauthorized"
        bad = c.get("/v1/ui/tree", params={"org": "acme"},
                    headers={"Authorization": "Bearer " + "z" * 21})
        assert bad.status_code == 401
        doc = c.get("/v1/ui/tree", params={"org": "acme"},
                    headers={"Authorization": "Bearer " + READ_SECRET}).json()
        assert doc["store"] is True and doc["alerts"] == [] and doc["alerts_error"] is None


# ---------------------------------------------------------------------------- browser


def _browser() -> Any:
    """Playwright + the Debian Chromium; a missing piece FAILS (not skips) the test."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install playwright (never needs "
                    "'playwright install'; the browser is /usr/bin/chromium)")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium")
    return sync_playwright


def _launch(pw: Any) -> Any:
    """Headless Debian Chromium; failing to start it FAILS the test."""
    try:
        return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except Exception as exc:
        pytest.fail(f"cannot launch headless Chromium at {CHROMIUM}: {exc}")


def test_dashboard_in_chromium(start: Start) -> None:
    sync_playwright = _browser()
    live, limiter = start()
    spend(limiter, ALICE, "1.25", "seed-1")
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = _launch(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{live.url}/ui?org=acme")
            eng = page.locator('li[data-scope="org:acme/team:eng"] > .limits .limit').first
            eng.wait_for(timeout=5000)
            assert "$1.25" in eng.inner_text()  # cents above a dollar, exact on hover
            assert eng.locator(".amt").first.get_attribute("title") == "$1.250000"
            assert "state-ok" in (eng.get_attribute("class") or "")
            assert "no durable store" in page.locator("#alerts").inner_text()
            assert "no durable store" in page.locator("#trend").inner_text()
            assert page.locator("#status").get_attribute("aria-live") == "polite"
            page.screenshot(path=str(ARTIFACTS / "dashboard-seeded.png"), full_page=True)

            # live update: more usage shows up within a poll or two
            spend(limiter, ALICE, "1", "seed-2")
            page.wait_for_function(
                """() => { const e = document.querySelector(
                     'li[data-scope="org:acme/team:eng"] > .limits .limit .nums');
                   return e && e.textContent.includes('$2.25'); }""", timeout=6000)

            # a blocked scope turns red
            spend(limiter, BOB, "0.002", "seed-3")
            ops = page.locator('li[data-scope="org:acme/team:ops"] > .limits .limit').first
            page.wait_for_function(
                """() => { const e = document.querySelector(
                     'li[data-scope="org:acme/team:ops"] > .limits .limit');
                   return e && e.classList.contains('state-blocked'); }""", timeout=6000)
            fill = ops.locator("rect.used").evaluate("e => getComputedStyle(e).fill")
            assert fill == "rgb(198, 40, 40)", fill
            assert "blocked" in page.locator("#status").inner_text()
            top_row = page.locator("#top tbody tr").first
            assert "org:acme/team:ops" in top_row.inner_text()

            # keyboard: the scope buttons are focusable and select a scope
            page.locator('li[data-scope="org:acme/team:eng"] .pick').first.focus()
            page.keyboard.press("Enter")
            page.wait_for_function("() => document.getElementById('pol-team').value === 'eng'")
            page.fill("#pol-agent", "gpt")
            page.click("#policy-form button")
            page.locator("#policy pre").wait_for(timeout=5000)
            page.screenshot(path=str(ARTIFACTS / "dashboard-blocked.png"), full_page=True)

            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.on("pageerror", lambda e: errors.append(str(e)))
            phone.goto(f"{live.url}/ui/org/acme")
            phone.locator('li[data-scope="org:acme/team:ops"] .limit').first.wait_for(
                timeout=5000)
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 400, f"horizontal overflow at phone width: {width}px"
            phone.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
        finally:
            browser.close()
    assert errors == [], errors


def test_dashboard_token_in_chromium(start: Start, tmp_path: Path) -> None:
    sync_playwright = _browser()
    live, limiter = start(tokens=parse_tokens([READ]), db_url=f"sqlite:///{tmp_path / 'b.db'}")
    spend(limiter, ALICE, "0.5", "t1")
    with sync_playwright() as pw:
        browser = _launch(pw)
        try:
            page = browser.new_page()
            page.goto(f"{live.url}/ui?org=acme")
            page.locator("#auth").wait_for(state="visible", timeout=5000)
            page.goto(f"{live.url}/ui?org=acme&token={READ_SECRET}")
            eng = page.locator('li[data-scope="org:acme/team:eng"] .limit').first
            eng.wait_for(timeout=5000)
            assert "$0.50" in eng.inner_text()
            assert "token=" not in page.url  # removed from the address bar
            assert page.evaluate("sessionStorage.getItem('budgetlimiter.token')") == READ_SECRET
            page.locator("#trend svg.trend").wait_for(timeout=5000)
            assert "no alerts" in page.locator("#alerts").inner_text()
            page.screenshot(path=str(ARTIFACTS / "dashboard-token.png"), full_page=True)
        finally:
            browser.close()
