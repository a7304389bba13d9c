"""``GET /v1/usage``: reports from the durable SQL store, run in a worker thread."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from ..subject import Scope
from ..usage import Metric, micros_to_usd
from .params import USAGE_PARAMS, read_query
from .problems import Problem

if TYPE_CHECKING:
    from .app import Server

#: the longest trend series, in days before ``to``
MAX_DAYS = 3700


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


async def usage_report(server: Server, query: Any) -> dict[str, Any]:
    """Validate the query (a Starlette ``QueryParams``) as the OpenAPI document says, run the
    report off the event loop, format money as strings.

    A ``from`` after ``to`` is an empty range (no rows, no points); a trend starts at most
    :data:`MAX_DAYS` days before ``to`` (the answer's ``from`` says where)."""
    q = read_query(USAGE_PARAMS, query)
    by, org = q["by"], q["org"]
    last = date.fromisoformat(q["to"]) if "to" in q else datetime.now(timezone.utc).date()
    if "from" in q:
        first = date.fromisoformat(q["from"])
    else:
        try:
            first = last - timedelta(days=30)
        except OverflowError:  # a 'to' within 30 days of year 1
            first = date.min
    scope = Scope.parse(q["scope"]) if "scope" in q else Scope(org)
    if by == "trend" and scope.org != org:
        raise Problem("org_mismatch", "scope must be a scope of org",
                      errors=[{"loc": ["query", "scope"], "msg": "must be a scope of org",
                               "type": "org_mismatch"}])
    if by == "trend" and (last - first).days > MAX_DAYS:
        first = last - timedelta(days=MAX_DAYS)  # later than first: no underflow
    a, b = first.isoformat(), last.isoformat()
    doc: dict[str, Any] = {"org": org, "by": by, "from": a, "to": b, "rows": [], "series": []}
    store = await server.store()
    if first > last:
        return doc
    from ..durable.store import reports

    if by == "trend":
        metric = Metric(q.get("metric", "cost"))
        granularity = q.get("granularity", "day")
        week_start = server.require_limiter().policy.week_start_index()
        series = await _run(reports.trend, store, scope, metric, granularity, a, b, week_start)
        doc["series"] = [{"period": p, "value": str(micros_to_usd(v))
                          if metric is Metric.COST else v} for p, v in series]
        return doc
    if by == "agent":
        rows = await _run(reports.usage_by_agent, store, org, a, b)
    elif by == "team":
        rows = await _run(reports.cost_by_team, store, org, a, b)
    else:
        rows = await _run(reports.cost_by_user, store, org, a, b, q.get("team"))
    doc["rows"] = _money(rows)
    return doc
