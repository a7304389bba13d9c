"""``GET /v1/usage``: reports from the durable SQL store, run in a worker thread."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from ..subject import Scope, validate_id
from ..usage import Metric, micros_to_usd
from .problems import Problem

if TYPE_CHECKING:
    from .app import Server

BY = ("agent", "team", "user", "trend")
MAX_DAYS = 3700


def _day(name: str, value: str | None, default: date) -> date:
    if not value:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise Problem("invalid_input", f"{name} must be a date like 2026-03-01") from None


async def _run(fn: Any, *args: Any) -> Any:
    """Run a report in a thread; database failures become ``store_unavailable``."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return await run_in_threadpool(fn, *args)
    except SQLAlchemyError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise Problem("store_unavailable", first[:200]) from None


def _money(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (str(micros_to_usd(int(v))) if k == "cost" else v) for k, v in r.items()}
            for r in rows]


async def usage_report(server: Server, q: dict[str, str]) -> dict[str, Any]:
    """Validate the query, run the report off the event loop, format money as strings."""
    by = q.get("by", "")
    if by not in BY:
        raise Problem("invalid_input", f"by must be one of {', '.join(BY)}")
    org = validate_id("org", q.get("org") or "")
    last = _day("to", q.get("to"), datetime.now(timezone.utc).date())
    try:
        default_first = last - timedelta(days=30)
    except OverflowError:  # a 'to' within 30 days of year 1
        default_first = date.min
    first = _day("from", q.get("from"), default_first)
    if first > last:
        raise Problem("invalid_input", "from is after to")
    if (last - first).days > MAX_DAYS:
        raise Problem("invalid_input", f"the range is limited to {MAX_DAYS} days")
    a, b = first.isoformat(), last.isoformat()
    doc: dict[str, Any] = {"org": org, "by": by, "from": a, "to": b, "rows": [], "series": []}
    from ..durable.store import reports

    if by == "trend":
        scope = Scope.parse(q["scope"]) if q.get("scope") else Scope(org)
        if scope.org != org:
            raise Problem("invalid_input", "scope must belong to org")
        try:
            metric = Metric(q.get("metric") or "cost")
        except ValueError:
            raise Problem("invalid_input", "unknown metric") from None
        granularity = q.get("granularity") or "day"
        if granularity not in ("day", "week", "month"):
            raise Problem("invalid_input", "granularity must be day, week or month")
        week_start = server.require_limiter().policy.week_start_index()
        store = await server.store()
        series = await _run(reports.trend, store, scope, metric, granularity,
                                         a, b, week_start)
        doc["series"] = [{"period": p, "value": str(micros_to_usd(v))
                          if metric is Metric.COST else v} for p, v in series]
        return doc
    store = await server.store()
    if by == "agent":
        rows = await _run(reports.usage_by_agent, store, org, a, b)
    elif by == "team":
        rows = await _run(reports.cost_by_team, store, org, a, b)
    else:
        team = q.get("team") or None
        rows = await _run(reports.cost_by_user, store, org, a, b, team)
    doc["rows"] = _money(rows)
    return doc
