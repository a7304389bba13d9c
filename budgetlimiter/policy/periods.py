"""Calendar-aligned budget periods in an IANA timezone (pure, no I/O).

A :class:`Window` is a half-open interval ``[start_ms, end_ms)`` of epoch milliseconds with a
stable textual id that is safe inside Redis keys.

* ``minute``: a UTC minute (identical to the local minute for every whole-minute UTC offset);
  id is the UTC start, ``20261129T0512Z``.
* ``hour``: the local clock hour converted to UTC. An offset change always starts a new window,
  so the repeated hour of a fall-back day gives two distinct windows and a half-hour DST shift
  gives a short window. Id is the UTC start instant, ``20261129T0500Z`` (seconds are appended,
  ``...T050012Z``, in the rare case of a start that is not on a whole UTC minute).
* ``day``: local midnight to the next local midnight (23 or 25 hours on DST days); if local
  midnight does not exist (DST gap) the day starts at the first instant that exists after it.
  Id ``2026-11-29``.
* ``week``: local midnight of the first day (``week_start``: 0=Monday .. 6=Sunday), 7 local
  days. Id is the local date of the first day followed by ``W``: ``2026-11-23W``.
* ``month``: local midnight of the first of the month to the first of the next. Id ``2026-11``.

:func:`window_at` is on the hot path: the last window per ``(kind, tz, week_start)`` is cached
and returned while ``now_ms`` stays inside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from enum import Enum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "PeriodKind",
    "Window",
    "next_window",
    "parse_timezone",
    "previous_window",
    "window_at",
    "windows_between",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
_MINUTE_MS = 60_000
_HOUR_MS = 3_600_000
_CACHE_MAX = 4096


class PeriodKind(str, Enum):
    """Length of a budget period."""

    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Window:
    """One period: ``[start_ms, end_ms)`` in epoch milliseconds, with a key-safe ``id``."""

    kind: PeriodKind
    id: str
    start_ms: int
    end_ms: int

    @property
    def start(self) -> datetime:
        """Inclusive start as an aware UTC datetime."""
        return _EPOCH + self.start_ms * _MS

    @property
    def end(self) -> datetime:
        """Exclusive end as an aware UTC datetime."""
        return _EPOCH + self.end_ms * _MS

    @property
    def duration_ms(self) -> int:
        """Length of the window in milliseconds."""
        return self.end_ms - self.start_ms

    def contains(self, ms: int) -> bool:
        """Whether the epoch-ms instant ``ms`` lies in this window."""
        return self.start_ms <= ms < self.end_ms


def parse_timezone(name: str) -> ZoneInfo:
    """Return the :class:`ZoneInfo` for an IANA name, or raise ``ValueError`` clearly."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(
            f"timezone must be a non-empty IANA name like 'Europe/Berlin', got {name!r}"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown timezone {name!r}: expected an IANA name like 'UTC', 'Europe/Berlin' "
            "or 'America/New_York'"
        ) from None


# --------------------------------------------------------------------------- time helpers


def _utc(ms: int) -> datetime:
    return _EPOCH + ms * _MS


def _to_ms(dt: datetime) -> int:
    return (dt - _EPOCH) // _MS


def _local(ms: int, tz: ZoneInfo) -> datetime:
    return _utc(ms).astimezone(tz)


def _offset_s(sec: int, tz: ZoneInfo) -> timedelta | None:
    return _local(sec * 1000, tz).utcoffset()


def _naive_local(ms: int, tz: ZoneInfo) -> datetime:
    return _local(ms, tz).replace(tzinfo=None, fold=0)


def _first_instant_at_or_after(local: datetime, tz: ZoneInfo) -> int:
    """Epoch ms of the first instant whose local wall time is ``>= local`` (naive).

    For an existing local time this is its first occurrence; for a time inside a DST gap it is
    the transition instant (the first instant that exists after it).
    """
    u0 = _to_ms(local.replace(tzinfo=tz, fold=0))
    if _naive_local(u0, tz) == local:
        return u0
    u1 = _to_ms(local.replace(tzinfo=tz, fold=1))
    lo, hi = min(u0, u1), max(u0, u1)
    # Gap: find the first whole second in [lo, hi] whose local time is >= local.
    lo_s, hi_s = lo // 1000, -(-hi // 1000)
    while lo_s < hi_s:
        mid = (lo_s + hi_s) // 2
        if _naive_local(mid * 1000, tz) >= local:
            hi_s = mid
        else:
            lo_s = mid + 1
    return lo_s * 1000


def _find_change(a_s: int, b_s: int, tz: ZoneInfo) -> int:
    """First whole second in ``(a_s, b_s]`` whose UTC offset differs from the one at ``a_s``."""
    ref = _offset_s(a_s, tz)
    lo, hi = a_s + 1, b_s
    while lo < hi:
        mid = (lo + hi) // 2
        if _offset_s(mid, tz) != ref:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _utc_id(ms: int) -> str:
    dt = _utc(ms)
    text = f"{dt.year:04d}{dt.month:02d}{dt.day:02d}T{dt.hour:02d}{dt.minute:02d}"
    if dt.second or dt.microsecond:
        text += f"{dt.second:02d}"
        if dt.microsecond:
            text += f"{dt.microsecond // 1000:03d}"
    return text + "Z"


def _date_id(d: date) -> str:
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}"


# --------------------------------------------------------------------------- per kind


def _minute(now_ms: int) -> Window:
    start = now_ms - now_ms % _MINUTE_MS
    return Window(PeriodKind.MINUTE, _utc_id(start), start, start + _MINUTE_MS)


def _hour(now_ms: int, tz: ZoneInfo) -> Window:
    local = _local(now_ms, tz)
    into = (local.minute * 60 + local.second) * 1000 + local.microsecond // 1000
    start = now_ms - into
    end = start + _HOUR_MS
    now_s = now_ms // 1000
    off_now = local.utcoffset()
    # An offset change between the naive hour start and now starts the window at the change.
    start_s = start // 1000
    if _offset_s(start_s, tz) != off_now:
        start = max(start, _find_change(start_s, now_s, tz) * 1000)
    # An offset change before the next local hour ends the window at the change.
    end_s = -(-end // 1000)
    if _offset_s(end_s, tz) != off_now:
        change = _find_change(now_s, end_s, tz) * 1000
        if change > now_ms:
            end = min(end, change)
    return Window(PeriodKind.HOUR, _utc_id(start), start, end)


def _add_months(d: date, n: int) -> date:
    total = d.year * 12 + (d.month - 1) + n
    return date(total // 12, total % 12 + 1, 1)


def _calendar_bounds(kind: PeriodKind, d: date, week_start: int) -> tuple[date, date, str]:
    if kind is PeriodKind.DAY:
        return d, d + timedelta(days=1), _date_id(d)
    if kind is PeriodKind.WEEK:
        first = d - timedelta(days=(d.weekday() - week_start) % 7)
        return first, first + timedelta(days=7), _date_id(first) + "W"
    first = d.replace(day=1)
    return first, _add_months(first, 1), f"{first.year:04d}-{first.month:02d}"


def _step(kind: PeriodKind, d: date, forward: bool) -> date:
    if kind is PeriodKind.MONTH:
        return _add_months(d.replace(day=1), 1 if forward else -1)
    days = 7 if kind is PeriodKind.WEEK else 1
    return d + timedelta(days=days if forward else -days)


def _calendar(kind: PeriodKind, now_ms: int, tz: ZoneInfo, week_start: int) -> Window:
    d = _local(now_ms, tz).date()
    for _ in range(8):  # a fall-back across midnight can move an instant to a neighbour
        first, nxt, wid = _calendar_bounds(kind, d, week_start)
        start = _first_instant_at_or_after(datetime.combine(first, datetime.min.time()), tz)
        end = _first_instant_at_or_after(datetime.combine(nxt, datetime.min.time()), tz)
        if now_ms < start:
            d = _step(kind, first, forward=False)
        elif now_ms >= end:
            d = nxt
        else:
            return Window(kind, wid, start, end)
    raise ValueError(f"cannot place {now_ms} in a {kind.value} window of {tz.key}")


_cache: dict[tuple[PeriodKind, ZoneInfo, int], Window] = {}


def window_at(kind: PeriodKind, now_ms: int, tz: ZoneInfo, week_start: int = 0) -> Window:
    """The window of ``kind`` containing the epoch-ms instant ``now_ms`` in timezone ``tz``.

    ``week_start`` is the first day of the week, 0=Monday .. 6=Sunday (used for weeks only).
    """
    key = (kind, tz, week_start)
    hit = _cache.get(key)
    if hit is not None and hit.start_ms <= now_ms < hit.end_ms:
        return hit
    kind = PeriodKind(kind)
    if not 0 <= week_start <= 6:
        raise ValueError(f"week_start must be 0 (Monday) .. 6 (Sunday), got {week_start!r}")
    if kind is PeriodKind.MINUTE:
        w = _minute(now_ms)
    elif kind is PeriodKind.HOUR:
        w = _hour(now_ms, tz)
    else:
        w = _calendar(kind, now_ms, tz, week_start)
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[key] = w
    return w


def previous_window(w: Window, tz: ZoneInfo, week_start: int = 0) -> Window:
    """The window of the same kind that ends where ``w`` starts."""
    return window_at(w.kind, w.start_ms - 1, tz, week_start)


def next_window(w: Window, tz: ZoneInfo, week_start: int = 0) -> Window:
    """The window of the same kind that starts where ``w`` ends."""
    return window_at(w.kind, w.end_ms, tz, week_start)


def windows_between(
    kind: PeriodKind, start_ms: int, end_ms: int, tz: ZoneInfo, week_start: int = 0
) -> Iterator[Window]:
    """Every window of ``kind`` that overlaps ``[start_ms, end_ms)``, in order."""
    if end_ms <= start_ms:
        return
    w = window_at(kind, start_ms, tz, week_start)
    while w.start_ms < end_ms:
        yield w
        w = window_at(kind, w.end_ms, tz, week_start)
