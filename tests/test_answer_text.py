"""A limit's and a decision's JSON text is the documented one whatever the values: money as
decimal USD with six decimals, times as ``datetime.isoformat()`` (the answers are
built without Decimal and with cached parts; these pin them to the plain formulas)."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from decimal import Decimal

from budgetlimiter import Metric
from budgetlimiter.results import LimitStatus, ms_text, ms_to_datetime
from budgetlimiter.subject import Scope

SCOPES = [Scope.parse("org:acme"), Scope.parse("org:acme/team:eng/user:alice")]


def _plain(s: LimitStatus) -> dict[str, object]:
    def money(v: int) -> object:
        return f"{Decimal(v) / Decimal(1_000_000):.6f}" if s.metric is Metric.COST else v

    cap = s.limit if s.burst is None else s.burst
    pct = (100.0 if s.taken > 0 else 0.0) if cap <= 0 else 100.0 * s.taken / cap
    return {"scope": str(s.scope), "kind": s.kind, "metric": s.metric.value,
            "period": s.period, "mode": s.mode, "limit": money(s.limit), "burst": s.burst,
            "requested": money(s.requested), "taken": money(s.taken),
            "used": None if s.used is None else money(s.used),
            "reserved": None if s.reserved is None else money(s.reserved),
            "remaining": money(max(0, cap - s.taken)), "carry": money(s.carry),
            "percent": round(pct, 2),
            "resets_at": s.resets_at.isoformat() if s.resets_at else None, "state": s.state}


def test_limit_to_dict_equals_the_plain_formulas_for_any_values() -> None:
    rnd = random.Random(7)
    for _ in range(20_000):
        rate = rnd.random() < 0.3
        s = LimitStatus(
            rnd.choice(SCOPES), "rate" if rate else "budget", rnd.choice(list(Metric)),
            rnd.choice(["day", "per minute"]), rnd.choice(["hard", "soft"]),
            rnd.choice([0, -5, 1, 10**6, rnd.randrange(-10**9, 10**12)]),
            rnd.choice([0, 1, -3, rnd.randrange(-10**9, 10**12)]),
            rnd.choice([None, rnd.randrange(-10**6, 10**12)]),
            rnd.choice([None, rnd.randrange(0, 10**12)]), rnd.randrange(-10**6, 10**9),
            rnd.choice([None, datetime.fromtimestamp(rnd.randrange(0, 4 * 10**9),
                                                     tz=timezone.utc)]),
            rnd.choice(["ok", "blocked"]), requested=rnd.randrange(0, 10**9),
            burst=rnd.choice([None, 0, 5, rnd.randrange(1, 10**6)]))
        got, want = s.to_dict(), _plain(s)
        assert got == want
        assert list(got) == list(want)
        assert [type(v) for v in got.values()] == [type(v) for v in want.values()]


def test_reset_times_keep_their_zone_when_equal_instants_were_formatted_before() -> None:
    from zoneinfo import ZoneInfo

    utc = datetime(2026, 12, 3, 5, 0, tzinfo=timezone.utc)
    ny = utc.astimezone(ZoneInfo("America/New_York"))
    for when in (utc, ny, utc):
        s = LimitStatus(SCOPES[0], "budget", Metric.COST, "day", "hard", 1, 0, None, None, 0,
                        when, "ok")
        assert s.to_dict()["resets_at"] == when.isoformat()


def test_expiry_text_equals_isoformat_of_the_datetime() -> None:
    rnd = random.Random(11)
    samples = [0, 999, 1000, 1_796_250_000_000, 1_796_250_000_001]
    samples += [rnd.randrange(0, 4 * 10**12) for _ in range(20_000)]
    samples += [rnd.randrange(0, 4 * 10**9) * 1000 for _ in range(2_000)]
    for ms in samples:
        assert ms_text(ms) == ms_to_datetime(ms).isoformat()
