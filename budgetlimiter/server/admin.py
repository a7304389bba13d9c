"""The admin API: runtime limit overrides, their versions, rollback and the audit log.

``GET/PUT/DELETE /v1/limits/{scope}`` (``ETag`` / ``If-Match``), ``GET /v1/policy/versions``,
``POST /v1/policy/rollback``, ``GET /v1/audit``. Changes need an ``admin`` token and the
database (``--db``): a change is stored in SQL (version and audit entry in one transaction),
then published through Redis, and applied by this sidecar at once (and by every other
client within two seconds; :mod:`.keeper` restores them after a data loss).
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..durable import limits as ops
from ..durable.store import admin as sql
from ..errors import NothingToRemove, PolicyError
from ..policy.overrides import (
    LimitKey,
    OverrideSet,
    RateKey,
    check_scope,
    parse_override,
    scope_limits,
)
from ..policy.resolve import EffectivePolicy
from ..subject import Subject
from .admin_models import RollbackIn
from .auth import request_token, require_admin, require_org
from .fastpath import Incoming
from .handlers import json_response, path_scope, read_body, read_model
from .params import Param, read_query
from .problems import Problem

if TYPE_CHECKING:
    from .app import Server

log = logging.getLogger("budgetlimiter.server")
METRIC_ENUM = {"type": "string", "enum": ["invocations", "input_tokens", "output_tokens",
                                         "total_tokens", "cost", "requests"]}
_METRICS = "invocations|input_tokens|output_tokens|total_tokens"
UNSET_PARAMS = (
    Param("limit", "The budget to remove, `metric/period` (e.g. `cost/day`). Without `limit` "
          "and `rate` the whole override of the scope is removed (the policy file applies "
          "again); with both, both are removed in one version.",
          schema={"type": "string",
                  "pattern": f"^({_METRICS}|cost)/(minute|hour|day|week|month)$"}),
    Param("rate", "The rate limit to remove, `metric/per` (e.g. `requests/second`).",
          schema={"type": "string",
                  "pattern": f"^(requests|{_METRICS})/(second|minute|hour)$"}),
    Param("why", "Why (kept in the audit log).", required=True,
          schema={"type": "string", "minLength": 1, "maxLength": 1000, "pattern": "\\S"}),
    Param("who", "Who, when the sidecar has no tokens (ignored with tokens)."),
)
AUDIT_PARAMS = (
    Param("org", "Only this org's entries (an org-restricted token must name its org)."),
    Param("from", "First day (UTC).", schema={"type": "string", "format": "date"}),
    Param("to", "Last day (UTC).", schema={"type": "string", "format": "date"}),
)
VERSIONS_PARAMS = (
    Param("limit", "At most this many versions (newest first; default 100).",
          schema={"type": "string", "pattern": "^[1-9][0-9]{0,3}$", "maxLength": 4}),
)


async def run_store(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run store work in a thread; database failures become ``store_unavailable``."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except SQLAlchemyError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise Problem("store_unavailable", first[:200]) from None


def _who(request: Request, given: object) -> str:
    if given is not None and (not isinstance(given, str) or len(given) > 256):
        raise Problem("invalid_input", "who: must be a string of at most 256 characters",
                      errors=[{"loc": ["body", "who"], "msg": "invalid", "type": "string"}])
    name = require_admin(request)
    if name:
        return name
    return given.strip() if isinstance(given, str) and given.strip() else "anonymous"


def _why(value: object, loc: str = "why") -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 1000:
        raise Problem("invalid_input", f"{loc}: give a reason (1-1000 characters)",
                      errors=[{"loc": ["body", loc], "msg": "required", "type": "missing"}])
    return value


def _known_scope(policy: Any, scope: Any) -> None:
    try:
        check_scope(policy, scope)
    except Exception as exc:
        raise Problem("not_found", str(exc)) from None


def limits_doc(policy: Any, current: OverrideSet, scope: Any) -> dict[str, Any]:
    """The ``LimitsOut`` document of ``scope`` under ``current``."""
    effective = policy.file_policy().with_overrides(current)
    sl = scope_limits(effective, scope)
    # the same limit and rate documents as /v1/policy/effective
    subject = Subject(scope.org, scope.agent or "-", team=scope.team, user=scope.user)
    doc = EffectivePolicy(subject, effective.timezone_for(scope.org), (sl,)).to_dict()
    found = current.get(scope)
    return {"scope": str(scope), "version": current.version, "etag": current.etag(scope),
            "override": None if found is None else found.to_dict(),
            "limits": doc["scopes"][0]["limits"], "rates": doc["scopes"][0]["rates"]}


class AdminApi:
    """The admin endpoints of one :class:`~budgetlimiter.server.app.Server`."""

    def __init__(self, server: Server) -> None:
        self.s = server

    async def publish(self, overrides: OverrideSet) -> bool:
        """Publish ``overrides`` through Redis and apply them here; False when Redis did not
        take them (the keeper retries every second)."""
        limiter = self.s.require_limiter()
        limiter.engine.apply_overrides(overrides)
        try:
            await limiter.execute(ops.publish_call(limiter.keys, overrides))
        except Exception as exc:
            log.warning("override version %d stored but not published: %s",
                        overrides.version, exc)
            self.s.overrides_unpublished = True
            return False
        return True

    async def _change(self, change: sql.Change, scope: Any) -> Response:
        published = await self.publish(change.overrides)
        policy = self.s.require_limiter().policy
        state = None if scope is None else limits_doc(policy, change.overrides, scope)
        headers = {} if scope is None else {"ETag": change.overrides.etag(scope)}
        audit = {**change.entry.to_dict(), "id": 0, "at_ms": 0}
        return json_response({"version": change.overrides.version, "published": published,
                              "audit": audit, "state": state}, headers=headers)

    async def limits(self, request: Request) -> Response:
        """``/v1/limits/{scope}``: one route for its methods (so 405 lists them all)."""
        if request.method == "PUT":
            return await self.put_limits(request)
        if request.method == "DELETE":
            return await self.delete_limits(request)
        return await self.get_limits(request)

    async def get_limits(self, request: Request) -> Response:
        scope = path_scope(request, "/v1/limits/")
        require_org(request, scope.org)
        store = await self.s.store()
        current = await run_store(sql.latest_overrides, store)
        policy = self.s.require_limiter().policy
        _known_scope(policy, scope)
        return json_response(limits_doc(policy, current, scope),
                             headers={"ETag": current.etag(scope)})

    async def put_limits(self, request: Request) -> Response:
        scope = path_scope(request, "/v1/limits/")
        require_org(request, scope.org)
        body = await read_body(request, self.s.config.max_body)
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise Problem("invalid_json", f"the body is not valid JSON: {str(exc)[:200]}"
                          ) from None
        if not isinstance(data, dict):
            raise Problem("invalid_input", "body: must be an object")
        who = _who(request, data.pop("who", None))
        why = _why(data.pop("why", None))
        try:
            override = parse_override(data)
        except PolicyError as exc:
            loc = ["body", *(exc.path or "").replace("[", ".").replace("]", "").split(".")]
            raise Problem("invalid_input", str(exc), errors=[
                {"loc": [p for p in loc if p], "msg": str(exc), "type": "invalid_input"}]
            ) from None
        policy = self.s.require_limiter().policy
        _known_scope(policy, scope)
        store = await self.s.store()
        change = await run_store(ops.set_override, store, policy, scope, override, who=who, why=why,
                            if_match=request.headers.get("if-match"))
        return await self._change(change, scope)

    async def delete_limits(self, request: Request) -> Response:
        scope = path_scope(request, "/v1/limits/")
        require_org(request, scope.org)
        q = read_query(UNSET_PARAMS, request.query_params)
        who = _who(request, q.get("who"))
        why = _why(q["why"])
        policy = self.s.require_limiter().policy
        _known_scope(policy, scope)
        keys: list[LimitKey | RateKey] = []
        if "limit" in q:
            metric, period = q["limit"].split("/")
            keys.append(LimitKey(metric=metric, period=period))  # type: ignore[arg-type]
        if "rate" in q:
            metric, per = q["rate"].split("/")
            keys.append(RateKey(metric=metric, per=per))  # type: ignore[arg-type]
        store = await self.s.store()
        if_match = request.headers.get("if-match")
        if not keys:
            change = await run_store(ops.clear_override, store, policy, scope, who=who, why=why,
                                if_match=if_match)
        else:
            change = await run_store(ops.unset_limit, store, policy, scope, keys, who=who, why=why,
                                if_match=if_match)
        return await self._change(change, scope)

    async def versions(self, request: Request) -> Response:
        require_org(request)  # the versions cover every org
        q = read_query(VERSIONS_PARAMS, request.query_params)
        store = await self.s.store()
        rows = await run_store(sql.override_versions, store, int(q.get("limit", "100")))
        in_force = rows[0].version if rows else 0
        return json_response({"in_force": in_force, "versions": [r.to_dict() for r in rows]})

    async def rollback(self, request: Request) -> Response:
        require_org(request)  # a rollback can change every org
        body = await read_body(request, self.s.config.max_body)
        req = read_model(Incoming(body, []), RollbackIn)
        who = _who(request, req.who)
        store = await self.s.store()
        policy = self.s.require_limiter().policy
        try:
            change = await run_store(ops.rollback, store, policy, req.version, who=who, why=req.why)
        except NothingToRemove as exc:
            raise Problem("not_found", str(exc)) from None
        return await self._change(change, None)

    async def audit(self, request: Request) -> Response:
        q = read_query(AUDIT_PARAMS, request.query_params)
        token = request_token(request)
        org = q.get("org")
        if org is not None:
            require_org(request, org)
        elif token is not None and token.org is not None:
            org = token.org
        start = _day_ms(q.get("from"), 0)
        end = _day_ms(q.get("to"), 1)
        store = await self.s.store()
        entries = await run_store(sql.audit_entries, store, org, start, end)
        if token is not None and token.org is not None:  # not even entries about no org
            entries = [e for e in entries if e.org == token.org]
        return json_response({"entries": [e.to_dict() for e in entries]})


def _day_ms(day: str | None, after: int) -> int | None:
    if day is None:
        return None
    start = datetime.combine(date.fromisoformat(day), datetime.min.time(), timezone.utc)
    return int((start + timedelta(days=after)).timestamp() * 1000) - after
