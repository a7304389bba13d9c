"""Calls of ``lua/lease.lua``: who does a piece of background work (an org's reconciliation,
alert delivery) when many processes share one Redis. Planning and reply reading only; no I/O.

A lease is a string key holding the holder id, with a TTL. ``take`` holds a free lease or
extends one's own, ``renew`` only extends one's own, ``release`` deletes only one's own, so a
process that stalled past its TTL never deletes or extends a lease someone else took since.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from .calls import ScriptCall

LeaseOp = Literal["take", "renew", "release"]


def new_holder_id() -> str:
    """A process-unique holder id that says where it runs: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class LeaseState:
    """A lease after a call: whether the caller holds it, who does, and for how long."""

    ours: bool
    holder: str  # "" when nobody holds it
    ms_left: int


def parse_lease(reply: Any) -> LeaseState:
    """Read ``lease.lua``'s ``{held, holder, ms left}``."""
    held, holder, ms_left = reply
    return LeaseState(int(held) == 1, _s(holder), max(0, int(ms_left)))


def lease_call(key: str, op: LeaseOp, holder: str, ms: int = 0, org: str = "") -> ScriptCall:
    """Plan one lease operation on ``key`` for ``holder`` (``ms``: lease length, take/renew)."""
    if op != "release" and ms < 1:
        raise ValueError("a lease lasts at least 1 ms")
    return ScriptCall("lease", [key], [op, holder, int(ms)], parse_lease, org=org)
