"""What the real console script (a subprocess) prints against a real redis-server: warnings for
orgs and teams the policy does not declare (errors with --strict), --format on every data
command, and `top --org` with a measured rate."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from pathlib import Path

import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage, load_policy

from .cli_proc import ALICE, DAN, POLICY, Cli, one_error_line

pytestmark = pytest.mark.redis


@pytest.fixture
def cli(fresh_redis, tmp_path: Path) -> Cli:
    return Cli(cwd=tmp_path, redis=fresh_redis.url, db=f"sqlite:///{tmp_path}/bl.db")


@pytest.fixture
def limiter(fresh_redis):
    bl = BudgetLimiter(load_policy(POLICY), fresh_redis.url, timeout=2)
    yield bl
    bl.close()


# -- a typo in an org is not silent -------------------------------------------------------
UNDECLARED = [
    (("check", "--org", "acem", "--agent", "gpt-4o"), "org 'acem' is not declared"),
    (("record", "--org", "acem", "--agent", "gpt-4o", "--request-id", "t1"),
     "org 'acem' is not declared"),
    (("check", "--org", "acme", "--team", "engg", "--agent", "gpt-4o"),
     "team 'engg' is not declared under org 'acme'"),
    (("status", "org:nosuch"), "org 'nosuch' is not declared"),
    (("adjust", "org:nosuch", "--metric", "cost", "--amount", "1", "--why", "x"),
     "org 'nosuch' is not declared"),
    (("release", "r1", "--org", "acem"), "org 'acem' is not declared"),
    (("top", "--org", "acem", "--interval", "0"), "org 'acem' is not declared"),
]


@pytest.mark.parametrize("args,warning", UNDECLARED, ids=lambda a: "-".join(a[:2])
                         if isinstance(a, tuple) else "")
def test_undeclared_org_or_team_warns_and_strict_refuses(cli: Cli, fresh_redis, args,
                                                         warning: str) -> None:
    strict = cli("--strict", *args)
    assert strict.code == 2
    assert warning in one_error_line(strict) and strict.err.endswith("(--strict)\n")
    assert strict.out == ""
    assert fresh_redis.client().keys("*") == []  # refused before anything was written
    done = cli(*args)
    assert f"warning: {warning}" in done.err and "only" in done.err
    assert "warning" not in done.out


def test_declared_scopes_and_undeclared_users_need_no_warning(cli: Cli) -> None:
    for args in (("check", *ALICE), ("check", "--org", "acme", "--team", "eng", "--user",
                                     "someone-new", "--agent", "gpt-4o"),
                 ("--strict", "status", "org:acme/team:research/user:nobody-listed")):
        done = cli(*args)
        assert done.code == 0 and done.err == "", (args, done.err)


def test_a_policy_without_orgs_warns_about_none(cli: Cli, tmp_path: Path) -> None:
    policy = tmp_path / "defaults.yaml"
    policy.write_text("defaults: {user: {limits: [{metric: cost, amount: '5', period: day}]}}\n")
    defaults_only = Cli(cwd=tmp_path, redis=cli.redis, policy=str(policy))
    done = defaults_only("--strict", "check", "--org", "anyone", "--user", "u", "--agent",
                         "gpt-4o")
    assert (done.code, done.err) == (0, "")


# -- --format on every data command ---------------------------------------------------------
def parse(fmt: str, out: str) -> list[dict[str, str]]:
    if fmt == "json":
        data = json.loads(out)
        return data if isinstance(data, list) else [data]
    return list(csv.DictReader(io.StringIO(out)))


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_commands_that_ignored_format_honour_it(cli: Cli, limiter: BudgetLimiter,
                                                tmp_path: Path, fmt: str) -> None:
    limiter.record(Subject("acme", "claude-sonnet", team="research", user="dan"),
                   Usage(input_tokens=100_000), request_id="seed")
    rows = parse(fmt, cli("--format", fmt, "reconcile", "--once").out)
    assert rows[0]["flushes"] in (1, "1") and set(rows[0]) >= {"orgs", "rows", "delivered"}
    valid = parse(fmt, cli("--format", fmt, "policy", "validate", POLICY).out)
    assert valid[0]["valid"] in (True, "true") and valid[0]["orgs"] in (1, "1")
    bad = tmp_path / "bad.yaml"
    bad.write_text("orgs:\n  acme:\n    limits:\n      - {metric: cost, amount: '-5', "
                   "period: day}\n")
    broken = cli("--format", fmt, "policy", "validate", str(bad))
    assert broken.code == 2 and "bad.yaml:4" in broken.err
    row = parse(fmt, broken.out)[0]
    assert row["valid"] in (False, "false") and row["line"] in (4, "4")
    assert row["path"] == "orgs.acme.limits[0].amount"
    record = parse(fmt, cli("--format", fmt, "record", *DAN, "--input-tokens", "1000",
                            "--request-id", "r1").out)
    assert record[0]["status"] == "recorded" and record[0]["cost"] == "0.003000"
    rid = parse(fmt, cli("--format", fmt, "check", *ALICE, "--reserve").out)[0][
        "reservation_id"]
    released = parse(fmt, cli("--format", fmt, "release", rid, "--org", "acme").out)
    assert released[0]["status"] == "released"
    top = cli("--format", fmt, "top", "-n", "3", "--interval", "0")
    assert "█" not in top.out and "bar" not in parse(fmt, top.out)[0]
    assert parse(fmt, cli("--format", fmt, "restore").out)[0]["orgs"] in (1, "1")
    assert parse(fmt, cli("--format", fmt, "alerts", "requeue").out)[0]["requeued"] in (0, "0")


# -- top ------------------------------------------------------------------------------------
def test_top_filters_by_org_and_measures_the_rate(cli: Cli, limiter: BudgetLimiter) -> None:
    dan = Subject("acme", "claude-sonnet", team="research", user="dan")
    other = Subject("globex", "gpt-4o", user="bob")  # undeclared org: top-level defaults
    limiter.record(other, Usage(input_tokens=1000))
    limiter.record(dan, Usage(input_tokens=10))
    stop = threading.Event()

    def spend() -> None:  # $0.000300 every 50 ms while top measures
        while not stop.is_set():
            limiter.record(dan, Usage(input_tokens=100))
            time.sleep(0.05)

    started = time.monotonic()
    proc = cli.popen("--format", "json", "top", "--org", "acme", "--interval", "3")
    spender = threading.Thread(target=spend)
    spender.start()
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        spender.join()
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, err
    rows = json.loads(out)
    assert rows and all(r["scope"].startswith("org:acme") for r in rows)
    assert "bar" not in rows[0]
    dan_day = next(r for r in rows if r["scope"] == "org:acme/team:research/user:dan"
                   and r["period"] == "day")
    # 3 s of $0.0003 per 50 ms: about $0.36/min; scheduling on a busy machine slows the
    # spender, never speeds it up past one record per 50 ms
    assert 0 < float(dan_day["per_min"]) <= 0.0003 * 60 / 0.05 * 1.05, (dan_day, elapsed)
    rates = [r for r in rows if r["period"].startswith("per ")]
    assert rates and all(r["per_min"] == "" for r in rates)  # no rate of a rate limit


def test_top_without_an_interval_shows_no_rate(cli: Cli, limiter: BudgetLimiter) -> None:
    limiter.record(Subject("acme", "gpt-4o", team="eng", user="alice"), Usage(1000))
    rows = cli("--format", "json", "top", "--interval", "0").json()
    assert rows and all(r["per_min"] == "" for r in rows)
    assert cli("top", "--watch", "--interval", "0").code == 2


# -- forecast -----------------------------------------------------------------------------

def test_forecast_of_a_scope_read_once_is_unknown_with_the_reason(cli: Cli) -> None:
    assert cli("record", *ALICE, "--input-tokens", "1000", "--request-id", "f1").code == 0
    done = cli("--format", "json", "forecast", "org:acme/team:eng/user:alice")
    assert done.code == 0, done.err
    rows = done.json()
    assert rows and all(r["projected"] is None and r["exhausts"] == "unknown" for r in rows)
    assert all("apart" in r["why_unknown"] or "started" in r["why_unknown"] for r in rows)
    assert rows[0]["used"] != "0.000000" or rows[0]["metric"] != "cost"
    status = cli("--format", "json", "status", "org:acme/team:eng/user:alice").json()
    assert {r["exhausts"] for r in status} <= {"unknown", ""}
    top = cli("--format", "json", "top", "--org", "acme", "--interval", "0").json()
    assert top and {r["exhausts"] for r in top} <= {"unknown", ""}


def test_forecast_refuses_a_bad_scope(cli: Cli) -> None:
    done = cli("forecast", "team:eng")
    assert done.code == 2 and "scope" in one_error_line(done)


# -- a rate's burst is a column of its own ------------------------------------------------
BURST_POLICY = """
version: 1
orgs:
  acme:
    rates:
      - {metric: requests, limit: 10, per: second, burst: 30}
    limits:
      - {metric: cost, amount: "5", period: day}
"""


def test_status_and_policy_show_print_a_rates_burst_next_to_its_limit(cli: Cli,
                                                                      tmp_path: Path) -> None:
    # a rate of 10/s with burst 30 has 30 remaining when idle: without a burst column the
    # table read "limit 10, remaining 30"
    (tmp_path / "burst.yaml").write_text(BURST_POLICY)
    cli.policy = str(tmp_path / "burst.yaml")
    rows = list(csv.DictReader(io.StringIO(cli("--format", "csv", "status", "org:acme").out)))
    by_metric = {r["metric"]: r for r in rows}
    assert (by_metric["invocations"]["limit"], by_metric["invocations"]["burst"],
            by_metric["invocations"]["remaining"]) == ("10", "30", "30")
    assert by_metric["cost"]["burst"] == ""  # a budget has none
    shown = list(csv.DictReader(io.StringIO(
        cli("--format", "csv", "policy", "show", "--org", "acme", "--agent", "x").out)))
    rate = next(r for r in shown if r["kind"] == "rate")
    assert (rate["amount"], rate["burst"], rate["period"]) == ("10", "30", "per second")
    assert next(r for r in shown if r["kind"] == "budget")["burst"] == ""


def test_status_says_a_used_up_budget_exhausts_now_even_with_one_reading(cli: Cli,
                                                                          tmp_path: Path) -> None:
    # one reading is too little for a pace ("unknown"), but a budget already used up needs
    # none: its exhausts cell is "now"
    (tmp_path / "burst.yaml").write_text(BURST_POLICY)
    cli.policy = str(tmp_path / "burst.yaml")
    assert cli("record", "--org", "acme", "--agent", "x", "--cost", "7",
               "--request-id", "over").code == 0
    rows = list(csv.DictReader(io.StringIO(cli("--format", "csv", "status", "org:acme").out)))
    by_metric = {r["metric"]: r for r in rows}
    assert (by_metric["cost"]["state"], by_metric["cost"]["exhausts"]) == ("blocked", "now")
    assert by_metric["invocations"]["exhausts"] == ""  # a rate limit has no forecast
