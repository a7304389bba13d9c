"""Reports over the durable store: usage by agent, cost attribution by team and user, and a
scope's trend per day, week or month.

Amounts are integers (cost in micro-USD). Aggregation happens in SQL (``GROUP BY``); only the
bucketing of per-day sums into weeks or months happens in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select

from ...subject import Scope
from ...usage import Metric
from . import schema
from .sql import Store

__all__ = ["GRANULARITIES", "cost_by_team", "cost_by_user", "trend", "usage_by_agent"]

GRANULARITIES = ("day", "week", "month")
_U = schema.usage
_A = schema.adjustments


def _sums(names: Sequence[str]) -> list[ColumnElement[Any]]:
    return [func.coalesce(func.sum(_U.c[n]), 0).label(n) for n in names]


def _grouped(store: Store, org: str, first_day: str, last_day: str, keys: Sequence[str],
             amounts: Sequence[str], where: Sequence[ColumnElement[bool]] = ()
             ) -> list[dict[str, Any]]:
    _check_days(first_day, last_day)
    cols = [_U.c[k] for k in keys]
    q: Select[Any] = (
        select(*cols, *_sums(amounts))
        .where(_U.c.org == org, _U.c.day >= first_day, _U.c.day <= last_day, *where)
        .group_by(*cols)
        .order_by(func.sum(_U.c.cost).desc(), *cols))
    with store.reading() as conn:
        return [{k: (int(v) if k in amounts else v) for k, v in r._mapping.items()}
                for r in conn.execute(q)]


def usage_by_agent(store: Store, org: str, first_day: str, last_day: str
                   ) -> list[dict[str, Any]]:
    """Per agent: ``agent, invocations, input_tokens, output_tokens, total_tokens, cost``,
    over the days ``first_day .. last_day`` (inclusive), by cost descending."""
    return _grouped(store, org, first_day, last_day, ["agent"], schema.AMOUNT_COLUMNS)


def cost_by_team(store: Store, org: str, first_day: str, last_day: str
                 ) -> list[dict[str, Any]]:
    """Per team (``""`` = usage without a team): ``team, cost, total_tokens, invocations``,
    by cost descending."""
    return _grouped(store, org, first_day, last_day, ["team"],
                    ["cost", "total_tokens", "invocations"])


def cost_by_user(store: Store, org: str, first_day: str, last_day: str,
                 team: str | None = None) -> list[dict[str, Any]]:
    """Per (team, user) (``""`` = none): ``team, user, cost, total_tokens, invocations``, by
    cost descending; only one team's users if ``team`` is given."""
    where = [] if team is None else [_U.c.team == team]
    return _grouped(store, org, first_day, last_day, ["team", "user"],
                    ["cost", "total_tokens", "invocations"], where)


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
    Adjustments recorded for exactly this scope and metric are added on their day.
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
    adj_q = (select(_A.c.day, func.sum(_A.c.amount))
             .where(_A.c.org == scope.org, _A.c.scope == str(scope),
                    _A.c.metric == metric.value, _A.c.day >= first_day, _A.c.day <= last_day)
             .group_by(_A.c.day))
    buckets: dict[str, int] = {}
    d = first
    while d <= last:
        buckets.setdefault(_bucket(d, granularity, week_start), 0)
        d += timedelta(days=1)
    with store.reading() as conn:
        for q in (usage_q, adj_q):
            for day, amount in conn.execute(q):
                label = _bucket(_parse_day("day", day), granularity, week_start)
                buckets[label] = buckets.get(label, 0) + int(amount or 0)
    return list(buckets.items())
