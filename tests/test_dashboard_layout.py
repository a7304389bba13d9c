"""The /ui dashboard as an operator reads it, in headless Chromium: urgency first with idle
scopes folded, header counts that link to their scopes, money at a readable precision with the
exact value on hover, mode and reset time on each limit, every time in the org's labelled zone,
no sideways scrolling at 1280 px or phone width, scope names that wrap only at '/', a trend
chart with readable axes, and a forecast line when the tree carries forecasts.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage
from budgetlimiter.durable.store.records import AlertEvent, UsageRow
from budgetlimiter.durable.store.sql import FlushOutcome, Store
from budgetlimiter.server import ServerConfig, create_app
from budgetlimiter.server.testing import LiveServer

from .servers import RedisServer
from .test_dashboard import ARTIFACTS, ROOT, _browser, _launch

pytestmark = pytest.mark.redis

ZONE = ZoneInfo("America/New_York")
IDLE_USERS = 57
USERS = "\n".join(f"      u{i}: {{limits: [{{metric: cost, amount: \"2\", period: day}}]}}"
                  for i in range(1, IDLE_USERS + 4))
POLICY = f"""
timezone: UTC
reservation_ttl_seconds: 60
pricing:
  gpt: {{input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    timezone: America/New_York
    limits:
      - {{metric: cost, amount: "1000", period: month}}
    users:
{USERS}
    teams:
      eng:
        limits: [{{metric: cost, amount: "5", period: day}}]
      ops:
        limits: [{{metric: cost, amount: "0.001", period: day}}]
      research-platform:
        limits: [{{metric: cost, amount: "1", period: day, mode: soft}}]
"""
EPS = "0.000003"  # below a cent: shown with significant digits, not as $0.00

Page = Any


@pytest.fixture
def dashboard(fresh_redis: RedisServer, tmp_path: Path) -> Iterator[tuple[str, BudgetLimiter]]:
    """A sidecar on a real Redis and a SQLite ledger: ops blocked, research soft exceeded,
    eng at 45 %, u1/u2/u10 with a trace of usage, 57 idle users; 30 days of ledger history."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    db = tmp_path / "bl.db"
    store = Store(f"sqlite:///{db}")
    store.migrate()
    today = datetime.now(ZONE).date()
    rows = [UsageRow("acme", "eng", "alice", "gpt", (today - timedelta(days=d)).isoformat(),
                     3, 1000, 500, 1500, 40_000 + 9_000 * (d % 7)) for d in range(1, 29)]
    assert store.apply_flush("acme", "seed", 0, rows) is FlushOutcome.APPLIED
    now_ms = int(time.time() * 1000)
    events = [AlertEvent("acme", scope, "cost", "day", today.isoformat(), pct, used, limit,
                         now_ms - 60_000 * i)
              for i, (scope, pct, used, limit) in enumerate([
                  ("org:acme/team:ops", 100, 2500, 1000),
                  ("org:acme/team:research-platform", 100, 1_500_000, 1_000_000),
                  ("org:acme/team:research-platform", 50, 600_000, 1_000_000),
                  ("org:acme/team:eng", 50, 2_250_000, 5_000_000)])]
    store.record_alerts(events, ["finance-webhook", "pagerduty-oncall"], now_ms)
    store.mark_delivered(events[0].id, "finance-webhook", now_ms)
    store.mark_dead(events[1].id, "pagerduty-oncall", 8, "HTTP 503 from receiver", now_ms)
    store.close()
    limiter = BudgetLimiter(str(policy), fresh_redis.url)
    spend = [(Subject("acme", "gpt", team="eng", user="alice"), "2.25"),
             (Subject("acme", "gpt", team="ops", user="bob"), "0.0025"),
             (Subject("acme", "gpt", team="research-platform", user="carol"),
              "1.5")]
    spend += [(Subject("acme", "gpt", user=u), EPS) for u in ("u10", "u2", "u1")]
    for i, (subject, usd) in enumerate(spend):
        limiter.record(subject, Usage(cost=Decimal(usd)), request_id=f"seed-{i}")
    live = LiveServer(create_app(ServerConfig(
        redis_url=fresh_redis.url, policy_path=str(policy), redis_timeout=5.0,
        db_url=f"sqlite:///{db}"))).start()
    try:
        yield live.url, limiter
    finally:
        limiter.close()
        live.stop()


def test_tree_json_lists_scopes_naturally_with_the_org_zone_when_users_are_numbered(
        dashboard: tuple[str, BudgetLimiter]) -> None:
    url, _ = dashboard
    doc = httpx.get(f"{url}/v1/ui/tree", params={"org": "acme"}, timeout=10).json()
    assert doc["timezone"] == "America/New_York"
    users = [n["user"] for n in doc["scopes"] if n["level"] == "user" and n["team"] is None]
    assert users[:11] == [f"u{i}" for i in range(1, 12)], users  # u2 before u10
    top = [(d["scope"], d["taken"]) for d in doc["top"]]
    assert all(Decimal(taken) > 0 for _, taken in top), top  # idle budgets are no consumers
    limit = doc["scopes"][0]["limits"][0]
    assert limit["mode"] == "hard" and limit["resets_at"].endswith("+00:00"), limit


def _open(browser: Any, url: str, width: int, errors: list[str]) -> Page:
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.locator('li[data-scope="org:acme/team:ops"] .limit').first.wait_for(timeout=8000)
    page.locator("#trend svg.trend").wait_for(timeout=8000)
    return page


def _order(page: Page, parent: str) -> list[str]:
    """Scopes directly under ``parent``'s teams-and-users list, in page order, with the
    folded ones marked '~'."""
    return list(page.evaluate(
        """(p) => [...document.querySelector(`li[data-scope="${p}"] > ul.children`).children]
             .flatMap(li => li.classList.contains('fold')
               ? [...li.querySelectorAll(':scope > details > ul > li')]
                   .map(x => '~' + x.dataset.scope)
               : [li.dataset.scope])""", parent))


def _no_sideways_scroll(page: Page) -> None:
    doc = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert doc[0] <= doc[1], f"page scrolls sideways: scrollWidth {doc[0]} > {doc[1]}"
    cut = page.evaluate(
        """() => [...document.querySelectorAll('.card, table, svg.trend')].filter(e => {
             const card = e.closest('.card'), r = e.getBoundingClientRect(),
                   c = card.getBoundingClientRect();
             return e.scrollWidth > e.clientWidth + 1 || r.right > c.right + 1;
           }).map(e => e.id || e.className.baseVal || e.className)""")
    assert cut == [], f"content wider than its card: {cut}"


# every line of a scope name must end in '/' (returns offenders and how many wraps were seen)
_WRAPS = """() => { const bad = []; let wraps = 0;
  for (const e of document.querySelectorAll('.scope')) {
    const chars = [], w = document.createTreeWalker(e, NodeFilter.SHOW_TEXT);
    for (let t; (t = w.nextNode());) for (let i = 0; i < t.length; i++) {
      const r = document.createRange(); r.setStart(t, i); r.setEnd(t, i + 1);
      const rect = r.getClientRects()[0]; if (rect) chars.push([t.data[i], rect.top]);
    }
    for (let i = 1; i < chars.length; i++) if (chars[i][1] > chars[i - 1][1] + 2) {
      wraps++; if (chars[i - 1][0] !== '/') bad.push(e.textContent + ' after ' + chars[i - 1][0]);
    }
  } return [bad, wraps]; }"""


def test_dashboard_puts_urgent_scopes_first_and_folds_idle_ones_when_many_users_are_idle(
        dashboard: tuple[str, BudgetLimiter]) -> None:
    url, limiter = dashboard
    errors: list[str] = []
    with _browser()() as pw:
        browser = _launch(pw)
        try:
            page = _open(browser, f"{url}/ui?org=acme", 1280, errors)
            order = _order(page, "org:acme")
            assert order[:6] == [
                "org:acme/team:ops",                                 # blocked
                "org:acme/team:research-platform",  # soft exceeded
                "org:acme/team:eng",                                 # 45 %
                "org:acme/user:u1", "org:acme/user:u2", "org:acme/user:u10"], order
            folded = [s for s in order if s.startswith("~")]
            assert len(folded) == IDLE_USERS and folded[:3] == [
                "~org:acme/user:u3", "~org:acme/user:u4", "~org:acme/user:u5"]
            top = [t.get_attribute("title") for t in page.locator("#top td.scope").all()]
            assert top == ["org:acme/team:ops", "org:acme/team:research-platform",
                           "org:acme/team:eng", "org:acme", "org:acme/user:u1",
                           "org:acme/user:u2", "org:acme/user:u10"], top  # idle ones left out
            summary = page.locator('li[data-scope="org:acme"] > ul.children > li.fold summary')
            assert summary.inner_text() == f"{IDLE_USERS} idle users (no usage)"
            assert not page.locator('li[data-scope="org:acme/user:u3"]').is_visible()
            summary.focus()
            page.keyboard.press("Enter")  # a <details>: opens with the keyboard
            assert page.locator('li[data-scope="org:acme/user:u3"]').is_visible()

            # header counts link to exactly those scopes
            blocked = page.locator("#counts a.blocked")
            assert blocked.inner_text() == "1 blocked"
            assert blocked.get_attribute("href") == "#attn-blocked"
            assert page.locator("#counts a.soft_exceeded").inner_text() == "1 soft exceeded"
            links = page.evaluate(
                """() => Object.fromEntries(['blocked', 'soft_exceeded'].map(c => [c,
                     [...document.getElementById('attn-' + c).nextElementSibling
                        .querySelectorAll('a')].map(a => [a.title, a.getAttribute('href')])]))""")
            assert [t for t, _ in links["blocked"]] == ["org:acme/team:ops"]
            assert [t for t, _ in links["soft_exceeded"]] == [
                "org:acme/team:research-platform"]
            for _, href in links["blocked"] + links["soft_exceeded"]:
                assert page.locator(href).count() == 1, href
            blocked.click()
            page.locator("#attention a[href^='#s-']").first.click()
            focused = page.evaluate("document.activeElement.closest('li.node').dataset.scope")
            assert focused == "org:acme/team:ops"
            status = page.locator("#status").inner_text()
            assert "1 blocked, 1 soft exceeded" in status, status

            # a scope that becomes blocked moves to the top; keyboard focus stays where it was
            eng = page.locator('li[data-scope="org:acme/team:eng"] > .head .pick')
            eng.focus()
            limiter.record(Subject("acme", "gpt", user="u2"), Usage(cost=Decimal("6")),
                           request_id="late")  # 300 %: above ops at 250 %
            page.wait_for_function(
                """() => document.querySelector('li[data-scope="org:acme"] > ul.children')
                     .firstElementChild.dataset.scope === 'org:acme/user:u2'""", timeout=8000)
            assert page.evaluate("document.activeElement.closest('li.node').dataset.scope"
                                 ) == "org:acme/team:eng"
            assert "org:acme/user:u2 cost / day is now blocked" in page.locator(
                "#status").inner_text()
            assert page.locator("#counts a.blocked").inner_text() == "2 blocked"
            label = page.locator('li[data-scope="org:acme/user:u2"] .bar').get_attribute(
                "aria-label") or ""
            assert "blocked, hard" in label and "resets" in label, label
        finally:
            browser.close()
    assert errors == [], errors


def _expected_times(iso: str) -> set[str]:
    t = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(ZONE)
    return {f"{t:%a} {t.day} {t:%b} {t:%H:%M}", f"{t:%Y-%m-%d %H:%M}"}


def test_dashboard_shows_money_modes_resets_and_one_zone_when_the_org_is_in_new_york(
        dashboard: tuple[str, BudgetLimiter]) -> None:
    url, _ = dashboard
    errors: list[str] = []
    with _browser()() as pw:
        browser = _launch(pw)
        try:
            page = _open(browser, f"{url}/ui?org=acme", 1280, errors)

            def row(scope: str) -> Any:
                return page.locator(f'li[data-scope="{scope}"] > .limits .limit').first

            eng = row("org:acme/team:eng")
            amounts = eng.locator(".nums .amt")
            assert amounts.all_inner_texts() == ["$2.25", "$5.00"]
            assert [a.get_attribute("title") for a in amounts.all()] == ["$2.250000", "$5.000000"]
            assert "45%" in eng.locator(".nums").inner_text()
            ops = row("org:acme/team:ops").locator(".nums .amt")
            assert ops.all_inner_texts() == ["$0.0025", "$0.001"]
            assert ops.first.get_attribute("title") == "$0.002500"
            tiny = row("org:acme/user:u1").locator(".nums .amt").first
            assert (tiny.inner_text(), tiny.get_attribute("title")) == ("$0.000003", "$0.000003")
            assert "$1.50" in row(
                "org:acme/team:research-platform").locator(".nums").inner_text()
            assert "000000" not in page.locator("#tree").inner_text()  # no six-decimal noise

            # mode and reset time on every limit, in the org's zone
            metas = page.locator("#tree .limit .meta")
            assert metas.count() >= 6
            for meta in metas.all():
                text = meta.text_content() or ""
                assert text.startswith(("hard", "soft")), text
                assert "resets" in text, text
            soft = row("org:acme/team:research-platform").locator(".meta")
            assert (soft.text_content() or "").startswith("soft")
            reset = eng.locator(".meta time")
            midnight = datetime.combine(datetime.now(ZONE).date() + timedelta(days=1),
                                        datetime.min.time(), ZONE)
            assert reset.inner_text() == f"{midnight:%a} {midnight.day} {midnight:%b} 00:00"

            # every time on the page, in the one labelled zone
            zone = page.locator("#zone").inner_text()
            assert "America/New_York" in zone and "org's time zone" in zone, zone
            times = page.evaluate(
                "[...document.querySelectorAll('time')].map(t => [t.dateTime, t.textContent])")
            assert len(times) >= 6
            for iso, text in times:
                assert text in _expected_times(iso), (iso, text)
            status = page.locator("#status").inner_text()
            clock = status.split("Updated ", 1)[1][:8]
            now = datetime.now(ZONE)
            shown = datetime.combine(now.date(), datetime.strptime(clock, "%H:%M:%S").time(), ZONE)
            assert abs((now - shown).total_seconds()) < 120 or \
                abs((now - shown).total_seconds()) > 86280, (status, now)
        finally:
            browser.close()
    assert errors == [], errors


def test_dashboard_fits_without_sideways_scroll_and_wraps_scopes_at_slashes_when_narrow(
        dashboard: tuple[str, BudgetLimiter]) -> None:
    url, _ = dashboard
    errors: list[str] = []
    with _browser()() as pw:
        browser = _launch(pw)
        try:
            seen_wraps = 0
            for width in (1280, 390):
                page = _open(browser, f"{url}/ui/org/acme", width, errors)
                page.screenshot(path=str(ARTIFACTS / f"dashboard-layout-{width}.png"),
                                full_page=True)
                _no_sideways_scroll(page)
                bad, wraps = page.evaluate(_WRAPS)
                assert bad == [], f"scope names broken mid-word at {width}px: {bad}"
                seen_wraps += wraps
                word_break = page.locator("#top td.scope").first.evaluate(
                    "e => getComputedStyle(e).wordBreak")
                assert word_break == "normal"
                page.close()
            assert seen_wraps > 0, "no scope name wrapped: the check above proved nothing"
        finally:
            browser.close()
    assert errors == [], errors


def _axis(page: Page, sel: str) -> list[dict[str, Any]]:
    return list(page.evaluate(
        """(sel) => [...document.querySelectorAll(sel)].map(t => {
             const r = t.getBoundingClientRect();
             return {text: t.textContent, left: r.left, right: r.right, height: r.height,
                     size: parseFloat(getComputedStyle(t).fontSize)}; })""", sel))


def _readable(ticks: list[dict[str, Any]], horizontal: bool) -> None:
    assert len(ticks) >= 3, ticks
    assert all(t["size"] >= 11 and t["height"] >= 10 for t in ticks), ticks
    if horizontal:  # no two labels overlap
        spans = sorted((t["left"], t["right"]) for t in ticks)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans


def test_trend_has_readable_axes_over_the_chosen_span_when_the_ledger_has_history(
        dashboard: tuple[str, BudgetLimiter]) -> None:
    url, _ = dashboard
    errors: list[str] = []
    with _browser()() as pw:
        browser = _launch(pw)
        try:
            for width in (1280, 390):
                page = _open(browser, f"{url}/ui?org=acme", width, errors)
                page.locator('li[data-scope="org:acme/team:eng"] .pick').first.click()
                page.wait_for_function(
                    "() => document.querySelectorAll('#trend rect.tbar').length === 30")
                x = _axis(page, "#trend .x-tick")
                _readable(x, horizontal=True)
                today = datetime.now(ZONE).date()
                assert x[-1]["text"] == f"{today.day} {today:%b}", x  # ends today, org's day
                first = today - timedelta(days=29)
                assert x[0]["text"] == f"{first.day} {first:%b}", x
                y = _axis(page, "#trend .y-tick")
                _readable(y, horizontal=False)
                assert y[0]["text"] == "$0" and all(t["text"].startswith("$") for t in y)
                titles = [t.text_content() for t in page.locator("#trend .axis-title").all()]
                assert titles == ["USD per day", "days in America/New_York"], titles
                page.select_option("#trend-gran", "month")
                # the day chart also has >= 12 bars: wait for the month chart itself
                page.wait_for_function(
                    "() => (document.querySelector('#trend .y-title') || {}).textContent"
                    " === 'USD per month'"
                    " && document.querySelectorAll('#trend rect.tbar').length >= 12")
                months = [t["text"] for t in _axis(page, "#trend .x-tick")]
                assert months[-1] == f"{today:%b %Y}", months
                _no_sideways_scroll(page)
                page.close()
        finally:
            browser.close()
    assert errors == [], errors


def _with_forecast(doc: dict[str, Any]) -> dict[str, Any]:
    """The tree as the forecast branch serves it: eng's budget projected past its limit."""
    end = datetime.combine(datetime.now(ZONE).date() + timedelta(days=1), datetime.min.time(),
                           ZONE)
    for node in doc["scopes"]:
        for lim in node["limits"]:
            lim["forecast"] = None
            if node["scope"] == "org:acme/team:eng":
                lim["forecast"] = {"projected": "6.400000", "period_end": end.isoformat(),
                                   "exhausts_at": (end - timedelta(hours=3)).isoformat(),
                                   "will_exceed": True, "window_seconds": 3600}
            elif node["scope"] == "org:acme" and lim["period"] == "month":
                month_end = (date.today().replace(day=1) + timedelta(days=32)).replace(day=1)
                lim["forecast"] = {
                    "projected": "310.000000",
                    "period_end": datetime.combine(month_end, datetime.min.time(),
                                                   ZONE).isoformat(),
                    "exhausts_at": None, "will_exceed": False, "window_seconds": 86400 * 7}
    return doc


def test_dashboard_draws_the_forecast_and_ranks_it_when_the_tree_has_forecasts(
        dashboard: tuple[str, BudgetLimiter]) -> None:
    url, _ = dashboard
    errors: list[str] = []
    with _browser()() as pw:
        browser = _launch(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))

            def stub(route: Any) -> None:
                response = route.fetch()
                route.fulfill(response=response, body=json.dumps(_with_forecast(response.json())))

            page.route("**/v1/ui/tree?*", stub)
            page.goto(f"{url}/ui?org=acme")
            page.locator('li[data-scope="org:acme/team:eng"].state-forecast').wait_for(
                timeout=8000)
            order = _order(page, "org:acme")
            assert order[:3] == ["org:acme/team:ops",
                                 "org:acme/team:research-platform",
                                 "org:acme/team:eng"], order
            assert page.locator("#counts a.forecast").inner_text() == "1 forecast to exceed"
            meta = page.locator('li[data-scope="org:acme/team:eng"] > .limits .meta').inner_text()
            assert "forecast $6.40 at reset (exceeds" in meta, meta
            page.locator('li[data-scope="org:acme/team:eng"] .pick').first.click()
            line = page.locator("#forecast svg .forecast-line")
            line.wait_for(timeout=8000)
            assert "exceeds" in (line.get_attribute("class") or "")
            assert page.locator("#forecast svg .limit-line").count() == 1
            assert page.locator("#forecast svg .exhaust").count() == 1
            _readable(_axis(page, "#forecast .y-tick"), horizontal=False)
            hours = _axis(page, "#forecast .x-tick")  # a day's budget: its hours
            _readable(hours, horizontal=True)
            texts = [t["text"] for t in hours]
            assert len(texts) >= 4 and all(len(t) == 5 and t.endswith(":00") for t in texts[1:-1])
            tomorrow = datetime.now(ZONE).date() + timedelta(days=1)
            assert texts[-1] == f"{tomorrow.day} {tomorrow:%b}", texts  # the period's end
            page.locator("#forecast").screenshot(path=str(ARTIFACTS / "dashboard-forecast-day.png"))
            page.locator('li[data-scope="org:acme"] .pick').first.click()
            page.locator("#forecast svg .forecast-line:not(.exceeds)").wait_for(timeout=8000)
            _readable(_axis(page, "#forecast .x-tick"), horizontal=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-forecast.png"), full_page=True)
            _no_sideways_scroll(page)
            page.set_viewport_size({"width": 390, "height": 844})  # charts redraw to fit
            page.wait_for_function(
                "() => document.querySelector('#forecast svg').getAttribute('width') < 390")
            _no_sideways_scroll(page)
            _readable(_axis(page, "#forecast .x-tick"), horizontal=True)
        finally:
            browser.close()
    assert errors == [], errors


def test_readme_screenshot_is_retaken_on_request(dashboard: tuple[str, BudgetLimiter]) -> None:
    """``BUDGETLIMITER_UPDATE_SCREENSHOT=1`` rewrites docs/dashboard.png from this scenario."""
    url, _ = dashboard
    errors: list[str] = []
    with _browser()() as pw:
        browser = _launch(pw)
        try:
            page = _open(browser, f"{url}/ui?org=acme", 1280, errors)
            page.locator('li[data-scope="org:acme/team:eng"] .pick').first.click()
            page.wait_for_function(
                "() => document.querySelectorAll('#trend rect.tbar').length === 30")
            page.locator("#forecast > *").first.wait_for(timeout=8000)
            path = ARTIFACTS / "dashboard-readme.png"
            if os.environ.get("BUDGETLIMITER_UPDATE_SCREENSHOT") == "1":
                path = ROOT / "docs" / "dashboard.png"
            page.screenshot(path=str(path), full_page=True)
        finally:
            browser.close()
    assert errors == [], errors
