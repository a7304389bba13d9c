"""The protocol between the sans-I/O engine and the clients that drive it.

Every operation is a *flow*: a generator that yields :data:`Request` objects and receives the
reply of each (or has the I/O error thrown in at the ``yield``), and finally returns the
operation's result. The sync and asyncio clients execute requests and nothing else, as
httpx's two ``auth_flow`` drivers do; the logic exists once. A flow is tested by feeding it
replies, with no Redis at all.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One script invocation and how to read its reply. Its reply is the raw script reply."""

    script: str
    keys: list[str]
    args: list[str | int]
    parse: Callable[[Any], Any] = field(repr=False)
    org: str = ""
    #: (counter key, metric code) of each budget, in reply order (the deny cache uses them)
    budget_keys: tuple[tuple[str, str], ...] = ()
    #: the reservation a check would make ("" for other calls)
    reservation_id: str = ""


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Script calls sent in one round trip; the reply is the list of their replies, an error
    reply standing in place (as an exception object) for the call that failed."""

    calls: list[ScriptCall]


@dataclass(frozen=True, slots=True)
class Command:
    """A plain Redis command, e.g. ``("SADD", key, member)``; the reply is Redis's."""

    args: tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class LoadScript:
    """Load a script's source into Redis (after a NOSCRIPT reply); the reply is its SHA."""

    name: str


@dataclass(frozen=True, slots=True)
class Detached:
    """Run ``flow`` so that it ends even if the caller goes away (an asyncio task cancelled):
    the asyncio client runs it in a task of its own, the sync client right away.

    With ``wait`` the caller waits for it (the reply is its result); without, the caller goes
    on at once (reply None) and errors are logged. Used for handing leases back and replaying
    usage queued during an outage: work that must not be lost with a cancelled caller.
    """

    flow: Flow[Any]
    wait: bool = False
    #: flows of one group can be waited for together (see :class:`Drain`)
    group: str = ""


@dataclass(frozen=True, slots=True)
class Drain:
    """Wait until every detached flow of ``group`` started so far has ended (reply None).
    The sync client runs detached flows at once, so for it there is nothing to wait for."""

    group: str


@dataclass(frozen=True, slots=True)
class Exclusive:
    """Run ``flow`` while no other exclusive flow of the same ``key`` runs in this client;
    the reply is the flow's result.

    When the caller goes away meanwhile (an asyncio task cancelled), the flow still runs to
    its end (it may have reserved budget in Redis) and ``abandoned`` receives its result, to
    give back what the caller will never use.
    """

    key: Hashable
    flow: Flow[Any]
    abandoned: Callable[[Any], None] | None = None


Request: TypeAlias = (ScriptCall | Pipeline | Command | LoadScript | Detached | Drain
                      | Exclusive)
#: an operation of the engine: yields requests, receives replies, returns a result
Flow = Generator[Request, Any, T]
