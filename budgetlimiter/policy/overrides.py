"""Runtime overrides: limits and rates set, changed or removed per scope on top of the file.

An :class:`OverrideSet` is one numbered version of every scope's override. A scope's
:class:`ScopeOverride` holds the same ``limits`` and ``rates`` entries as a policy file node
(validated by the same models, refused with the loader's messages) and the keys it removes;
each entry replaces the file's entry with the same key (``(metric, period)`` for limits,
``(metric, per)`` for rates), the others still apply. Overrides apply to exactly their scope
(they are not defaults for the scopes below it).

A scope whose override was removed keeps an empty entry (a tombstone) carrying the version of
the removal, so that its ETag never returns to an earlier value (no ABA for ``If-Match``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from ..errors import InvalidInput, PolicyError
from ..subject import Scope, Subject
from ..usage import Metric
from .loader import validation_error
from .model import _Limited, _Model
from .periods import PeriodKind
from .resolve import ScopeLimits

__all__ = ["LimitKey", "OverrideSet", "RateKey", "ScopeOverride", "check_scope",
           "parse_override", "scope_limits"]


class LimitKey(_Model):
    """Which limit of a scope: ``(metric, period)``."""

    metric: Metric
    period: PeriodKind

    @property
    def key(self) -> tuple[Metric, PeriodKind]:
        return (self.metric, self.period)


class RateKey(_Model):
    """Which rate limit of a scope: ``(metric, per)`` (``requests`` means ``invocations``)."""

    metric: Metric
    per: str = Field(pattern="^(second|minute|hour)$")

    @field_validator("metric", mode="before")
    @classmethod
    def _requests(cls, value: object) -> object:
        return "invocations" if value == "requests" else value

    @property
    def key(self) -> tuple[Metric, str]:
        return (self.metric, self.per)


class ScopeOverride(_Limited):
    """What an override changes at one scope: entries set (``limits``, ``rates``) and keys
    removed (``remove_limits``, ``remove_rates``). ``version`` is the override set version
    that last changed it (set by the store, not by callers)."""

    remove_limits: tuple[LimitKey, ...] = ()
    remove_rates: tuple[RateKey, ...] = ()
    version: int = 0

    @model_validator(mode="after")
    def _set_or_remove(self) -> ScopeOverride:
        limit_keys = {x.key for x in self.limits}
        for i, lk in enumerate(self.remove_limits):
            if lk.key in limit_keys:
                raise ValueError(f"remove_limits[{i}]: the same limit cannot be set and "
                                 "removed in one override")
        rate_keys = {x.key for x in self.rates}
        for i, rk in enumerate(self.remove_rates):
            if rk.key in rate_keys:
                raise ValueError(f"remove_rates[{i}]: the same rate limit cannot be set and "
                                 "removed in one override")
        return self

    @property
    def empty(self) -> bool:
        """A tombstone: nothing set or removed (the scope follows the file)."""
        return not (self.limits or self.rates or self.remove_limits or self.remove_rates)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (money as strings), as accepted by :func:`parse_override`."""
        out: dict[str, Any] = self.model_dump(mode="json", exclude={"version"})
        for lim in out["limits"]:
            lim["thresholds"] = list(lim["thresholds"])
        return out

    def apply(self, sl: ScopeLimits, origin: str) -> ScopeLimits:
        """``sl`` (the file's limits of this scope) with this override applied."""
        removed = {r.key for r in self.remove_limits}
        limits = {lim.key: (lim, o) for lim, o in zip(sl.limits, sl.limit_origins, strict=True)
                  if lim.key not in removed}
        for i, lim in enumerate(self.limits):
            limits[lim.key] = (lim, f"{origin}.limits[{i}]")
        removed_r = {r.key for r in self.remove_rates}
        rates = {r.key: (r, o) for r, o in zip(sl.rates, sl.rate_origins, strict=True)
                 if r.key not in removed_r}
        for i, rate in enumerate(self.rates):
            rates[rate.key] = (rate, f"{origin}.rates[{i}]")
        return ScopeLimits(sl.scope, tuple(v[0] for v in limits.values()),
                           tuple(v[0] for v in rates.values()),
                           tuple(v[1] for v in limits.values())
                           + tuple(v[1] for v in rates.values()))


def parse_override(data: object) -> ScopeOverride:
    """Validate an override body (``limits``, ``rates``, ``remove_limits``, ``remove_rates``);
    errors raise :class:`PolicyError` with the policy loader's messages (``limits[0].amount:
    must not be negative (got '-5')``)."""
    if not isinstance(data, dict):
        raise PolicyError("(top level): an override must be an object with limits, rates, "
                          "remove_limits or remove_rates", path=None)
    body = {k: v for k, v in data.items() if k != "version"}
    try:
        return ScopeOverride.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc, "", lambda loc: None) from None


@dataclass(frozen=True)
class OverrideSet:
    """Version ``version`` of every scope's override (scope text -> override)."""

    version: int = 0
    scopes: dict[str, ScopeOverride] = field(default_factory=dict)

    def get(self, scope: Scope | str) -> ScopeOverride | None:
        """The override of ``scope`` (a tombstone counts as none)."""
        found = self.scopes.get(str(scope))
        return None if found is None or found.empty else found

    def etag(self, scope: Scope | str) -> str:
        """The strong ETag of ``scope``'s override: the version that last changed it."""
        found = self.scopes.get(str(scope))
        return f'"{0 if found is None else found.version}"'

    def apply(self, sl: ScopeLimits) -> ScopeLimits:
        """``sl`` with its scope's override applied (unchanged when it has none)."""
        found = self.get(sl.scope)
        if found is None:
            return sl
        return found.apply(sl, f"override v{found.version}")

    def with_scope(self, scope: Scope, override: ScopeOverride | None, version: int
                   ) -> OverrideSet:
        """Version ``version``: this set with ``scope``'s override replaced (None removes)."""
        entry = (override or ScopeOverride()).model_copy(update={"version": version})
        return OverrideSet(version, {**self.scopes, str(scope): entry})

    def renumbered(self, version: int) -> OverrideSet:
        """The same overrides as version ``version`` (a rollback)."""
        return OverrideSet(version, dict(self.scopes))

    def to_json(self) -> str:
        """The stored and published form."""
        return json.dumps({"version": self.version, "scopes": {
            s: {**o.to_dict(), "version": o.version} for s, o in sorted(self.scopes.items())}},
            separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> OverrideSet:
        """Read :meth:`to_json`'s form."""
        doc = json.loads(text)
        scopes = {s: ScopeOverride.model_validate(o) for s, o in doc["scopes"].items()}
        return cls(int(doc["version"]), scopes)


def scope_limits(policy: Any, scope: Scope) -> ScopeLimits:
    """The effective limits of one scope under ``policy`` (file and overrides)."""
    agent = scope.agent if scope.agent is not None else "-"
    eff = policy.resolve(Subject(scope.org, agent, team=scope.team, user=scope.user))
    for sl in eff.scopes:
        if sl.scope == scope:
            found: ScopeLimits = sl
            return found
    return ScopeLimits(scope, (), (), ())


def check_scope(policy: Any, scope: Scope) -> None:
    """Refuse a scope the policy cannot resolve: an org the policy file does not declare
    (its limits would only ever come from the top-level defaults; a typo is far likelier)."""
    if policy.orgs and scope.org not in policy.orgs:
        known = ", ".join(sorted(policy.orgs)[:10])
        raise InvalidInput(f"scope: org {scope.org!r} is not declared in the policy "
                           f"(declared: {known}); overrides apply to declared orgs only")
