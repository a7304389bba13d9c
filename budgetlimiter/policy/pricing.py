"""The shipped pricing table (``budgetlimiter/data/pricing.yaml``) and its lookups.

The table holds example list prices of common models, in USD per million input / cached input /
output tokens, or per invocation for flat-priced agents. It is consulted by
:meth:`Policy.pricing_for <budgetlimiter.policy.Policy.pricing_for>` only for agents that the
policy does not price itself, and before the policy's ``default_pricing``::

    policy pricing[agent]  >  shipped table  >  policy default_pricing  >  UnknownAgent

The prices are examples to be checked, not authoritative: put what you pay in the policy.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml

from ..errors import PolicyError
from .model import Pricing

TABLE_RESOURCE = "data/pricing.yaml"
#: a trailing model-snapshot date: ``-2024-08-06`` (OpenAI) or ``-20250514`` (Anthropic)
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


def _parse_table(text: str, source: str) -> tuple[dict[str, Pricing], dict[str, str]]:
    doc: Any = yaml.safe_load(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise PolicyError(f"{source}: a pricing table needs a `models:` mapping")
    models: dict[str, Pricing] = {}
    for name, entry in doc["models"].items():
        try:
            models[str(name)] = Pricing.model_validate(entry)
        except ValueError as exc:
            raise PolicyError(f"{source}: models.{name}: {exc}") from None
    aliases = {str(k): str(v) for k, v in (doc.get("aliases") or {}).items()}
    for alias, target in aliases.items():
        if target not in models:
            raise PolicyError(f"{source}: alias {alias!r} points to unknown model {target!r}")
    return models, aliases


@functools.lru_cache(maxsize=1)
def _table() -> tuple[Mapping[str, Pricing], Mapping[str, str]]:
    text = resources.files("budgetlimiter").joinpath(TABLE_RESOURCE).read_text("utf-8")
    models, aliases = _parse_table(text, TABLE_RESOURCE)
    return MappingProxyType(models), MappingProxyType(aliases)


def shipped_pricing() -> Mapping[str, Pricing]:
    """The shipped table as a read-only ``{model: Pricing}`` mapping (aliases not included)."""
    return _table()[0]


@functools.lru_cache(maxsize=4096)
def lookup_pricing(agent: str) -> Pricing | None:
    """Shipped pricing of ``agent``: exact id, then an alias, then the id without a snapshot
    date suffix (``gpt-4o-2024-08-06`` → ``gpt-4o``). ``None`` when the table has no entry."""
    models, aliases = _table()
    for name in (agent, _DATE_SUFFIX.sub("", agent)):
        found = models.get(name)
        if found is None and name in aliases:
            found = models[aliases[name]]
        if found is not None:
            return found
    return None
