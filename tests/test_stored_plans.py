"""What a reservation's stored plan looks like after an operation rewrites it: the format
documented in lua/lib.lua, a head line ``<state>|<expiry ms>|<ledger key>`` and one line per
entry, nothing else (a stray line would be carried by every later rewrite)."""

from __future__ import annotations

import pytest

from budgetlimiter import LeaseConfig
from budgetlimiter.usage import Amounts

from .lease_helpers import ONE, ORG
from .policies import LEASES


@pytest.mark.sync_only("plans the shrink op by hand (plan_shrink)")
def test_a_shrunk_reservation_keeps_its_head_line_and_one_line_per_budget(
        make_limiter, clock, raw_redis):
    """A lease of 4 calls of ONE reserves 4 invocations and 40 micro-USD; shrunk to 2 and 20
    with a new expiry, its plan is the same two budget lines with the smaller estimates under
    a head with the new expiry."""
    bl = make_limiter(LEASES, leases=LeaseConfig(calls=4, seconds=60))
    d = bl.check(ORG, ONE)
    lease = bl.leases._unsettled[d.reservation.lease]
    settle = bl.engine.planners.settle
    key = settle.core.keys.reservation("acme", lease.reservation.id)
    head, day, month, end = raw_redis.get(key).decode().split("\n")
    state, _expiry, ledger = head.split("|")
    assert (state, end) == ("R", "")
    assert day.split("\t")[2:4] == ["n", "4"] and month.split("\t")[2:4] == ["c", "40"]
    now = clock()
    keep = Amounts(invocations=2, input_tokens=0, output_tokens=0, total_tokens=0, cost=20)
    bl.execute(settle.plan_shrink(lease.reservation, keep, now + 120_000, now))
    # the key lives to the new expiry plus the settle-marker retention (idempotency: 1 h)
    assert 3_720_000 - 60_000 < raw_redis.pttl(key) <= 3_720_000
    assert raw_redis.get(key).decode() == "".join([
        f"R|{now + 120_000}|{ledger}\n",
        day.replace("\tn\t4\t", "\tn\t2\t") + "\n",
        month.replace("\tc\t40\t", "\tc\t20\t") + "\n",
    ])


def test_a_settled_reservation_is_marked_dc_when_committed_and_dr_when_released(
        make_limiter, raw_redis):
    """The settle markers documented in lua/lib.lua: a later settle of the same id reads them
    (a duplicate or a conflict), also one made by the next version of the scripts."""
    bl = make_limiter(LEASES)
    committed, released = bl.check(ORG, ONE), bl.check(ORG, ONE)
    bl.commit(committed.reservation, ONE)
    bl.release(released.reservation)
    keys = bl.engine.planners.settle.core.keys
    assert raw_redis.get(keys.reservation("acme", committed.reservation.id)) == b"Dc"
    assert raw_redis.get(keys.reservation("acme", released.reservation.id)) == b"Dr"


@pytest.mark.sync_only("plans the shrink op by hand (plan_shrink)")
def test_a_shrink_writes_nothing_to_a_budget_it_reserved_nothing_on(make_limiter, clock,
                                                                     raw_redis):
    """A lease of calls with no output tokens reserves 0 of a soft weekly output-token budget
    (a hard one would not be leased): the check never creates that week's counter, and a
    shrink (keeping 0 of 0) does not either."""
    weekly = "{metric: output_tokens, amount: 1000, period: week, mode: soft}"
    policy = LEASES.replace("period: month}", f"period: month}}\n      - {weekly}")
    bl = make_limiter(policy, leases=LeaseConfig(calls=4, seconds=60))
    d = bl.check(ORG, ONE)
    lease = bl.leases._unsettled[d.reservation.lease]
    assert list(raw_redis.scan_iter("*:c:o:week:*")) == []
    now = clock()
    keep = Amounts(invocations=2, input_tokens=0, output_tokens=0, total_tokens=0, cost=20)
    planned = bl.engine.planners.settle.plan_shrink(lease.reservation, keep, now + 120_000, now)
    assert bl.execute(planned).status == "released"
    assert list(raw_redis.scan_iter("*:c:o:week:*")) == []
