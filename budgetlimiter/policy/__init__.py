"""Budget policies: models, loading (YAML/TOML) and inheritance resolution.

Import everything from here::

    from budgetlimiter.policy import Policy, load_policy, parse_policy

The implementation is split across :mod:`.policy_model` (limits, rates, pricing, scope tree),
:mod:`.policy_root` (:class:`Policy`), :mod:`.policy_resolve` (inheritance) and
:mod:`.policy_loader` (files and error reporting).
"""

from __future__ import annotations

from .envoy import EnvoyMapping
from .loader import load_policy, parse_policy, policy_from_dict
from .model import (
    AgentSpec,
    Defaults,
    LimitSpec,
    Mode,
    OrgDefaults,
    OrgDefaultSpec,
    OrgSpec,
    OutagePolicy,
    Pricing,
    RateSpec,
    Rollover,
    TeamDefaults,
    TeamDefaultSpec,
    TeamSpec,
    TopDefaults,
    UserDefaults,
    UserDefaultSpec,
    UserSpec,
)
from .resolve import EffectivePolicy, ScopeLimits
from .root import WEEKDAYS, Policy

__all__ = [
    "WEEKDAYS",
    "AgentSpec",
    "Defaults",
    "EffectivePolicy",
    "EnvoyMapping",
    "LimitSpec",
    "Mode",
    "OrgDefaultSpec",
    "OrgDefaults",
    "OrgSpec",
    "OutagePolicy",
    "Policy",
    "Pricing",
    "RateSpec",
    "Rollover",
    "ScopeLimits",
    "TeamDefaultSpec",
    "TeamDefaults",
    "TeamSpec",
    "TopDefaults",
    "UserDefaultSpec",
    "UserDefaults",
    "UserSpec",
    "load_policy",
    "parse_policy",
    "policy_from_dict",
]
