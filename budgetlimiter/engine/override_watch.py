"""Following the runtime overrides published in Redis (see :mod:`budgetlimiter.policy.overrides`).

Every client watches ``P:{!overrides}:ver``: its timer polls it twice a second (one ``GET``,
independent of traffic), and the first check of a client polls before deciding, so a process
that starts applies the overrides in force before its first decision. When the version is
newer than the one applied, the set is read (``GET P:{!overrides}:doc``) and swapped in with
the policy (atomically: a request sees the old or the new limits, never a mix). No decision
pays an extra round trip.

Publishing (:func:`plan_publish`) goes through ``lua/overrides.lua``, which only moves the
version forward, so two publishers racing cannot leave an older set in force.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..policy.overrides import OverrideSet
from .calls import Command, Flow, ScriptCall
from .keys import KeySpace
from .outage import UNAVAILABLE

log = logging.getLogger("budgetlimiter")

#: seconds between two polls of the version key: a change applies within this plus one
#: round trip (a margin under the 2 s promise even on a loaded host)
POLL_SECONDS = 0.5


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class OverrideWatch:
    """What one client knows of the published overrides."""

    __slots__ = ("applied", "enabled", "last_poll", "missing", "pending")

    def __init__(self, enabled: bool = True) -> None:
        #: follow the published overrides at all
        self.enabled = enabled
        #: the first decision polls before deciding
        self.pending = enabled
        #: the version applied (0: none)
        self.applied = 0
        #: Redis had no version key at the last poll although this client applied one
        #: (a data loss: a process with the SQL store publishes them again)
        self.missing = False
        #: monotonic time of the last poll (the timer may tick faster for leases)
        self.last_poll = 0.0

    def due(self) -> bool:
        """Time for the timer to poll again (real time: injected clocks do not matter)."""
        return self.enabled and time.monotonic() - self.last_poll >= POLL_SECONDS * 0.9

    def poll(self, keys: KeySpace, apply: Callable[[OverrideSet], None]) -> Flow[None]:
        """Read the published version; apply a newer set. Redis errors are logged and the
        overrides in force stay (they are kept in-process, not dropped on an outage)."""
        self.pending = False
        self.last_poll = time.monotonic()
        try:
            raw = yield Command(("GET", keys.overrides_version))
            if raw is None:
                self.missing = self.applied > 0
                return
            self.missing = False
            version = int(_text(raw))
            if version <= self.applied:
                return
            doc = yield Command(("GET", keys.overrides_doc))
        except UNAVAILABLE as exc:
            log.debug("override poll skipped: %s", exc)
            return
        if doc is None:
            return
        try:
            found = OverrideSet.from_json(doc)
        except (ValueError, KeyError, TypeError) as exc:  # never fail a decision over it
            log.error("published overrides v%s unreadable, keeping v%d: %s", version,
                      self.applied, exc)
            return
        if found.version > self.applied:
            apply(found)  # (sets ``applied``)
            log.info("runtime overrides v%d applied", found.version)


def plan_publish(keys: KeySpace, overrides: OverrideSet) -> ScriptCall:
    """The ``overrides`` script call that publishes ``overrides`` (see the module docstring);
    its reply parses to ``(published, version in force)``."""

    def parse(reply: Any) -> tuple[bool, int]:
        return int(_text(reply[0])) == 1, int(_text(reply[1]))

    return ScriptCall("overrides", [keys.overrides_version, keys.overrides_doc],
                      [overrides.version, overrides.to_json()], parse)
