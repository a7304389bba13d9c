"""ack.lua on a real redis-server: it drops the pending flush record only when that record is
the one acknowledged. A late ack (a reconciler that lost a race) must leave a newer record
alone, or the usage moved into it would never reach SQL."""

from __future__ import annotations

import pytest

from budgetlimiter.engine.keys import KeySpace
from budgetlimiter.engine.scripts import Registry

pytestmark = pytest.mark.redis


def test_a_late_ack_leaves_a_newer_pending_record_and_a_second_ack_changes_nothing(
        fresh_redis):
    r = fresh_redis.client()
    ks = KeySpace("bl")
    epoch, pending = ks.epoch("acme"), ks.pending_flush("acme")
    ack = Registry.default()["ack"].source
    newer = "f-new\nbl:{acme}:l:x\tn=1\n"
    r.set(pending, newer)
    # the record of flush "f-old" was acknowledged and replaced already: nothing to drop
    assert r.eval(ack, 2, epoch, pending, "f-old", "4") == 0
    assert r.get(pending) == newer.encode() and r.get(epoch) is None
    assert r.eval(ack, 2, epoch, pending, "f-new", "5") == 1
    assert r.get(pending) is None and r.get(epoch) == b"5"
    # acknowledged twice (a retry): nothing there, nothing changes
    assert r.eval(ack, 2, epoch, pending, "f-new", "6") == 0
    assert r.get(epoch) == b"5"
    r.close()
