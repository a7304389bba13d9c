"""Direct tests of the script layer against a real redis-server: one EVALSHA per decision,
NOSCRIPT recovery, key layout and hash-tag co-location."""

from __future__ import annotations

import threading
import time

import redis

from budgetlimiter import BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.engine.keys import KeySpace
from budgetlimiter.engine.scripts import Registry

from .policies import BASIC

DEEP = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits: [{metric: cost, amount: "100", period: month}]
    agents: {gpt: {limits: [{metric: cost, amount: "50", period: month}]}}
    teams:
      eng:
        limits: [{metric: cost, amount: "10", period: day}]
        users:
          alice:
            limits: [{metric: cost, amount: "5", period: day}]
"""


def commandstats(client: redis.Redis) -> dict[str, int]:
    info = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in info.items()}


def test_a_four_level_check_is_exactly_one_evalsha(fresh_redis, clock):
    bl = BudgetLimiter(parse_policy(DEEP), fresh_redis.url, clock=clock, timeout=2)
    s = Subject("acme", "gpt", team="eng", user="alice")
    d = bl.check(s, Usage(input_tokens=10))  # loads the script once
    assert len(d.limits) == 4
    admin = fresh_redis.client()
    admin.config_resetstat()
    seen: list[tuple[str, str]] = []
    ready = threading.Event()

    def watch() -> None:
        with admin.monitor() as m:
            ready.set()
            for cmd in m.listen():
                seen.append((cmd.get("client_type", ""), cmd["command"]))
                if cmd["command"].startswith("ECHO done"):
                    return

    t = threading.Thread(target=watch)
    t.start()
    ready.wait(5)
    time.sleep(0.1)
    bl.check(s, Usage(input_tokens=10))
    fresh_redis.client().echo("done")
    t.join(5)
    setup = ("ECHO", "HELLO", "CLIENT")
    # (the client's timer polls the runtime overrides' version key twice a second, whatever
    # the traffic: not part of a decision)
    from_clients = [c for kind, c in seen if kind != "lua" and not c.startswith(setup)
                    and "{!overrides}" not in c]
    inside_script = [c for kind, c in seen if kind == "lua"]
    # one command from the client; everything else ran inside the script
    assert len(from_clients) == 1 and from_clients[0].startswith("EVALSHA"), from_clients
    assert inside_script, "MONITOR should show the script's own commands"
    stats = commandstats(admin)
    assert stats.get("evalsha") == 1
    assert "script|load" not in stats and "eval" not in stats


def test_noscript_recovery_after_script_flush_and_restart(redis_server, clock):
    redis_server.restart()
    bl = BudgetLimiter(parse_policy(BASIC), redis_server.url, clock=clock, timeout=2)
    s = Subject("acme", "gpt", team="eng", user="alice")
    assert bl.check(s, Usage(input_tokens=10)).allowed
    redis_server.client().script_flush()
    assert bl.check(s, Usage(input_tokens=10)).allowed
    redis_server.restart()  # new process: no scripts, no data, stale pooled connections
    d = bl.check(s, Usage(input_tokens=10))
    assert d.allowed
    # batch path reloads too
    redis_server.client().script_flush()
    assert all(x.allowed for x in bl.check_batch([(s, Usage(input_tokens=1))] * 3))


#: an org id made of the characters that could break a hash tag or a key, with limits at three
#: levels, a rate and a threshold, so that every kind of per-org key is written
WEIRD_ORG = "we{ird}:org/*"
WEIRD = f"""
timezone: UTC
pricing: {{gpt: {{input_per_million: "1", output_per_million: "2"}}}}
orgs:
  "{WEIRD_ORG}":
    limits: [{{metric: cost, amount: "100", period: month}}]
    rates: [{{metric: invocations, limit: 100, per: second}}]
    teams:
      eng:
        limits: [{{metric: cost, amount: "10", period: day}}]
        users:
          alice:
            limits: [{{metric: cost, amount: "0.00002", period: day, thresholds: [25]}}]
"""


def test_every_key_of_a_decision_shares_the_org_hash_tag(fresh_redis, clock):
    bl = BudgetLimiter(parse_policy(WEIRD), fresh_redis.url, clock=clock, timeout=2)
    s = Subject(WEIRD_ORG, "gpt", team="eng", user="alice")
    d = bl.check(s, Usage(input_tokens=10))
    assert d.allowed and len(d.limits) == 4  # three budgets and the rate
    kept = bl.check(s, Usage(input_tokens=1))  # stays open: its reservation keys remain
    assert kept.allowed
    assert bl.commit(d.reservation, Usage(input_tokens=5)).thresholds  # the 25 % event
    bl.record(s, Usage(input_tokens=5), request_id="r1")
    keys = [k.decode() for k in fresh_redis.client().keys("*")]
    base = KeySpace().org_base(WEIRD_ORG)
    tagged = [k for k in keys if k != KeySpace().dirty_orgs]
    assert all(k.startswith(base + ":") for k in tagged), tagged
    kinds = {k[len(base) + 1:].split(":")[0] for k in tagged}
    # counters, rate, reservation and its expiry index, record marker, ledger, dirty, events
    assert {"c", "g", "r", "rx", "d", "l", "dirty", "ev"} <= kinds, sorted(tagged)
    assert len([k for k in tagged if k.startswith(base + ":c:")]) == 3  # org, team, user
    slots = {redis.crc.key_slot(k.encode()) for k in tagged}
    assert len(slots) == 1
    bl.release(kept.reservation)
    bl.close()


def test_registry_sources_have_headers_and_stable_shas():
    reg = Registry.default()
    for script in reg.scripts.values():
        assert "KEYS[1]" in script.source and "ARGV[1]" in script.source
        assert len(script.sha) == 40
