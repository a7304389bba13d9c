"""Changing limits at runtime: set, remove and roll back overrides, each audited.

Every operation validates first (scope, body, precondition) and raises before writing
anything; then it stores the new version of the overrides and its audit entry in one SQL
transaction (:func:`~budgetlimiter.durable.store.admin.change_overrides`), and the caller
publishes it to Redis with :func:`publish_call` (SQL first: a version that reached Redis is
always in the record, so a restore never loses it).

Lowering a limit below the current usage blocks from the next check on; raising it admits
from the next check on; recorded usage is never touched (counters are keyed by metric and
period, not by amount).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..engine.calls import ScriptCall
from ..engine.keys import KeySpace
from ..engine.override_watch import plan_publish
from ..errors import InvalidInput, NothingToRemove, PreconditionFailed
from ..policy.overrides import (
    LimitKey,
    OverrideSet,
    RateKey,
    ScopeOverride,
    check_scope,
    scope_limits,
)
from ..policy.resolve import ScopeLimits
from ..subject import Scope
from .store.admin import AuditEntry, Change, change_overrides

__all__ = ["clear_override", "describe_limits", "publish_call", "rollback", "set_override",
           "unset_limit"]


def describe_limits(sl: ScopeLimits) -> list[str]:
    """One line per limit and rate of a scope, as the audit log shows them."""
    out = [f"{lim.metric.value} {format(lim.amount, 'f')} per {lim.period.value} "
           f"{lim.mode.value} ({origin})"
           for lim, origin in zip(sl.limits, sl.limit_origins, strict=True)]
    out += [f"rate {r.metric.value} {r.limit} per {r.per} burst {r.burst_units} ({origin})"
            for r, origin in zip(sl.rates, sl.rate_origins, strict=True)]
    return out


def _who_why(who: str, why: str) -> None:
    if not isinstance(who, str) or not who.strip():
        raise InvalidInput("who: name who makes the change (a token name or --who)")
    if not isinstance(why, str) or not why.strip():
        raise InvalidInput("why: give a reason for the change")


def _precondition(current: OverrideSet, scope: Scope, if_match: str | None) -> None:
    if if_match is None or if_match.strip() == "*":
        return
    tags = [t.strip().removeprefix("W/") for t in if_match.split(",")]
    if current.etag(scope) not in tags:
        raise PreconditionFailed(
            f"{scope} changed since it was read (ETag now {current.etag(scope)}, "
            f"If-Match {if_match}); read it again and retry")


def _scope_change(policy: Any, scope: Scope, current: OverrideSet, new_override: ScopeOverride
                  | None, action: str, who: str, why: str) -> Change:
    version = current.version + 1
    after_set = current.with_scope(scope, new_override, version)
    before = describe_limits(scope_limits(policy.file_policy().with_overrides(current), scope))
    after = describe_limits(scope_limits(policy.file_policy().with_overrides(after_set), scope))
    entry = AuditEntry(who=who, action=action, org=scope.org, scope=str(scope),
                       before=before, after=after, why=why, version=version)
    return Change(after_set, action, str(scope), entry)


def set_override(store: Any, policy: Any, scope: Scope, override: ScopeOverride, *,
                 who: str, why: str, if_match: str | None = None) -> Change:
    """Make ``override`` the override of ``scope`` (replacing its previous one)."""
    _who_why(who, why)
    check_scope(policy, scope)
    if override.empty:
        raise InvalidInput("limits: an override must set or remove at least one limit or "
                           "rate (to go back to the policy file, remove the override)")
    _check_removals(policy, scope, override)

    def decide(current: OverrideSet) -> Change:
        _precondition(current, scope, if_match)
        return _scope_change(policy, scope, current, override, "override.set", who, why)

    return change_overrides(store, decide)


def _check_removals(policy: Any, scope: Scope, override: ScopeOverride) -> None:
    file_sl = scope_limits(policy.file_policy(), scope)
    have_l = {lim.key for lim in file_sl.limits}
    have_r = {r.key for r in file_sl.rates}
    for i, k in enumerate(override.remove_limits):
        if k.key not in have_l:
            raise NothingToRemove(f"remove_limits[{i}]: the policy file gives {scope} no "
                                  f"{k.metric.value} per {k.period.value} limit to remove")
    for i, rk in enumerate(override.remove_rates):
        if rk.key not in have_r:
            raise NothingToRemove(f"remove_rates[{i}]: the policy file gives {scope} no "
                                  f"{rk.metric.value} per {rk.per} rate to remove")


def clear_override(store: Any, policy: Any, scope: Scope, *, who: str, why: str,
                   if_match: str | None = None) -> Change:
    """Remove ``scope``'s override: the policy file applies to it again."""
    _who_why(who, why)
    check_scope(policy, scope)

    def decide(current: OverrideSet) -> Change:
        _precondition(current, scope, if_match)
        if current.get(scope) is None:
            raise NothingToRemove(f"scope: {scope} has no override to remove")
        return _scope_change(policy, scope, current, None, "override.remove", who, why)

    return change_overrides(store, decide)


def unset_limit(store: Any, policy: Any, scope: Scope,
                keys: LimitKey | RateKey | Sequence[LimitKey | RateKey], *, who: str,
                why: str, if_match: str | None = None) -> Change:
    """Take limits or rates of ``scope`` out of force (whether the file or an override sets
    them), in one version; refused when one of them is not in force."""
    _who_why(who, why)
    check_scope(policy, scope)
    wanted = [keys] if isinstance(keys, (LimitKey, RateKey)) else list(keys)
    if not wanted:
        raise InvalidInput("limit: name a limit or a rate to remove")
    file_sl = scope_limits(policy.file_policy(), scope)
    in_file = {("L", x.key) for x in file_sl.limits} | {("R", x.key) for x in file_sl.rates}

    def tagged(key: LimitKey | RateKey) -> tuple[str, Any]:
        return ("L" if isinstance(key, LimitKey) else "R", key.key)

    def decide(current: OverrideSet) -> Change:
        _precondition(current, scope, if_match)
        sl = scope_limits(policy.file_policy().with_overrides(current), scope)
        now = {("L", x.key) for x in sl.limits} | {("R", x.key) for x in sl.rates}
        for key in wanted:
            if tagged(key) not in now:
                what = (f"{key.metric.value} per {key.period.value} limit" if isinstance(
                    key, LimitKey) else f"{key.metric.value} per {key.per} rate")
                raise NothingToRemove(f"{'limit' if isinstance(key, LimitKey) else 'rate'}: "
                                      f"{scope} has no {what} in force to remove")
        gone = {tagged(k) for k in wanted}
        old = current.get(scope) or ScopeOverride()
        new = ScopeOverride(
            limits=tuple(x for x in old.limits if ("L", x.key) not in gone),
            rates=tuple(x for x in old.rates if ("R", x.key) not in gone),
            remove_limits=(*old.remove_limits, *(k for k in wanted if isinstance(k, LimitKey)
                                                 and tagged(k) in in_file)),
            remove_rates=(*old.remove_rates, *(k for k in wanted if isinstance(k, RateKey)
                                               and tagged(k) in in_file)))
        return _scope_change(policy, scope, current, None if new.empty else new,
                             "override.unset", who, why)

    return change_overrides(store, decide)


def rollback(store: Any, policy: Any, to_version: int, *, who: str, why: str) -> Change:
    """Put the overrides of version ``to_version`` (0: none) in force again, as a new
    version; every scope that differs is audited."""
    from .store.admin import override_version

    _who_why(who, why)
    if isinstance(to_version, bool) or not isinstance(to_version, int) or to_version < 0:
        raise InvalidInput(f"version: must be a version number >= 0, got {to_version!r}")
    target = OverrideSet() if to_version == 0 else override_version(store, to_version)
    if target is None:
        raise NothingToRemove(f"version: there is no override version {to_version}")

    def decide(current: OverrideSet) -> Change:
        version = current.version + 1
        scopes = dict(current.scopes)
        changed: list[str] = []
        for name in sorted(set(current.scopes) | set(target.scopes)):
            old, want = current.get(name), target.get(name)
            if (old.to_dict() if old else None) != (want.to_dict() if want else None):
                scopes[name] = (want or ScopeOverride()).model_copy(update={"version": version})
                changed.append(name)
        new = OverrideSet(version, scopes)
        before = {n: describe_limits(scope_limits(policy.file_policy().with_overrides(current),
                                                  Scope.parse(n))) for n in changed}
        after = {n: describe_limits(scope_limits(policy.file_policy().with_overrides(new),
                                                 Scope.parse(n))) for n in changed}
        orgs = {Scope.parse(n).org for n in changed}
        entry = AuditEntry(who=who, action="policy.rollback",
                           org=orgs.pop() if len(orgs) == 1 else "", scope=", ".join(changed),
                           before=before, after=after,
                           why=f"{why} (to version {to_version})", version=version)
        return Change(new, "policy.rollback", "", entry)

    return change_overrides(store, decide)


def publish_call(keys: KeySpace, overrides: OverrideSet) -> ScriptCall:
    """The script call that publishes ``overrides`` to Redis (``limiter.execute(...)``)."""
    return plan_publish(keys, overrides)
