"""The hot path and the reconciler on a real 3-master Redis Cluster: every decision stays in
one slot (no CROSSSLOT), many orgs spread over slots."""

from __future__ import annotations

import pytest
import redis

from budgetlimiter import BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.durable.reconciler import Reconciler
from budgetlimiter.engine.keys import KeySpace

from .cluster import RedisClusterNodes
from .policies import DEFAULTS_ONLY

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster():
    nodes = RedisClusterNodes(masters=3, replicas=1).start()
    yield nodes
    nodes.stop()


@pytest.fixture
def limiter(cluster, clock):
    cluster.flushall()
    bl = BudgetLimiter(parse_policy(DEFAULTS_ONLY), cluster.url, clock=clock, timeout=2)
    assert bl.engine.cluster
    yield bl
    bl.close()


def test_decisions_across_many_orgs_on_a_cluster(limiter, cluster):
    orgs = [f"org-{i}" for i in range(40)] + ["{weird}:org", "ünï/côdé"]
    slots = {redis.crc.key_slot(KeySpace().org_base(o).encode()) for o in orgs}
    assert len(slots) > 30
    for org in orgs:
        s = Subject(org, "gpt", team="eng", user="alice")
        d = limiter.check(s, Usage(input_tokens=1000))
        assert d.allowed and len(d.limits) == 5
        r = limiter.commit(d.reservation, Usage(input_tokens=400))
        assert r.status == "committed"
        assert limiter.record(s, Usage(input_tokens=1), request_id="x").status == "recorded"
        org_cost = next(x for x in limiter.status(s) if str(x.scope) == str(s).split("/")[0])
        assert org_cost.used == 401
    with redis.Redis(port=cluster.nodes[0].port) as admin:
        roles = admin.execute_command("CLUSTER", "NODES").decode().splitlines()
    flags = [line.split()[2] for line in roles]
    assert sum("master" in f for f in flags) == 3 and sum("slave" in f for f in flags) == 3
    batch = limiter.check_batch([(Subject(o, "gpt"), Usage(input_tokens=5)) for o in orgs])
    assert all(d.allowed for d in batch)


def test_all_or_nothing_and_limits_hold_on_a_cluster(limiter):
    s = Subject("acme", "gpt", team="eng", user="bob")
    allowed = 0
    while limiter.check(s, Usage(input_tokens=20_000)).allowed:  # user: 100k tokens a day
        allowed += 1
        assert allowed < 100
    assert allowed == 5
    status = {(str(x.scope), x.metric.value): x for x in limiter.status(s)}
    assert status[("org:acme/team:eng/user:bob", "total_tokens")].reserved == 100_000
    assert status[("org:acme/team:eng", "cost")].reserved == 100_000  # $0.02 x 5, no more


def test_reconciler_flushes_and_restores_on_a_cluster(limiter, cluster, make_store):
    store = make_store()
    rec = Reconciler(limiter, store)
    subjects = [Subject(f"o{i}", "gpt", team="t", user="u") for i in range(10)]
    for s in subjects:
        limiter.record(s, Usage(input_tokens=1000))
    stats = rec.run_once()
    assert stats.flushes == 10
    cluster.flushall()
    rec.run_once()
    for s in subjects:
        org = next(x for x in limiter.status(s) if str(x.scope) == f"org:{s.org}")
        assert org.used == 1000


def test_org_leases_live_in_their_orgs_slot_and_split_the_work_on_a_cluster(limiter, make_store):
    from budgetlimiter.durable.service import ReconcileService, build_sinks

    subjects = [Subject(f"o{i}", "gpt", team="t", user="u") for i in range(10)]
    for s in subjects:
        limiter.record(s, Usage(input_tokens=1000))
    ks = limiter.keys
    for s in subjects:
        assert (redis.crc.key_slot(ks.reconcile_lease(s.org).encode())
                == redis.crc.key_slot(ks.dirty(s.org).encode())
                == redis.crc.key_slot(ks.reconciled(s.org).encode()))
    one = ReconcileService(limiter, make_store(), build_sinks((), None), holder="one")
    two = ReconcileService(limiter, make_store(), build_sinks((), None), holder="two")
    assert one.reconciler.run_once().flushes == 10
    assert two.reconciler.run_once().elsewhere == 10  # one holds them all: no second flush
    two.take_snapshot()  # reads the keys of 10 slots in one cluster pipeline
    snap = two.snapshot
    assert snap is not None and snap.error == ""
    assert {o.holder for o in snap.orgs} == {"one"}
    assert all(o.reconciled_ms == limiter.clock() for o in snap.orgs)
    assert one.leases is not None and one.leases.release_all() == 10


@pytest.mark.parametrize("dead_at", [0, 1, 3])
def test_several_seeds_start_while_one_is_down(cluster, clock, dead_at, dead_port_number):
    """``redis+cluster://h1:p1,h2:p2,...``: the client discovers the cluster from the first
    seed that answers, sync and asyncio, wherever the dead seed stands in the list."""
    import asyncio

    from budgetlimiter import AsyncBudgetLimiter

    cluster.flushall()
    seeds = [f"127.0.0.1:{n.port}" for n in cluster.nodes[:3]]
    seeds.insert(dead_at, f"127.0.0.1:{dead_port_number}")  # nothing can listen there
    url = "redis+cluster://" + ",".join(seeds) + "/0"
    s = Subject("acme", "gpt", team="eng", user="alice")
    bl = BudgetLimiter(parse_policy(DEFAULTS_ONLY), url, clock=clock, timeout=2)
    try:
        assert bl.engine.cluster
        assert bl.check(s, Usage(input_tokens=10)).allowed
    finally:
        bl.close()

    async def main() -> bool:
        abl = AsyncBudgetLimiter(parse_policy(DEFAULTS_ONLY), url, clock=clock, timeout=2)
        try:
            return (await abl.check(s, Usage(input_tokens=10))).allowed
        finally:
            await abl.aclose()

    assert asyncio.run(main())


def test_async_client_coalesces_on_a_cluster(cluster, clock):
    import asyncio

    from budgetlimiter import AsyncBudgetLimiter

    cluster.flushall()

    async def main() -> list[bool]:
        bl = AsyncBudgetLimiter(parse_policy(DEFAULTS_ONLY), cluster.url, clock=clock,
                                timeout=2)
        subjects = [Subject(f"a{i % 20}", "gpt", team="t", user=f"u{i}") for i in range(200)]
        decisions = await asyncio.gather(*[bl.check(s, Usage(input_tokens=10))
                                           for s in subjects])
        await bl.aclose()
        return [d.allowed for d in decisions]

    assert all(asyncio.run(main()))


def test_decisions_survive_a_live_slot_migration(cluster, clock):
    """Move the slot of a busy org between masters while it is being checked: MOVED / ASK /
    TRYAGAIN are handled by the client, no decision is lost or doubled."""
    import subprocess
    import threading

    cluster.flushall()
    bl = BudgetLimiter(parse_policy(DEFAULTS_ONLY), cluster.url, clock=clock, timeout=2)
    org = "migrating-org"
    slot = redis.crc.key_slot(KeySpace().org_base(org).encode())
    nodes = {}
    for node in cluster.nodes:
        with node.client() as c:
            info = c.execute_command("CLUSTER", "MYID")
        nodes[node.port] = info.decode() if isinstance(info, bytes) else info
    with cluster.nodes[0].client() as admin:
        owner_port = next(p for p in nodes if slot in _slots_of(admin, nodes[p]))
        masters = [p for p in nodes if _slots_of(admin, nodes[p])]
    target_port = next(p for p in masters if p != owner_port)
    errors: list[BaseException] = []
    committed = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal committed
        s = Subject(org, "gpt", team="t", user="u")
        while not stop.is_set():
            try:
                d = bl.check(s, Usage(input_tokens=1))
                if d.allowed:
                    assert bl.commit(d.reservation, Usage(input_tokens=1)).status == "committed"
                    committed += 1
            except BaseException as exc:  # collected and reported below
                errors.append(exc)
                return

    t = threading.Thread(target=load)
    t.start()
    try:
        import time

        time.sleep(0.3)
        src, dst = nodes[owner_port], nodes[target_port]
        subprocess.run(["redis-cli", "--cluster", "reshard", f"127.0.0.1:{owner_port}",
                        "--cluster-from", src, "--cluster-to", dst, "--cluster-slots", "16384",
                        "--cluster-yes", "--cluster-pipeline", "10"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=120)
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    with cluster.nodes[0].client() as admin:
        assert slot in _slots_of(admin, nodes[target_port])
    org_used = next(x for x in bl.status(Subject(org, "gpt", team="t", user="u"))
                    if str(x.scope) == f"org:{org}")
    assert org_used.used == committed > 0
    bl.close()


def _slots_of(client: redis.Redis, node_id: str) -> set[int]:
    owned: set[int] = set()
    for start, end, *nodes in client.execute_command("CLUSTER", "SLOTS"):
        master = nodes[0]
        mid = master[2].decode() if isinstance(master[2], bytes) else master[2]
        if mid == node_id:
            owned.update(range(int(start), int(end) + 1))
    return owned


def test_leases_on_a_cluster(cluster, clock):
    """Leases open, shrink and go back through the same single-slot scripts."""
    from budgetlimiter import LeaseConfig

    cluster.flushall()
    bl = BudgetLimiter(parse_policy(DEFAULTS_ONLY), cluster.url, clock=clock, timeout=2,
                       leases=LeaseConfig(calls=8, seconds=60))
    orgs = [f"lease-{i}" for i in range(6)]
    for org in orgs:
        s = Subject(org, "gpt", team="t")  # no user: no rate limit, so it is leased
        kept = None
        for n in range(10):
            d = bl.check(s, Usage(input_tokens=10))
            assert d.allowed and d.leased
            if n == 7:
                kept = d  # in flight when the lease stops admitting (shrink)
            else:
                bl.commit(d.reservation, Usage(input_tokens=10))
        assert kept is not None
        bl.commit(kept.reservation, Usage(input_tokens=10))
    bl.close()
    plain = BudgetLimiter(parse_policy(DEFAULTS_ONLY), cluster.url, clock=clock, timeout=2)
    for org in orgs:
        inv = next(x for x in plain.status(Subject(org, "gpt", team="t"))
                   if x.metric.value == "invocations")
        assert (inv.used, inv.reserved) == (10, 0)
    plain.close()
