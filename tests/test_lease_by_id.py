"""Commit and release by id (as the HTTP sidecar does them) of reservations admitted from a
lease: settled in-process, a retry is a duplicate also after the lease went back (never
counted twice), on every backend and both clients."""

from __future__ import annotations

import pytest

from budgetlimiter import LeaseConfig, ReservationNotFound, ReservationSettled, Usage

from .lease_helpers import ONE, ORG, inv
from .policies import LEASES


def test_commit_and_release_by_id_settle_leased_reservations_when_leases_are_on(
        make_limiter):
    bl = make_limiter(LEASES, leases=LeaseConfig(calls=8, seconds=60))
    made = [bl.check(ORG, ONE) for _ in range(4)]
    assert all(d.allowed and d.leased for d in made)
    ids = [d.reservation.id for d in made]
    actual = Usage(input_tokens=10, invocations=1)
    assert bl.commit_by_id("acme", ids[0], actual, subject=ORG).status == "committed"
    assert bl.commit_by_id("acme", ids[0], actual, subject=ORG).status == "duplicate"
    assert bl.release(ids[1], org="acme").status == "released"
    with pytest.raises(ReservationSettled):
        bl.commit_by_id("acme", ids[1], actual, subject=ORG)
    assert bl.commit_by_id("acme", ids[2], actual, subject=ORG).status == "committed"
    plain = make_limiter(LEASES)
    assert inv(plain.status(ORG)).used == 0  # still in the lease
    bl.return_leases()
    # after the hand-back: a retry is still a duplicate, and the call in flight is counted
    assert bl.commit_by_id("acme", ids[0], actual, subject=ORG).status == "duplicate"
    assert bl.commit_by_id("acme", ids[3], actual, subject=ORG).status == "recorded"
    status = plain.status(ORG)
    assert inv(status).used == 3
    assert next(s for s in status if s.metric.value == "cost").used == 30


def test_a_leased_id_of_another_org_is_not_settled_in_process_when_leases_are_on(
        make_limiter):
    bl = make_limiter(LEASES, leases=LeaseConfig(calls=8, seconds=60))
    d = bl.check(ORG, ONE)
    assert d.leased
    with pytest.raises(ReservationNotFound):  # Redis knows no such reservation of "other"
        bl.release(d.reservation.id, org="other")
    assert bl.commit(d.reservation, ONE).status == "committed"  # still open in its lease
