"""The unit of work between the sans-I/O core and the clients that execute it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One script invocation and how to read its reply."""

    script: str
    keys: list[str]
    args: list[str | int]
    parse: Callable[[Any], Any] = field(repr=False)
    org: str = ""
    #: (counter key, metric code) of each budget, in reply order (the deny cache uses them)
    budget_keys: tuple[tuple[str, str], ...] = ()
