"""The top-level :class:`Policy` model (import it from :mod:`budgetlimiter.policy`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, PrivateAttr, StrictInt, field_validator
from typing_extensions import Self

from ..errors import UnknownAgent
from ..subject import Scope, Subject
from .envoy import EnvoyMapping
from .model import (
    AgentId,
    OrgId,
    OrgSpec,
    OutagePolicy,
    Pricing,
    TopDefaults,
    _Model,
)
from .periods import parse_timezone
from .pricing import lookup_pricing
from .resolve import EffectivePolicy, declared_scopes, resolve_subject

if TYPE_CHECKING:
    from .overrides import OverrideSet

WEEKDAYS: tuple[str, ...] = (
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
)
RESOLVE_CACHE_SIZE = 50_000


class _Cache(dict[Any, Any]):
    """Per-instance memo; never part of equality (two equal policies may differ in cache)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Cache)

    def __ne__(self, other: object) -> bool:
        return not isinstance(other, _Cache)

    __hash__ = None


class Policy(_Model):
    """A complete budget policy: global settings, pricing, defaults and the declared orgs."""

    version: Literal[1] = 1
    timezone: str = "UTC"
    week_start: Literal[
        "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"
    ] = "monday"
    reservation_ttl_seconds: Annotated[StrictInt, Field(ge=1, le=86_400)] = 600
    retention_seconds: Annotated[StrictInt, Field(ge=0, le=10 * 366 * 86_400)] = 7 * 86_400
    #: how long commit / release / record remember an id (a retry within it is a duplicate);
    #: each settled call keeps a marker of about 200 bytes in Redis for this long
    idempotency_seconds: Annotated[StrictInt, Field(ge=60, le=7 * 86_400)] = 3600
    outage: OutagePolicy = OutagePolicy.FAIL_CLOSED
    strict: bool = False
    pricing: dict[AgentId, Pricing] = Field(default_factory=dict)
    default_pricing: Pricing | None = None
    defaults: TopDefaults = Field(default_factory=TopDefaults)
    orgs: dict[OrgId, OrgSpec] = Field(default_factory=dict)
    #: how Envoy's rate limit requests map onto subjects (``budgetlimiter.envoy``)
    envoy: EnvoyMapping | None = None

    _memo: _Cache = PrivateAttr(default_factory=_Cache)
    #: runtime overrides applied on top of the file (None: never set, see with_overrides)
    _overrides: Any = PrivateAttr(None)

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        parse_timezone(value)
        return value

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """Copy like pydantic (``update`` is not validated); the copy gets its own cache."""
        copy = super().model_copy(update=update, deep=deep)
        object.__setattr__(copy, "__pydantic_private__", {"_memo": _Cache(),
                                                          "_overrides": None})
        return copy

    def with_overrides(self, overrides: OverrideSet | None) -> Self:
        """This policy with the runtime ``overrides`` applied (a copy; see
        :mod:`budgetlimiter.policy.overrides`). ``resolve`` then gives each scope its
        override's entries, with ``override vN`` origins."""
        copy = self.model_copy()
        copy.__pydantic_private__["_overrides"] = overrides  # type: ignore[index]
        return copy

    @property
    def overrides(self) -> OverrideSet | None:
        """The runtime overrides in force (None: none were ever applied)."""
        found: OverrideSet | None = self.__pydantic_private__.get(  # type: ignore[union-attr]
            "_overrides")
        return found

    def file_policy(self) -> Self:
        """This policy without runtime overrides (what the file says)."""
        return self if self.overrides is None else self.with_overrides(None)

    def pricing_for(self, agent: str) -> Pricing:
        """Pricing of ``agent``: the policy's ``pricing[agent]``, else the shipped table
        (:mod:`budgetlimiter.policy.pricing`), else ``default_pricing``; raises
        :class:`UnknownAgent` when none applies (an unpriced agent is never counted as free)."""
        found = self.pricing.get(agent)
        if found is not None:
            return found
        found = lookup_pricing(agent)
        if found is not None:
            return found
        if self.default_pricing is not None:
            return self.default_pricing
        known = ", ".join(sorted(self.pricing)[:20]) or "none"
        raise UnknownAgent(
            f"agent {agent!r} has no pricing in the policy (priced agents: {known}) nor in "
            "the shipped pricing table, and the policy sets no default_pricing"
        )

    def timezone_for(self, org: str) -> ZoneInfo:
        """The org's timezone if it declares one, else the policy timezone."""
        key = ("tz", org)
        tz = self._cache().get(key)
        if tz is None:
            spec = self.orgs.get(org)
            name = spec.timezone if spec is not None and spec.timezone else self.timezone
            tz = parse_timezone(name)
            self._remember(key, tz)
        return tz

    def week_start_index(self) -> int:
        """``week_start`` as 0=Monday .. 6=Sunday."""
        return WEEKDAYS.index(self.week_start)

    def resolve(self, subject: Subject) -> EffectivePolicy:
        """The effective limits of every scope of ``subject`` (memoised per policy)."""
        # (pydantic's private-attribute lookup costs ~3 us; read the private dict directly)
        hit: EffectivePolicy | None = self.__pydantic_private__["_memo"].get(  # type: ignore[index]
            subject
        )
        if hit is None:
            hit = resolve_subject(self, subject, self.timezone_for(subject.org))
            self._remember(subject, hit)
        return hit

    def declared_orgs(self) -> tuple[str, ...]:
        """Ids of the explicitly declared orgs, in declaration order."""
        return tuple(self.orgs)

    def declared_scopes(self) -> tuple[Scope, ...]:
        """Every explicitly declared scope (orgs, teams, users and their agent scopes), and
        every scope with a runtime override."""
        found = declared_scopes(self)
        if self.overrides is None:
            return found
        extra = tuple(Scope.parse(s) for s in sorted(self.overrides.scopes)
                      if self.overrides.get(s) is not None)
        return found + tuple(s for s in extra if s not in found)

    def _cache(self) -> _Cache:
        private = self.__pydantic_private__
        assert private is not None
        memo: _Cache = private["_memo"]
        return memo

    def _remember(self, key: object, value: object) -> None:
        memo = self._cache()
        if len(memo) >= RESOLVE_CACHE_SIZE:
            memo.clear()
        memo[key] = value
