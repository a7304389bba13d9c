"""Reports over the durable store: usage by agent, cost attribution by team and user, and a
scope's trend per day, week or month.

Amounts are integers (cost in micro-USD). Aggregation happens in SQL (``GROUP BY``); only the
bucketing of per-day sums into weeks or months, and the attribution of adjustment totals to
rows, happen in Python.

Adjustments count like the usage they correct (one number everywhere): an adjustment of scope
S counts in every scope of S's chain (:func:`~budgetlimiter.durable.adjust.affected_scopes`),
with its applied amount, on its day. In a grouped report it is added to the row of the group
S lies in (a refund of user bob lowers bob's row, and team eng's); one that is above the
grouping (an org-wide credit in a by-team report) gets its own row, labelled
``(adjustment)`` in the first key column S does not determine. So every row equals the live
counter of its scope, and the rows add up to the org's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select

from ...subject import Scope
from ...usage import Metric
from ..adjust import affected_scopes
from . import schema
from .sql import Store

__all__ = ["ADJUSTMENT", "GRANULARITIES", "cost_by_team", "cost_by_user", "trend",
           "usage_by_agent"]

GRANULARITIES = ("day", "week", "month")
#: Label of rows holding adjustments that no single group of a report owns.
ADJUSTMENT = "(adjustment)"
_U = schema.usage
_A = schema.adjustments
GroupOf = Callable[[Scope], "tuple[str, ...] | None"]


def _sums(names: Sequence[str]) -> list[ColumnElement[Any]]:
    return [func.coalesce(func.sum(_U.c[n]), 0).label(n) for n in names]


def _grouped(store: Store, org: str, first_day: str, last_day: str, keys: Sequence[str],
             amounts: Sequence[str], group_of: GroupOf,
             where: Sequence[ColumnElement[bool]] = ()) -> list[dict[str, Any]]:
    _check_days(first_day, last_day)
    cols = [_U.c[k] for k in keys]
    q: Select[Any] = (
        select(*cols, *_sums(amounts))
        .where(_U.c.org == org, _U.c.day >= first_day, _U.c.day <= last_day, *where)
        .group_by(*cols)
        .order_by(func.sum(_U.c.cost).desc(), *cols))
    adj_q = (select(_A.c.scope, _A.c.metric, func.sum(_A.c.amount))
             .where(_A.c.org == org, _A.c.day >= first_day, _A.c.day <= last_day,
                    _A.c.metric.in_(list(amounts)))
             .group_by(_A.c.scope, _A.c.metric))
    with store.reading() as conn:
        rows = [{k: (int(v) if k in amounts else v) for k, v in r._mapping.items()}
                for r in conn.execute(q)]
        adjustments = list(conn.execute(adj_q))
    if not adjustments:
        return rows
    by_key = {tuple(r[k] for k in keys): r for r in rows}
    for scope_text, metric, amount in adjustments:
        key = group_of(Scope.parse(scope_text))
        if key is None:
            continue
        row = by_key.get(key)
        if row is None:
            row = by_key[key] = {**dict(zip(keys, key, strict=True)),
                                 **dict.fromkeys(amounts, 0)}
        row[metric] += int(amount or 0)
    # stable sort: rows of equal cost keep SQL's order, new rows come after them
    return sorted(by_key.values(), key=lambda r: -int(r["cost"]))


def _by_agent(s: Scope) -> tuple[str, ...]:
    return (s.agent if s.agent is not None else ADJUSTMENT,)


def _by_team(s: Scope) -> tuple[str, ...]:
    if s.team is not None:
        return (s.team,)
    # a user without a team: all of its usage is in the "no team" row
    return ("",) if s.user is not None else (ADJUSTMENT,)


def _by_user(team: str | None) -> GroupOf:
    def group_of(s: Scope) -> tuple[str, ...] | None:
        if s.user is not None:
            key = (s.team or "", s.user)
        elif s.team is not None:
            key = (s.team, ADJUSTMENT)
        else:
            key = (ADJUSTMENT, "")
        return key if team is None or key[0] == team else None
    return group_of


def usage_by_agent(store: Store, org: str, first_day: str, last_day: str
                   ) -> list[dict[str, Any]]:
    """Per agent: ``agent, invocations, input_tokens, output_tokens, total_tokens, cost``,
    over the days ``first_day .. last_day`` (inclusive), by cost descending."""
    return _grouped(store, org, first_day, last_day, ["agent"], schema.AMOUNT_COLUMNS,
                    _by_agent)


def cost_by_team(store: Store, org: str, first_day: str, last_day: str
                 ) -> list[dict[str, Any]]:
    """Per team (``""`` = usage without a team): ``team, cost, total_tokens, invocations``,
    by cost descending."""
    return _grouped(store, org, first_day, last_day, ["team"],
                    ["cost", "total_tokens", "invocations"], _by_team)


def cost_by_user(store: Store, org: str, first_day: str, last_day: str,
                 team: str | None = None) -> list[dict[str, Any]]:
    """Per (team, user) (``""`` = none): ``team, user, cost, total_tokens, invocations``, by
    cost descending; only one team's users if ``team`` is given."""
    where = [] if team is None else [_U.c.team == team]
    return _grouped(store, org, first_day, last_day, ["team", "user"],
                    ["cost", "total_tokens", "invocations"], _by_user(team), where)


def scope_filter(scope: Scope) -> list[ColumnElement[bool]]:
    """Conditions selecting the usage rows that count against ``scope``.

    A user scope counts only that user's usage within the scope's team (no team = usage
    without a team); a team scope every user and agent of the team; an agent scope the
    agent's usage under its owner scope.
    """
    cond = [_U.c.org == scope.org]
    if scope.user is not None:
        cond += [_U.c.team == (scope.team or ""), _U.c.user == scope.user]
    elif scope.team is not None:
        cond.append(_U.c.team == scope.team)
    if scope.agent is not None:
        cond.append(_U.c.agent == scope.agent)
    return cond


def _parse_day(name: str, value: str) -> date:
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a date like 2026-03-01, got {value!r}") from None


def _check_days(first_day: str, last_day: str) -> tuple[date, date]:
    first, last = _parse_day("first_day", first_day), _parse_day("last_day", last_day)
    if last < first:
        raise ValueError(f"last_day {last_day} is before first_day {first_day}")
    return first, last


def _bucket(d: date, granularity: str, week_start: int) -> str:
    if granularity == "day":
        return d.isoformat()
    if granularity == "week":
        return (d - timedelta(days=(d.weekday() - week_start) % 7)).isoformat()
    return f"{d.year:04d}-{d.month:02d}"


def trend(store: Store, scope: Scope, metric: Metric, granularity: str, first_day: str,
          last_day: str, week_start: int = 0) -> list[tuple[str, int]]:
    """``scope``'s ``metric`` per period over ``first_day .. last_day``, zero-filled.

    ``granularity`` is ``day``, ``week`` or ``month``; labels are ``YYYY-MM-DD`` (weeks: the
    date of the week's first day, ``week_start`` 0=Monday .. 6=Sunday) or ``YYYY-MM``. The
    first and last periods may extend beyond the range but only count days inside it.
    Adjustments of this metric whose chain includes ``scope`` are added on their day.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, "
                         f"got {granularity!r}")
    if not 0 <= week_start <= 6:
        raise ValueError(f"week_start must be 0 (Monday) .. 6 (Sunday), got {week_start!r}")
    metric = Metric(metric)
    first, last = _check_days(first_day, last_day)
    col = _U.c[metric.value]
    usage_q = (select(_U.c.day, func.sum(col))
               .where(*scope_filter(scope), _U.c.day >= first_day, _U.c.day <= last_day)
               .group_by(_U.c.day))
    adj_q = (select(_A.c.scope, _A.c.day, func.sum(_A.c.amount))
             .where(_A.c.org == scope.org, _A.c.metric == metric.value,
                    _A.c.day >= first_day, _A.c.day <= last_day)
             .group_by(_A.c.scope, _A.c.day))
    buckets: dict[str, int] = {}
    d = first
    while d <= last:
        buckets.setdefault(_bucket(d, granularity, week_start), 0)
        d += timedelta(days=1)
    with store.reading() as conn:
        sums = [(day, amount) for day, amount in conn.execute(usage_q)]
        sums += [(day, amount) for adjusted, day, amount in conn.execute(adj_q)
                 if scope in affected_scopes(Scope.parse(adjusted))]
    for day, amount in sums:
        label = _bucket(_parse_day("day", day), granularity, week_start)
        buckets[label] = buckets.get(label, 0) + int(amount or 0)
    return list(buckets.items())
