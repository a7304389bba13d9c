"""Planning a rebuild of one org's counters from the durable record (sans-I/O).

After Redis lost data, every budget counter of the org's current periods (and the previous
period of ``accumulate`` budgets, which rollover reads) is rebuilt as the usage recorded in
SQL plus the deltas still waiting in Redis ledgers plus the adjustments applied to it.
Minute and hour budgets are not rebuilt: the ledger is daily, and they refill within the
hour anyway.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from ..engine.calls import ScriptCall
from ..engine.keys import KeySpace
from ..policy import LimitSpec, Policy, Rollover
from ..policy.periods import PeriodKind, Window, previous_window, window_at
from ..policy.resolve import ScopeLimits
from ..subject import Scope, Subject
from ..usage import METRIC_BY_CODE, Metric
from .adjust import affected_scopes
from .store.records import Adjustment, AlertEvent, UsageRow

REBUILT_PERIODS = (PeriodKind.DAY, PeriodKind.WEEK, PeriodKind.MONTH)


def local_days(window: Window, tz_name: object) -> tuple[str, str]:
    """First and last local day (inclusive) of a day/week/month window."""
    from zoneinfo import ZoneInfo

    tz = tz_name if isinstance(tz_name, ZoneInfo) else ZoneInfo(str(tz_name))
    first = datetime.fromtimestamp(window.start_ms / 1000, tz).date()
    last = datetime.fromtimestamp((window.end_ms - 1) / 1000, tz).date()
    return first.isoformat(), last.isoformat()


def earliest_day(policy: Policy, org: str, now_ms: int) -> str:
    """The first local day any rebuilt window can start on (previous month or week)."""
    tz = policy.timezone_for(org)
    ws = policy.week_start_index()
    starts = []
    for kind in (PeriodKind.MONTH, PeriodKind.WEEK):
        prev = previous_window(window_at(kind, now_ms, tz, ws), tz, ws)
        starts.append(local_days(prev, tz)[0])
    return min(starts)


def today(policy: Policy, org: str, now_ms: int) -> str:
    tz = policy.timezone_for(org)
    return datetime.fromtimestamp(now_ms / 1000, tz).date().isoformat()


@dataclass
class _Entry:
    key: str
    metric: Metric
    expire_ms: int
    drop_carry: bool
    thresholds: tuple[int, ...]
    scope: Scope
    window: Window
    limit: int = 0
    current: bool = False
    recorded: int = 0
    adjusted: int = 0
    ledgers: set[str] = field(default_factory=set)
    subjects: set[Subject] = field(default_factory=set)


def plan_rebuild(policy: Policy, keys: KeySpace, org: str, seq: int, now_ms: int,
                 rows: Iterable[UsageRow], ledger_keys: Iterable[str],
                 adjustments: Iterable[Adjustment] = (),
                 fired: Iterable[AlertEvent] = ()) -> ScriptCall:
    """Build the ``rebuild`` script call for ``org`` (see ``lua/rebuild.lua``).

    A counter's total is its subjects' recorded usage plus their unflushed ledger deltas
    plus the applied amounts of the adjustments that counted in its scope within its window
    (see :func:`~budgetlimiter.durable.adjust.affected_scopes`), clamped at zero only once,
    at the end, in Lua: the ledger deltas are known only there."""
    tz = policy.timezone_for(org)
    ws = policy.week_start_index()
    retention = policy.retention_seconds * 1000
    by_subject: dict[Subject, list[UsageRow]] = defaultdict(list)
    for row in rows:
        by_subject[Subject(row.org, row.agent, team=row.team or None,
                           user=row.user or None)].append(row)
    ledgers_by_subject: dict[Subject, list[tuple[str, str]]] = defaultdict(list)
    for lk in ledger_keys:
        parsed = keys.parse_ledger(lk)
        ledgers_by_subject[parsed.subject].append((lk, parsed.day_id))
    entries: dict[tuple[str, Metric], _Entry] = {}

    def entries_of(sl: ScopeLimits, spec: LimitSpec) -> list[_Entry]:
        """The entries of one budget: its current window, and the previous one when
        ``accumulate`` reads it."""
        current = window_at(spec.period, now_ms, tz, ws)
        windows = [current]
        if spec.rollover is Rollover.ACCUMULATE:
            windows.append(previous_window(current, tz, ws))
        out = []
        for w in windows:
            key = keys.counter(sl.scope, w)
            entry = entries.get((key, spec.metric))
            if entry is None:
                entry = entries[(key, spec.metric)] = _Entry(
                    key, spec.metric, w.end_ms + retention,
                    w is current and spec.rollover is Rollover.ACCUMULATE,
                    spec.thresholds, sl.scope, w, spec.units, w is current)
            out.append(entry)
        return out

    for subject in set(by_subject) | set(ledgers_by_subject):
        for sl in policy.resolve(subject).scopes:
            for spec in sl.limits:
                if spec.period not in REBUILT_PERIODS:
                    continue
                for entry in entries_of(sl, spec):
                    if subject in entry.subjects:
                        continue
                    entry.subjects.add(subject)
                    first, last = local_days(entry.window, tz)
                    entry.recorded += sum(getattr(r, spec.metric.value)
                                          for r in by_subject.get(subject, ())
                                          if first <= r.day <= last)
                    entry.ledgers.update(lk for lk, day in ledgers_by_subject.get(subject, ())
                                         if first <= day <= last)
    for adj in adjustments:
        scope = Scope.parse(adj.scope)
        chain = set(affected_scopes(scope))
        # counters an adjustment changed are rebuilt even if no usage of theirs is recorded
        pseudo = Subject(org, scope.agent or "-", team=scope.team, user=scope.user)
        for sl in policy.resolve(pseudo).scopes:
            if sl.scope in chain:
                for spec in sl.limits:
                    if spec.metric.value == adj.metric and spec.period in REBUILT_PERIODS:
                        entries_of(sl, spec)
        for entry in entries.values():
            if entry.scope in chain and entry.metric.value == adj.metric:
                first, last = local_days(entry.window, tz)
                if first <= adj.day <= last:
                    entry.adjusted += adj.amount
    fired_max: dict[tuple[str, str, str, str], int] = {}
    for ev in fired:
        k = (ev.scope, ev.metric, ev.period, ev.period_id)
        fired_max[k] = max(fired_max.get(k, 0), ev.threshold)

    key_list = [keys.epoch(org)]
    index: dict[str, int] = {}

    def idx(k: str) -> int:
        if k not in index:
            key_list.append(k)
            index[k] = len(key_list)
        return index[k]

    args: list[str | int] = [seq, now_ms, len(entries), idx(keys.events(org))]
    for entry in entries.values():
        top = fired_max.get((str(entry.scope), entry.metric.value, entry.window.kind.value,
                             entry.window.id), 0)
        fired_count = sum(1 for t in entry.thresholds if t <= top)
        # crossings are checked for the current period of reset budgets (the limit of an
        # accumulate budget includes a carry that the next check recomputes; a past period
        # has no alerts left to give)
        alerts = entry.limit > 0 and not entry.drop_carry and entry.current
        args += [idx(entry.key), entry.metric.code, entry.recorded, entry.adjusted,
                 fired_count, entry.expire_ms, 1 if entry.drop_carry else 0,
                 entry.limit if alerts else 0,
                 ",".join(str(t) for t in entry.thresholds) if alerts else "",
                 len(entry.ledgers)]
        args += [idx(lk) for lk in sorted(entry.ledgers)]
    return ScriptCall("rebuild", key_list, args, lambda reply: int(reply), org)


def parse_flush_record(record: str, keys: KeySpace) -> tuple[str, list[UsageRow]]:
    """Split a pending flush record (``lua/flush.lua``) into its id and usage deltas."""
    head, _, body = record.partition("\n")
    rows: list[UsageRow] = []
    for line in body.splitlines():
        if not line:
            continue
        key, *fields = line.split("\t")
        parsed = keys.parse_ledger(key)
        amounts = {METRIC_BY_CODE[f.split("=")[0]].value: int(f.split("=")[1])
                   for f in fields if f.split("=")[0] in METRIC_BY_CODE}
        s = parsed.subject
        rows.append(UsageRow(s.org, s.team or "", s.user or "", s.agent, parsed.day_id,
                             **amounts))
    return head, rows


__all__ = ["earliest_day", "local_days", "parse_flush_record", "plan_rebuild",
           "today"]
