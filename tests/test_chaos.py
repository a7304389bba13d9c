"""Chaos: client threads make check → commit decisions against a 3-level hierarchy with hard
budgets while a chaos thread SIGKILLs and restarts Redis (no persistence), stops and starts
the reconciler, and takes the webhook receiver down and up. At the end everything is brought
back and the books are checked:

(a) the usage recorded in SQL equals the sum of the committed actuals (the chaos thread
    flushes synchronously right before every kill, so the documented loss window is empty;
    commits answered "local" during an outage are replayed later and must count once);
(b) no admission overshot a hard limit: per Redis incarnation and budget, the admitted
    charges never exceed the limit, and every allowed decision saw used + reserved <= limit;
(c) every alert event recorded in SQL was delivered, and the receiver's distinct event ids
    are exactly the SQL event ids;
(d) the threshold crossings in SQL are bounded by what the clients saw: every crossing a
    commit reported is there, and none that the clients' committed totals do not reach.

``BUDGETLIMITER_CHAOS_SECONDS`` (default 20) sets how long the chaos lasts. The schedule (the
clients' subjects, amounts and pauses, the chaos actions) comes from one seed, printed at the
start and shown with a failure; ``BUDGETLIMITER_CHAOS_SEED=<seed>`` replays it (thread timing
still varies).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from budgetlimiter import BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.durable.alerts import Deliverer, WebhookSink, generate_secret
from budgetlimiter.durable.reconciler import Reconciler
from budgetlimiter.durable.store.sql import Store
from budgetlimiter.engine.outage import UNAVAILABLE
from budgetlimiter.results import Reservation
from budgetlimiter.usage import Metric

from .servers import RedisServer
from .webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SECONDS = float(os.environ.get("BUDGETLIMITER_CHAOS_SECONDS", "20"))
SEED = int(os.environ.get("BUDGETLIMITER_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
CLIENTS = 4
ORG = "acme"
#: limits scale with the duration so that they are reached about halfway through
TOKENS_PER_SECOND = 12_000
ORG_TOKENS = int(TOKENS_PER_SECOND * SECONDS)
TEAM_TOKENS = {"a": ORG_TOKENS * 2 // 5, "b": ORG_TOKENS * 7 // 10}
USER_TOKENS = ORG_TOKENS // 4
ORG_COST_USD = f"{ORG_TOKENS * 1.3 / 1e6:.6f}"

POLICY = f"""
timezone: UTC
reservation_ttl_seconds: 600
pricing: {{gpt: {{input_per_million: "1", output_per_million: "2"}}}}
orgs:
  {ORG}:
    limits:
      - {{metric: total_tokens, amount: {ORG_TOKENS}, period: day}}
      - {{metric: cost, amount: "{ORG_COST_USD}", period: day, thresholds: [25, 50, 75, 90, 100]}}
    teams:
      a: {{limits: [{{metric: total_tokens, amount: {TEAM_TOKENS["a"]}, period: day}}]}}
      b: {{limits: [{{metric: total_tokens, amount: {TEAM_TOKENS["b"]}, period: day}}]}}
    defaults:
      user:
        limits:
          - {{metric: total_tokens, amount: {USER_TOKENS}, period: day,
              thresholds: [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]}}
"""
SUBJECTS = [Subject(ORG, "gpt", team=t, user=u) for t in ("a", "b") for u in ("u1", "u2", "u3")]


def hard_budgets(s: Subject) -> list[tuple[str, Metric, int]]:
    """(scope, metric, limit in units) of every hard budget a subject's decision touches."""
    return [
        (f"org:{ORG}", Metric.TOTAL_TOKENS, ORG_TOKENS),
        (f"org:{ORG}", Metric.COST, int(float(ORG_COST_USD) * 1e6 + 0.5)),
        (f"org:{ORG}/team:{s.team}", Metric.TOTAL_TOKENS, TEAM_TOKENS[str(s.team)]),
        (f"org:{ORG}/team:{s.team}/user:{s.user}", Metric.TOTAL_TOKENS, USER_TOKENS),
    ]


class Gate:
    """Client calls share it; the chaos thread takes it exclusively around flush + SIGKILL so
    that no commit lands between the last flush and the kill (the documented loss window)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._closed:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._closed = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._closed = False
                self._cond.notify_all()


@dataclass
class Call:
    """One decision as the client saw it."""

    subject: Subject
    incarnation: int
    allowed: bool
    degraded: bool
    cached: bool
    reason: str
    reservation: Reservation | None = None
    commit_status: str = ""
    commit_incarnation: int = -1
    actual: dict[Metric, int] = field(default_factory=dict)
    #: crossings the commit reported: (scope, metric, period id, threshold)
    crossings: set[tuple[str, str, str, int]] = field(default_factory=set)


def crossing_key(t: Any) -> tuple[str, str, str, int]:
    return str(t.scope), Metric(t.metric).value, t.period_id, int(t.threshold)


def reachable_crossings(policy: Any, admitted: list[Call],
                        day: str) -> set[tuple[str, str, str, int]]:
    """The crossings that the committed actuals reach, summed on the client side per scope
    (every commit of the run counted in ``day``): used * 100 >= threshold * limit, for every
    limit of the policy (thresholds default to 50, 75, 90, 100)."""
    totals: dict[tuple[str, Metric], int] = defaultdict(int)
    specs: dict[tuple[str, Metric], Any] = {}
    for c in admitted:
        for scoped in policy.resolve(c.subject).scopes:
            for spec in scoped.limits:
                key = (str(scoped.scope), spec.metric)
                specs[key] = spec
                totals[key] += c.actual[spec.metric]
    return {(scope, metric.value, day, th)
            for (scope, metric), spec in specs.items() for th in spec.thresholds
            if totals[(scope, metric)] * 100 >= th * spec.units}


class CountingSink:
    """Counts delivery attempts and failures of the sink it wraps."""

    def __init__(self, inner: WebhookSink, counts: Counter[str]) -> None:
        self.inner, self.counts, self.name = inner, counts, inner.name

    def deliver(self, event: Any, attempt: int) -> None:
        self.counts["delivery attempts"] += 1
        try:
            self.inner.deliver(event, attempt)
        except Exception:
            self.counts["failed deliveries"] += 1
            raise


class Chaos:
    def __init__(self, tmp_path: Any) -> None:
        self.policy = parse_policy(POLICY)
        self.redis = RedisServer().start()
        self.incarnation = 1
        self.gate = Gate()
        self.db = f"sqlite:///{tmp_path / 'store.db'}"
        Store(self.db).migrate()
        self.secret = generate_secret()
        self.receiver = WebhookReceiver(self.secret, mode="ok")
        self.stop_all = threading.Event()
        self.counts: Counter[str] = Counter()
        self.calls: list[list[Call]] = [[] for _ in range(CLIENTS)]
        self.errors: list[str] = []
        self.limiters = [BudgetLimiter(self.policy, self.redis.url, timeout=0.2)
                         for _ in range(CLIENTS)]
        # background reconciler (stopped and started by chaos) and deliverer
        self.rec_store = Store(self.db)
        self.rec_bl = BudgetLimiter(self.policy, self.redis.url, timeout=1.0)
        self.rec_stop: threading.Event | None = None
        self.rec_thread: threading.Thread | None = None
        self.sync_store = Store(self.db)
        self.sync_bl = BudgetLimiter(self.policy, self.redis.url, timeout=2.0)
        self.sync_rec = Reconciler(self.sync_bl, self.sync_store, sinks=["webhook"])
        self.dl_store = Store(self.db)
        self.deliverer = Deliverer(
            self.dl_store, {"webhook": CountingSink(
                WebhookSink("webhook", self.receiver.url, self.secret, timeout=1.0),
                self.counts)},
            base_delay_s=0.05, max_delay_s=0.5, max_attempts=10_000, lease_s=10)
        self.dl_stop = threading.Event()
        self.dl_thread = threading.Thread(target=self.deliverer.run_forever,
                                          args=(self.dl_stop, 0.1), daemon=True)

    # ---------------------------------------------------------------- background parts
    def start_reconciler(self) -> None:
        assert self.rec_thread is None
        self.rec_stop = threading.Event()
        rec = Reconciler(self.rec_bl, self.rec_store, sinks=["webhook"])
        self.rec_thread = threading.Thread(target=rec.run_forever, args=(self.rec_stop, 0.2),
                                           daemon=True)
        self.rec_thread.start()
        self.counts["reconciler starts"] += 1

    def stop_reconciler(self) -> None:
        assert self.rec_thread is not None and self.rec_stop is not None
        self.rec_stop.set()
        self.rec_thread.join(15)
        assert not self.rec_thread.is_alive(), "reconciler did not stop"
        self.rec_thread = None
        self.counts["reconciler stops"] += 1

    def flush_now(self) -> None:
        """Synchronous reconcile passes until Redis holds no unflushed usage."""
        ks = self.sync_bl.keys
        r = self.sync_bl.redis
        for _ in range(20):
            self.sync_rec.run_once()
            if not r.scard(ks.dirty(ORG)) and r.get(ks.pending_flush(ORG)) is None \
                    and not r.xlen(ks.events(ORG)):
                return
        raise AssertionError("could not flush before the kill")

    # ---------------------------------------------------------------- clients
    def client(self, i: int) -> None:
        bl = self.limiters[i]
        rng = random.Random(SEED + 1 + i)
        calls = self.calls[i]
        while not self.stop_all.is_set():
            s = rng.choice(SUBJECTS)
            inp, out = rng.randint(100, 1500), rng.randint(0, 500)
            try:
                with self.gate.shared():
                    inc = self.incarnation
                    d = bl.check(s, Usage(input_tokens=inp, output_tokens=out))
                c = Call(s, inc, d.allowed, d.degraded, d.cached, d.reason, d.reservation)
                calls.append(c)
                if d.allowed:
                    assert d.reservation is not None
                    for x in d.limits:  # what the script saw, after reserving
                        if x.kind == "budget" and x.mode == "hard":
                            assert x.taken <= x.limit, (x, inc)
                    time.sleep(rng.uniform(0, 0.05))  # "the agent call"
                    actual = Usage(input_tokens=rng.randint(0, inp),
                                   output_tokens=rng.randint(0, out))
                    with self.gate.shared():
                        c.commit_incarnation = self.incarnation
                        r = bl.commit(d.reservation, actual)
                    assert r.actual is not None and r.status in ("committed", "late", "local"), r
                    c.commit_status = r.status
                    c.actual = {m: r.actual.get(m) for m in Metric}
                    c.crossings = {crossing_key(t) for t in r.thresholds}
            except Exception as exc:  # any error is a finding; keep the load going
                self.errors.append(f"client {i}: {type(exc).__name__}: {exc}")
                time.sleep(0.05)
            time.sleep(rng.uniform(0.005, 0.02))

    # ---------------------------------------------------------------- chaos
    def chaos(self, seconds: float) -> None:
        """Random actions every 0.2-0.6 s: SIGKILL Redis (after a synchronous flush; at
        least 1.5 s after it came back) and restart it 0.1-0.5 s later, stop/start the
        reconciler, take the webhook receiver down/up."""
        rng = random.Random(SEED)
        deadline = time.monotonic() + seconds
        up_since: float | None = time.monotonic()
        down_until = 0.0
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.2, 0.6))
            now = time.monotonic()
            if up_since is None:
                if now >= down_until:
                    self.redis.start()
                    self.counts["redis restarts"] += 1
                    up_since = time.monotonic()
                continue
            action = rng.choice(["redis", "reconciler", "receiver"])
            if action == "redis" and now - up_since >= 1.5:
                with self.gate.exclusive():
                    self.flush_now()
                    self.redis.kill()  # SIGKILL, no persistence: every key is gone
                    self.incarnation += 1
                self.counts["redis kills"] += 1
                up_since = None
                down_until = time.monotonic() + rng.uniform(0.1, 0.5)
            elif action == "reconciler":
                if self.rec_thread is None:
                    self.start_reconciler()
                else:
                    self.stop_reconciler()
            elif action == "receiver":
                if self.receiver.mode == "ok":
                    self.receiver.mode = "down"
                    self.counts["receiver downs"] += 1
                else:
                    self.receiver.mode = "ok"
                    self.counts["receiver ups"] += 1
        if up_since is None:
            self.redis.start()
            self.counts["redis restarts"] += 1

    def close(self) -> None:
        self.stop_all.set()
        if self.rec_stop is not None:
            self.rec_stop.set()
        self.dl_stop.set()
        for bl in [*self.limiters, self.rec_bl, self.sync_bl]:
            bl.close()
        for st in (self.rec_store, self.sync_store, self.dl_store):
            st.close()
        self.receiver.stop()
        self.redis.stop()


def utc_day() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def test_chaos(tmp_path, caplog):
    caplog.set_level(logging.ERROR)  # the outage warnings are expected and many
    # captured output is shown with a failure: the seed to replay the schedule with
    print(f"chaos seed {SEED} (replay: BUDGETLIMITER_CHAOS_SEED={SEED})")
    first_day = utc_day()
    ch = Chaos(tmp_path)
    started = time.monotonic()
    try:
        ch.start_reconciler()
        ch.dl_thread.start()
        clients = [threading.Thread(target=ch.client, args=(i,), daemon=True)
                   for i in range(CLIENTS)]
        for t in clients:
            t.start()
        ch.chaos(SECONDS)
        # ---------------------------------------------------------- bring everything back
        ch.stop_all.set()
        for t in clients:
            t.join(10)
            assert not t.is_alive()
        if ch.rec_thread is not None:
            ch.stop_reconciler()
        ch.receiver.mode = "ok"
        replayed = 0
        for bl in ch.limiters:  # the breaker may still be open for a few seconds
            deadline = time.monotonic() + 40
            while True:
                try:
                    replayed += bl.flush_local()
                    break
                except UNAVAILABLE:
                    assert time.monotonic() < deadline, "local commits could not be replayed"
                    time.sleep(0.05)
            assert not bl.queued
        ch.flush_now()
        assert ch.sync_rec.run_once().flushes == 0  # idle
        deadline = time.monotonic() + 20
        while ch.dl_store.deliveries("pending") and time.monotonic() < deadline:
            time.sleep(0.1)
        ch.dl_stop.set()
        ch.dl_thread.join(10)
        ch.deliverer.run_once()
        chaos_done = time.monotonic() - started
        last_day = utc_day()

        # ---------------------------------------------------------- what happened
        calls = [c for cs in ch.calls for c in cs]
        admitted = [c for c in calls if c.allowed]
        denied = [c for c in calls if not c.allowed]
        statuses = Counter(c.commit_status for c in admitted)
        reasons = Counter(c.reason for c in denied)
        events = ch.sync_store.events(limit=100_000)
        sql_event_ids = {e.id for e in events}
        deliveries = ch.sync_store.deliveries(limit=100_000)
        rows = ch.sync_store.usage_rows(ORG, "0000-00-00", "9999-99-99")
        sql_tokens = sum(r.total_tokens for r in rows)
        sql_cost = sum(r.cost for r in rows)
        client_tokens = sum(c.actual[Metric.TOTAL_TOKENS] for c in admitted)
        client_cost = sum(c.actual[Metric.COST] for c in admitted)
        n = ch.counts
        degraded = sum(c.degraded for c in denied)
        cached = sum(c.cached for c in denied)
        print(
            f"\nchaos for {SECONDS:.0f}s ({chaos_done:.1f}s with the wind-down), "
            f"{CLIENTS} clients:\n"
            f"  redis kills {n['redis kills']}, restarts {n['redis restarts']}; reconciler "
            f"stops {n['reconciler stops']}, starts {n['reconciler starts']}; receiver downs "
            f"{n['receiver downs']}, ups {n['receiver ups']}\n"
            f"  decisions {len(calls)}: admitted {len(admitted)}, denied {len(denied)} "
            f"(degraded {degraded}, deny cache {cached}); reasons {dict(reasons)}\n"
            f"  commits {dict(statuses)}; replayed from local queues at the end {replayed}\n"
            f"  client-side committed: {client_tokens} tokens, {client_cost} micro-USD; "
            f"SQL: {sql_tokens} tokens, {sql_cost} micro-USD\n"
            f"  alert events in SQL {len(sql_event_ids)}; delivery attempts "
            f"{n['delivery attempts']} (failed {n['failed deliveries']}); receiver got "
            f"{ch.receiver.raw_count()} requests, accepted {len(ch.receiver.accepted())}, "
            f"distinct ids {len(ch.receiver.received_ids())}\n"
            f"  unexpected client errors {len(ch.errors)}")
        assert not ch.errors, ch.errors[:5]
        assert ch.counts["redis kills"] >= 2, "not enough chaos: raise BUDGETLIMITER_CHAOS_SECONDS"
        assert len(admitted) > 100
        assert reasons["budget_exceeded"] > 0, "no hard budget was reached"
        assert degraded > 0  # the outages were felt

        # (a) the durable record equals what the clients committed, exactly
        assert sql_tokens == client_tokens
        assert sql_cost == client_cost

        # (b) no admission overshot a hard limit, per Redis incarnation
        charged: dict[tuple[int, str, Metric], int] = defaultdict(int)
        for c in admitted:
            assert c.reservation is not None
            same = c.commit_status in ("committed", "late") \
                and c.commit_incarnation == c.incarnation
            for scope, metric, _ in hard_budgets(c.subject):
                # committed in the same incarnation: the actual replaced the estimate there;
                # "local" is ambiguous (the commit may or may not have reached Redis): the
                # smaller actual keeps the check sound; otherwise the estimate stayed reserved
                # until the kill
                amount = c.actual[metric] if same or c.commit_status == "local" \
                    else c.reservation.estimate.get(metric)
                charged[(c.incarnation, scope, metric)] += amount
        limits = {(scope, metric): lim for s in SUBJECTS for scope, metric, lim in hard_budgets(s)}
        worst = max(charged[k] / limits[k[1:]] for k in charged)
        print(f"  highest share of a hard limit admitted within one incarnation: {worst:.1%}")
        for (inc, scope, metric), total in charged.items():
            assert total <= limits[(scope, metric)], (inc, scope, metric, total)

        # the counters are back at (at least) the durable record
        team_a = SUBJECTS[0]
        live = {str(x.scope): x.used for x in ch.sync_bl.status(team_a)
                if x.metric is Metric.TOTAL_TOKENS}
        assert live[f"org:{ORG}"] >= sql_tokens

        # (c) every recorded event was delivered; the receiver saw exactly those ids
        assert sql_event_ids, "no alert fired"
        assert {d.state for d in deliveries} == {"delivered"}, Counter(d.state for d in deliveries)
        assert {d.event.id for d in deliveries} == sql_event_ids
        assert ch.receiver.received_ids() == sql_event_ids
        assert all(r.valid for r in ch.receiver.requests)

        # (d) the crossings in SQL against two client-side counts: every crossing a commit
        # reported (commits answered "local" report none) was recorded, and nothing the
        # committed totals do not reach. The totals are an upper bound only: usage not yet
        # flushed when Redis lost its data is lost with it (the documented bound), so the
        # restored counters may stay below a threshold the clients' totals reach (crossings
        # reached between a loss and the rebuild fire at the rebuild); the print lists them.
        in_sql = {(e.scope, e.metric, e.period_id, e.threshold) for e in events}
        reported = set().union(*(c.crossings for c in admitted))
        assert reported, "no commit reported a crossing"
        assert reported <= in_sql, sorted(reported - in_sql)
        if first_day == last_day:  # (a run across midnight UTC splits the totals)
            reachable = reachable_crossings(ch.policy, admitted, first_day)
            assert in_sql <= reachable, sorted(in_sql - reachable)
            print(f"  crossings reported by commits {len(reported)}, in SQL {len(in_sql)}, "
                  f"reached by the committed totals {len(reachable)}; not fired (yet): "
                  f"{sorted(reachable - in_sql)}")
    finally:
        ch.close()
