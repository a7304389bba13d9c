"""No key without a TTL: the key-space check run after every real-Redis behaviour test.

Every key budgetlimiter writes expires (counters ``retention_seconds`` after their period,
reservations and settle markers after their TTL plus ``idempotency_seconds``, GCRA keys once
their bucket is full again, ledgers after retention, adjustment markers after the idempotency
window) — except the few structural keys below, one per org (or one in all), which live as
long as the org does. A key outside that list without a TTL is a leak: Redis memory that only
grows (a counter created by a late settle after its period's key expired, say).

:func:`keys_without_ttl` is called by the ``backend_url`` (redis rows) and ``flaky_redis``
fixtures after the test body; a test that writes such keys on purpose says why with
``@pytest.mark.keys_without_ttl("reason")``. The same list is in README "Redis layout".
"""

from __future__ import annotations

import re
from typing import Any

#: the kinds of org key (``P:{org}:<kind>``) that have no TTL by design
#: (budgetlimiter/engine/keys.py): live reservations by expiry, ledgers changed since the
#: last flush, threshold events, the org's flush epoch, the pending flush record
STRUCTURAL_ORG_KEYS = ("rx", "dirty", "ev", "epoch", "pf")
#: keys outside any org (``P:<name>``) that have no TTL by design: orgs with markers
STRUCTURAL_GLOBAL_KEYS = ("dirty-orgs",)

_ORG_KINDS = "|".join(map(re.escape, STRUCTURAL_ORG_KEYS))
_GLOBAL = "|".join(map(re.escape, STRUCTURAL_GLOBAL_KEYS))
#: ``<prefix>:{<org>}:<kind>`` or ``<prefix>:<global name>`` (prefixes have no braces)
_STRUCTURAL = re.compile(rf"^[^{{}}]+:(?:\{{[^{{}}]*\}}:(?:{_ORG_KINDS})|(?:{_GLOBAL}))$")


def is_structural(key: str) -> bool:
    """A key the layout keeps without a TTL (any prefix)."""
    return _STRUCTURAL.match(key) is not None


def keys_without_ttl(client: Any) -> list[str]:
    """Every key of ``client``'s database that has no TTL and is not structural, sorted."""
    keys = [k.decode() if isinstance(k, bytes) else k for k in client.scan_iter(count=1000)]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
    ttls = pipe.execute()
    # -1: no TTL; -2: expired (or deleted) between SCAN and PTTL, which is fine
    return sorted(k for k, ttl in zip(keys, ttls, strict=True)
                  if ttl == -1 and not is_structural(k))
