"""lease.lua on a real redis-server, called directly: the shortest lease it grants and the
lengths it refuses (the client refuses them first; the script must not rely on that)."""

from __future__ import annotations

import pytest
import redis

from budgetlimiter.engine.keys import KeySpace
from budgetlimiter.engine.scripts import Registry

pytestmark = pytest.mark.redis

KEY = f"{KeySpace('bl').org_base('acme')}:lease"


def test_a_lease_of_one_millisecond_is_granted_and_zero_or_none_is_refused(fresh_redis):
    r = fresh_redis.client()
    lease = Registry.default()["lease"].source
    for length in ("0", "-5", "soon"):
        with pytest.raises(redis.ResponseError, match="length must be a positive number"):
            r.eval(lease, 1, KEY, "take", "me", length)
    assert r.exists(KEY) == 0
    assert r.eval(lease, 1, KEY, "take", "me", "1") == [1, b"me", 1]
    r.close()
