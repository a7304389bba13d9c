"""Calendar-aligned periods: month ends, DST days, week starts, odd offsets, tiling."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from budgetlimiter.policy.periods import (
    PeriodKind,
    Window,
    next_window,
    parse_timezone,
    previous_window,
    window_at,
    windows_between,
)

UTC = ZoneInfo("UTC")
NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
KOLKATA = ZoneInfo("Asia/Kolkata")
HOUR = 3_600_000


def ms(text: str) -> int:
    """Epoch ms of an ISO timestamp with offset."""
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def local(w: Window, tz: ZoneInfo) -> tuple[str, str]:
    return w.start.astimezone(tz).isoformat(), w.end.astimezone(tz).isoformat()


def test_month_ends_and_leap_years() -> None:
    w = window_at(PeriodKind.MONTH, ms("2026-01-31T23:59:59+00:00"), UTC)
    assert w.id == "2026-01"
    assert w.end == datetime(2026, 2, 1, tzinfo=timezone.utc)
    feb = next_window(w, UTC)
    assert feb.id == "2026-02" and feb.duration_ms == 28 * 24 * HOUR
    leap = window_at(PeriodKind.MONTH, ms("2028-02-29T12:00:00+00:00"), UTC)
    assert leap.id == "2028-02" and leap.duration_ms == 29 * 24 * HOUR
    dec = window_at(PeriodKind.MONTH, ms("2026-12-31T23:59:59.999+00:00"), UTC)
    assert dec.id == "2026-12"
    jan = next_window(dec, UTC)
    assert jan.id == "2027-01" and jan.start == datetime(2027, 1, 1, tzinfo=timezone.utc)
    assert previous_window(jan, UTC) == dec
    day = window_at(PeriodKind.DAY, ms("2028-02-29T00:00:00+00:00"), UTC)
    assert day.id == "2028-02-29" and next_window(day, UTC).id == "2028-03-01"


def test_month_in_local_timezone() -> None:
    # 2026-11-01 02:00 UTC is still October 31 in New York
    w = window_at(PeriodKind.MONTH, ms("2026-11-01T02:00:00+00:00"), NY)
    assert w.id == "2026-10"
    assert local(w, NY) == ("2026-10-01T00:00:00-04:00", "2026-11-01T00:00:00-04:00")


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        (NY, "2026-03-08", 23),
        (NY, "2026-11-01", 25),
        (BERLIN, "2026-03-29", 23),
        (BERLIN, "2026-10-25", 25),
        (NY, "2026-07-01", 24),
    ],
)
def test_dst_day_lengths(tz: ZoneInfo, day: str, hours: int) -> None:
    noon = int(datetime.fromisoformat(f"{day}T12:00:00").replace(tzinfo=tz).timestamp() * 1000)
    w = window_at(PeriodKind.DAY, noon, tz)
    assert w.id == day
    assert w.duration_ms == hours * HOUR
    assert w.start.astimezone(tz).replace(tzinfo=None).isoformat() == f"{day}T00:00:00"


def test_fall_back_repeated_hour_gives_distinct_windows() -> None:
    first = window_at(PeriodKind.HOUR, ms("2026-11-01T01:30:00-04:00"), NY)
    second = window_at(PeriodKind.HOUR, ms("2026-11-01T01:30:00-05:00"), NY)
    assert first != second
    assert (first.id, second.id) == ("20261101T0500Z", "20261101T0600Z")
    assert first.end_ms == second.start_ms
    assert first.duration_ms == second.duration_ms == HOUR
    b1 = window_at(PeriodKind.HOUR, ms("2026-10-25T02:30:00+02:00"), BERLIN)
    b2 = window_at(PeriodKind.HOUR, ms("2026-10-25T02:30:00+01:00"), BERLIN)
    assert b1.id == "20261025T0000Z" and b2.id == "20261025T0100Z"


def test_spring_forward_hours() -> None:
    before = window_at(PeriodKind.HOUR, ms("2026-03-08T01:59:59-05:00"), NY)
    after = next_window(before, NY)
    assert before.id == "20260308T0600Z"
    assert local(after, NY)[0] == "2026-03-08T03:00:00-04:00"
    assert after.start_ms == before.end_ms


def test_day_starting_in_dst_gap() -> None:
    # America/Havana springs forward at local midnight: 00:00 does not exist that day
    havana = ZoneInfo("America/Havana")
    w = window_at(PeriodKind.DAY, ms("2026-03-08T12:00:00-04:00"), havana)
    assert w.id == "2026-03-08"
    assert w.start.astimezone(havana).isoformat() == "2026-03-08T01:00:00-04:00"
    assert previous_window(w, havana).end_ms == w.start_ms


def test_week_start_monday_and_sunday() -> None:
    sat = ms("2026-11-28T12:00:00+00:00")  # a Saturday
    mon = window_at(PeriodKind.WEEK, sat, UTC, 0)
    sun = window_at(PeriodKind.WEEK, sat, UTC, 6)
    assert mon.id == "2026-11-23W" and mon.duration_ms == 7 * 24 * HOUR
    assert sun.id == "2026-11-22W"
    sunday = ms("2026-11-29T12:00:00+00:00")
    assert window_at(PeriodKind.WEEK, sunday, UTC, 0).id == "2026-11-23W"
    assert window_at(PeriodKind.WEEK, sunday, UTC, 6).id == "2026-11-29W"
    dst_week = window_at(PeriodKind.WEEK, ms("2026-11-01T12:00:00-05:00"), NY, 6)
    assert dst_week.id == "2026-11-01W" and dst_week.duration_ms == (7 * 24 + 1) * HOUR


def test_half_hour_offset_zone_hours() -> None:
    w = window_at(PeriodKind.HOUR, ms("2026-11-29T10:45:00+05:30"), KOLKATA)
    assert local(w, KOLKATA) == ("2026-11-29T10:00:00+05:30", "2026-11-29T11:00:00+05:30")
    assert w.id == "20261129T0430Z"
    m = window_at(PeriodKind.MINUTE, ms("2026-11-29T10:45:30.5+05:30"), KOLKATA)
    assert m.id == "20261129T0515Z" and m.duration_ms == 60_000


def test_ids_are_key_safe() -> None:
    allowed = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-:TWZ")
    now = ms("2026-11-29T05:12:34+00:00")
    for kind in PeriodKind:
        w = window_at(kind, now, NY, 3)
        assert set(w.id) <= allowed, w.id
    assert window_at(PeriodKind.DAY, now, UTC).id == "2026-11-29"
    assert window_at(PeriodKind.HOUR, now, UTC).id == "20261129T0500Z"
    assert window_at(PeriodKind.MINUTE, now, UTC).id == "20261129T0512Z"
    assert window_at(PeriodKind.MONTH, now, UTC).id == "2026-11"


def test_previous_next_and_between() -> None:
    w = window_at(PeriodKind.DAY, ms("2026-11-01T12:00:00-05:00"), NY)
    assert previous_window(w, NY).id == "2026-10-31"
    assert next_window(w, NY).id == "2026-11-02"
    days = list(
        windows_between(
            PeriodKind.DAY, ms("2026-10-30T12:00:00-04:00"), ms("2026-11-02T00:00:00-05:00"), NY
        )
    )
    assert [d.id for d in days] == ["2026-10-30", "2026-10-31", "2026-11-01"]
    assert list(windows_between(PeriodKind.DAY, 10, 10, NY)) == []


def test_cache_returns_same_window_and_handles_zones() -> None:
    now = ms("2026-11-29T05:12:34+00:00")
    a = window_at(PeriodKind.DAY, now, NY)
    assert window_at(PeriodKind.DAY, now + 1000, NY) is a
    assert window_at(PeriodKind.DAY, now, UTC).id == "2026-11-29"
    assert window_at(PeriodKind.DAY, now, NY).id == "2026-11-29"
    assert window_at(PeriodKind.DAY, ms("2026-11-29T03:00:00+00:00"), NY).id == "2026-11-28"


def test_parse_timezone() -> None:
    assert parse_timezone("Europe/Berlin").key == "Europe/Berlin"
    for bad in ("Mars/Olympus", "", "../etc/passwd"):
        with pytest.raises(ValueError, match="timezone"):
            parse_timezone(bad)


ZONES = [UTC, NY, BERLIN, KOLKATA, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("America/Havana"),
         ZoneInfo("Asia/Kathmandu"), ZoneInfo("Pacific/Apia")]
LO = ms("1990-01-01T00:00:00+00:00")
HI = ms("2060-01-01T00:00:00+00:00")


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=LO, max_value=HI),
    st.sampled_from(list(PeriodKind)),
    st.sampled_from(ZONES),
    st.integers(min_value=0, max_value=6),
)
def test_window_contains_now_and_windows_tile(
    now: int, kind: PeriodKind, tz: ZoneInfo, week_start: int
) -> None:
    w = window_at(kind, now, tz, week_start)
    assert w.start_ms <= now < w.end_ms
    nxt = next_window(w, tz, week_start)
    prev = previous_window(w, tz, week_start)
    assert nxt.start_ms == w.end_ms and prev.end_ms == w.start_ms
    assert len({prev.id, w.id, nxt.id}) == 3
    assert window_at(kind, w.start_ms, tz, week_start) == w
    assert window_at(kind, w.end_ms - 1, tz, week_start) == w
