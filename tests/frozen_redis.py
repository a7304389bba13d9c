"""Redis's own clock, fixed, on memory://: fakeredis reads ``time.time`` for TIME (what the
scripts call "Redis's time") and for key expiry; these tests fix both, which a real
redis-server cannot do. Used where a behaviour depends on Redis's clock to the millisecond
(clock correction, the one-second TTL floor)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


def freeze_redis_time(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Redis's TIME answers ``seconds`` and keys age by nothing until the test ends."""
    from fakeredis._socket import _base
    from fakeredis.commands_mixins import server_mixin

    frozen = SimpleNamespace(time=lambda: seconds)
    monkeypatch.setattr(server_mixin, "time", frozen)
    monkeypatch.setattr(_base, "time", frozen)
