"""The dashboard's admin panel in headless Chromium: an admin edits a scope's limit, the
change is enforced and shows in the audit log; a stale edit is refused; no console errors."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from budgetlimiter import Usage
from budgetlimiter.server import parse_tokens

from . import test_dashboard
from .test_dashboard import ALICE, ARTIFACTS, Start, _browser, _launch

pytestmark = pytest.mark.redis
start = test_dashboard.start  # the fixture, with the dashboard tests' policy
ADMIN = "boss:b" + "k" * 20 + ":admin"
ADMIN_SECRET = "b" + "k" * 20


def test_an_admin_edits_a_limit_and_reads_the_audit_log(start: Start, tmp_path: Path) -> None:
    sync_playwright = _browser()
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    live, limiter = start(tokens=parse_tokens([ADMIN]), db_url=f"sqlite:///{tmp_path / 'a.db'}")
    assert limiter.check(ALICE, Usage(input_tokens=1000), dry_run=True).allowed
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = _launch(pw)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{live.url}/ui?org=acme&token={ADMIN_SECRET}")
            # open the panel; a click during a layout shift (the tree renders as its data
            # arrives, moving the panel down) can land elsewhere on a loaded machine: the
            # panel's own open attribute says whether it took, and only then is it retried
            for _ in range(5):
                page.locator("#adm-h").click()
                try:
                    page.locator("#adm-details[open]").wait_for(timeout=2000)
                    break
                except PlaywrightTimeout:
                    continue
            page.fill("#adm-scope", "org:acme/team:eng")
            page.click("text=Load limits")
            amount = page.locator("#adm-amount-0")
            amount.wait_for(timeout=5000)
            assert amount.input_value() == "5"
            amount.fill("0")
            page.fill("#adm-why", "freeze eng")
            page.click("#adm-save")
            page.locator("#adm-msg.ok >> text=Saved as version 1").wait_for(timeout=5000)
            # the log already lists the sidecar's start: wait for the change's own row (the
            # log reloads after the save), then check it is the newest
            page.locator("#adm-audit-table tbody tr", has_text="override.set").first.wait_for(
                timeout=10000)
            row = page.locator("#adm-audit-table tbody tr").first
            text = row.inner_text()
            assert "boss" in text and "override.set" in text and "freeze eng" in text
            assert "cost 0 per day hard (override v1.limits[0])" in text
            page.screenshot(path=str(ARTIFACTS / "dashboard-admin.png"), full_page=True)

            # someone else changes it meanwhile: the page's next save is refused
            with httpx.Client(base_url=live.url, timeout=10) as c:
                other = c.put("/v1/limits/org%3Aacme%2Fteam%3Aeng", headers={
                    "Authorization": f"Bearer {ADMIN_SECRET}"}, json={
                    "limits": [{"metric": "cost", "amount": "1", "period": "day"}],
                    "why": "other admin"})
                assert other.status_code == 200
            page.locator("#adm-amount-0").fill("2")
            page.fill("#adm-why", "late edit")
            page.click("#adm-save")
            page.locator("#adm-msg.error >> text=Changed meanwhile").wait_for(timeout=5000)
        finally:
            browser.close()
    limiter.run(limiter.engine.poll_overrides())
    assert not limiter.check(ALICE, Usage(input_tokens=2_000_000), dry_run=True).allowed
    # the refused save is the browser's only error: a 412 it reported on the page
    assert all("412" in e for e in errors), errors
