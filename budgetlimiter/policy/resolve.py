"""Inheritance: from a :class:`Policy` and a :class:`Subject` to the effective limits per scope.

Rules (see :meth:`Policy.resolve`):

* A scope's effective limits are its explicitly declared node's limits merged over the
  applicable default node, per key (``(metric, period)`` for limits, ``(metric, per)`` for
  rates): the explicit entry wins, other default entries are kept. ``inherit: false`` on the
  explicit node drops the default.
* The applicable default is the nearest one. Org: top ``defaults.org``. Team: the org's
  ``defaults.team``, else top ``defaults.team``. User: the team's ``defaults.user``, else the
  org's, else top ``defaults.user``. "The org's"/"the team's" means the declared node and then
  the default node standing in for it (so ``defaults: {team: {defaults: {user: ...}}}`` works).
* A default node is itself a node spec: its ``agents`` and ``defaults.agent`` apply to the
  scopes it is the default for.
* Agent scope ``N/agent:a``, in priority order: the declared ``N.agents[a]``, the default node's
  ``agents[a]``, then the nearest ``defaults.agent`` of N (declared node, then its default
  node; for an org finally top ``defaults.agent``). An agent spec with ``inherit: false``
  stops the chain after itself.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ..subject import Scope, Subject
from .model import AgentSpec, LimitSpec, RateSpec

if TYPE_CHECKING:
    from .root import Policy

_PLAIN = re.compile(r"[A-Za-z0-9_@+~-]+\Z")


def path_segment(key: str) -> str:
    """``.key`` for plain keys, ``["key"]`` (JSON-quoted) for keys with other characters."""
    return f".{key}" if _PLAIN.match(key) else f"[{json.dumps(key, ensure_ascii=False)}]"


@dataclass(frozen=True)
class ScopeLimits:
    """The effective limits and rates of one scope; ``origins`` names, per limit then per
    rate, where each was declared (e.g. ``orgs.acme.teams.eng.defaults.user.limits[0]``)."""

    scope: Scope
    limits: tuple[LimitSpec, ...]
    rates: tuple[RateSpec, ...]
    origins: tuple[str, ...]

    @property
    def limit_origins(self) -> tuple[str, ...]:
        """Origins of :attr:`limits`, in order."""
        return self.origins[: len(self.limits)]

    @property
    def rate_origins(self) -> tuple[str, ...]:
        """Origins of :attr:`rates`, in order."""
        return self.origins[len(self.limits) :]


@dataclass(frozen=True)
class EffectivePolicy:
    """What applies to one subject: its timezone and every scope that has limits or rates,
    in :meth:`Subject.scopes` order."""

    subject: Subject
    timezone: ZoneInfo
    scopes: tuple[ScopeLimits, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (money as strings), for ``policy show``."""
        out_scopes: list[dict[str, Any]] = []
        for sl in self.scopes:
            limits = [
                {
                    "metric": lim.metric.value,
                    "amount": format(lim.amount, "f"),
                    "period": lim.period.value,
                    "mode": lim.mode.value,
                    "thresholds": list(lim.thresholds),
                    "rollover": lim.rollover.value,
                    "rollover_cap": None
                    if lim.rollover_cap is None
                    else format(lim.rollover_cap, "f"),
                    "forecast_alert": lim.alerts_on_forecast,
                    "origin": origin,
                }
                for lim, origin in zip(sl.limits, sl.limit_origins, strict=True)
            ]
            rates = [
                {
                    "metric": rate.metric.value,
                    "limit": rate.limit,
                    "per": rate.per,
                    "burst": rate.burst_units,
                    "origin": origin,
                }
                for rate, origin in zip(sl.rates, sl.rate_origins, strict=True)
            ]
            out_scopes.append({"scope": str(sl.scope), "limits": limits, "rates": rates})
        s = self.subject
        return {
            "subject": {"org": s.org, "team": s.team, "user": s.user, "agent": s.agent},
            "timezone": self.timezone.key,
            "scopes": out_scopes,
        }


@dataclass(frozen=True)
class _Layer:
    spec: Any  # a node spec or AgentSpec
    path: str


def _chain(explicit: _Layer | None, default: _Layer | None) -> list[_Layer]:
    out: list[_Layer] = []
    if explicit is not None:
        out.append(explicit)
        if not getattr(explicit.spec, "inherit", True):
            return out
    if default is not None:
        out.append(default)
    return out


def _nearest(layers: list[_Layer], level: str) -> _Layer | None:
    for layer in layers:
        spec = getattr(layer.spec.defaults, level, None)
        if spec is not None:
            return _Layer(spec, f"{layer.path}.defaults.{level}")
    return None


def _child(layer: _Layer | None, attr: str, key: str | None) -> _Layer | None:
    if layer is None or key is None:
        return None
    spec = getattr(layer.spec, attr).get(key)
    return None if spec is None else _Layer(spec, f"{layer.path}.{attr}{path_segment(key)}")


def _top(policy: Policy, level: str) -> _Layer | None:
    spec = getattr(policy.defaults, level)
    return None if spec is None else _Layer(spec, f"defaults.{level}")


def _merge(scope: Scope, layers: list[_Layer]) -> ScopeLimits:
    limits: list[LimitSpec] = []
    rates: list[RateSpec] = []
    lim_origins: list[str] = []
    rate_origins: list[str] = []
    seen: set[Any] = set()
    for layer in layers:
        for i, lim in enumerate(layer.spec.limits):
            if ("L", lim.key) not in seen:
                seen.add(("L", lim.key))
                limits.append(lim)
                lim_origins.append(f"{layer.path}.limits[{i}]")
        for i, rate in enumerate(layer.spec.rates):
            if ("R", rate.key) not in seen:
                seen.add(("R", rate.key))
                rates.append(rate)
                rate_origins.append(f"{layer.path}.rates[{i}]")
    return ScopeLimits(scope, tuple(limits), tuple(rates), tuple(lim_origins + rate_origins))


def _agent_layers(owner: list[_Layer], agent: str, last: _Layer | None) -> list[_Layer]:
    candidates = [c for c in (_child(layer, "agents", agent) for layer in owner) if c is not None]
    fallback = _nearest(owner, "agent") or last
    if fallback is not None:
        candidates.append(fallback)
    out: list[_Layer] = []
    for layer in candidates:
        out.append(layer)
        if isinstance(layer.spec, AgentSpec) and not layer.spec.inherit:
            break
    return out


def resolve_subject(policy: Policy, subject: Subject, tz: ZoneInfo) -> EffectivePolicy:
    """Compute the :class:`EffectivePolicy` of ``subject`` (uncached; use ``Policy.resolve``)."""
    org_spec = policy.orgs.get(subject.org)
    org_exp = None if org_spec is None else _Layer(org_spec, f"orgs{path_segment(subject.org)}")
    org_layers = _chain(org_exp, _top(policy, "org"))
    owners: list[tuple[Scope, list[_Layer]]] = [(Scope(subject.org), org_layers)]

    team_layers: list[_Layer] = []
    if subject.team is not None:
        team_exp = _child(org_exp, "teams", subject.team)
        team_default = _nearest(org_layers, "team") or _top(policy, "team")
        team_layers = _chain(team_exp, team_default)
        owners.append((Scope(subject.org, subject.team), team_layers))
        parent_exp = team_exp
    else:
        parent_exp = org_exp
    if subject.user is not None:
        user_exp = _child(parent_exp, "users", subject.user)
        user_default = (
            _nearest(team_layers, "user") or _nearest(org_layers, "user") or _top(policy, "user")
        )
        owners.append(
            (Scope(subject.org, subject.team, subject.user), _chain(user_exp, user_default))
        )

    out: list[ScopeLimits] = []
    for owner_scope, layers in owners:
        for scope, scope_layers in (
            (owner_scope, layers),
            (
                Scope(owner_scope.org, owner_scope.team, owner_scope.user, subject.agent),
                _agent_layers(
                    layers,
                    subject.agent,
                    _top(policy, "agent") if owner_scope.level == "org" else None,
                ),
            ),
        ):
            merged = _merge(scope, scope_layers)
            if merged.limits or merged.rates:
                out.append(merged)
    return EffectivePolicy(subject, tz, tuple(out))


def declared_scopes(policy: Policy) -> tuple[Scope, ...]:
    """Every explicitly declared scope of ``policy``, outermost first."""
    out: list[Scope] = []
    for org_id, org in policy.orgs.items():
        out.append(Scope(org_id))
        out.extend(Scope(org_id, agent=a) for a in org.agents)
        for user_id, user in org.users.items():
            out.append(Scope(org_id, user=user_id))
            out.extend(Scope(org_id, user=user_id, agent=a) for a in user.agents)
        for team_id, team in org.teams.items():
            out.append(Scope(org_id, team_id))
            out.extend(Scope(org_id, team_id, agent=a) for a in team.agents)
            for user_id, user in team.users.items():
                out.append(Scope(org_id, team_id, user_id))
                out.extend(Scope(org_id, team_id, user_id, a) for a in user.agents)
    return tuple(out)
