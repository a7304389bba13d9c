"""Alert delivery: Standard Webhooks signatures, payloads, retries, leases and dead letters.

The outbox here is an in-memory fake with the SQL store's semantics (leases, attempts); time
moves on a fake clock, so no test sleeps through a backoff.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from dataclasses import dataclass, replace

import pytest

from budgetlimiter.durable.alerts import (
    CallbackSink,
    Deliverer,
    DeliveryError,
    DeliveryStats,
    InvalidSignature,
    LogSink,
    WebhookSink,
    encode_payload,
    event_payload,
    generate_secret,
    headers,
    sign,
    verify,
)
from budgetlimiter.durable.store.records import AlertEvent, Delivery

from .webhook_receiver import WebhookReceiver

T0 = 1_773_144_000_000  # 2026-03-10T12:00:00Z


class Clock:
    def __init__(self, now_ms: int = T0) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


@dataclass
class Row:
    event: AlertEvent
    sink: str
    state: str = "pending"
    attempts: int = 0
    next_attempt_ms: int = 0
    lease_until_ms: int = 0
    last_error: str = ""


class FakeOutbox:
    """In-memory outbox with the SQL Store's semantics."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}
        self.claims: list[tuple[str, int]] = []
        self.fail_mark_delivered = 0  # simulate a crash after delivering, before recording

    def add(self, events: list[AlertEvent], sinks: list[str], now_ms: int) -> None:
        for e in events:
            for s in sinks:
                self.rows.setdefault((e.id, s), Row(e, s, next_attempt_ms=now_ms))

    def claim_due(self, now_ms: int, limit: int, lease_ms: int, worker: str) -> list[Delivery]:
        due = sorted((r for r in self.rows.values() if r.state == "pending"
                      and r.next_attempt_ms <= now_ms and r.lease_until_ms < now_ms),
                     key=lambda r: (r.next_attempt_ms, r.event.id, r.sink))[:limit]
        for r in due:
            r.lease_until_ms = now_ms + lease_ms
        self.claims.append((worker, len(due)))
        return [Delivery(r.event, r.sink, r.attempts, r.next_attempt_ms, r.state, r.last_error)
                for r in due]

    def mark_delivered(self, event_id: str, sink: str, now_ms: int) -> None:
        if self.fail_mark_delivered:
            self.fail_mark_delivered -= 1
            raise Killed("worker died before recording the delivery")
        r = self.rows[(event_id, sink)]
        r.state, r.attempts, r.lease_until_ms = "delivered", r.attempts + 1, 0

    def mark_retry(self, event_id: str, sink: str, attempts: int, next_attempt_ms: int,
                   error: str) -> None:
        r = self.rows[(event_id, sink)]
        if r.state == "pending":
            r.attempts, r.next_attempt_ms, r.last_error = attempts, next_attempt_ms, error
            r.lease_until_ms = 0

    def mark_dead(self, event_id: str, sink: str, attempts: int, error: str,
                  now_ms: int) -> None:
        r = self.rows[(event_id, sink)]
        if r.state == "pending":
            r.state, r.attempts, r.last_error, r.lease_until_ms = "dead", attempts, error, 0

    def states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows.values():
            out[r.state] = out.get(r.state, 0) + 1
        return out


class Killed(BaseException):
    """A worker process dying (not an Exception: nothing catches it)."""


def event(threshold: int = 50, i: int = 0, metric: str = "cost", **kw: object) -> AlertEvent:
    fields: dict[str, object] = dict(
        org="acme", scope=f"org:acme/team:t{i}", metric=metric, period="month",
        period_id="2026-03", threshold=threshold, used=12_500_000 * threshold // 100,
        limit=12_500_000, occurred_ms=T0 + i)
    fields.update(kw)
    return AlertEvent(**fields)  # type: ignore[arg-type]


SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY_PART = SECRET.removeprefix("whsec_")


@pytest.fixture
def receiver():
    with WebhookReceiver(SECRET) as rx:
        yield rx


# ---------------------------------------------------------------------------- signing


def test_standard_webhooks_vector():
    # The reference test vector of the Standard Webhooks libraries.
    body = b'{"test": 2432232314}'
    sig = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_sign_verify_round_trip_and_rejections():
    secret = generate_secret()
    assert secret.startswith("whsec_") and generate_secret() != secret
    body = encode_payload(event())
    h = headers(secret, "evt_1", 1_000_000, body)
    assert set(h) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    verify(secret, h, body, now=1_000_100)
    verify(secret, {k.upper(): v for k, v in h.items()}, body, now=1_000_000)  # any case
    # several signatures (key rotation): one valid entry is enough
    rotated = {**h, "webhook-signature": "v1,AAAA v2,xyz " + h["webhook-signature"]}
    verify(secret, rotated, body, now=1_000_000)
    # raw (non-whsec) secrets are used as UTF-8 bytes
    raw = headers("plain secret ü", "evt_1", 1_000_000, body)
    verify("plain secret ü", raw, body, now=1_000_000)
    with pytest.raises(InvalidSignature):
        verify(secret, raw, body, now=1_000_000)

    def bad(hdrs: dict[str, str], data: bytes = body, now: float = 1_000_000) -> str:
        with pytest.raises(InvalidSignature) as info:
            verify(secret, hdrs, data, now=now)
        return str(info.value)

    bad(h, body + b" ")                                    # tampered body
    bad({**h, "webhook-id": "evt_2"})                      # tampered id
    bad({**h, "webhook-timestamp": "1000001"}, now=1_000_001)  # tampered timestamp
    bad({**h, "webhook-signature": "v1," + "A" * 44})      # wrong signature
    bad({**h, "webhook-signature": "v2," + h["webhook-signature"][3:]})  # unknown version
    assert "tolerance" in bad(h, now=1_000_301)            # too old
    assert "tolerance" in bad(h, now=999_699)              # too far in the future
    assert "integer" in bad({**h, "webhook-timestamp": "soon"})
    assert "missing" in bad({k: v for k, v in h.items() if k != "webhook-signature"})
    with pytest.raises(InvalidSignature):
        verify(generate_secret(), h, body, now=1_000_000)  # another secret
    with pytest.raises(ValueError):
        sign("whsec_not base64!", "evt", 1, b"")
    with pytest.raises(ValueError):
        sign("", "evt", 1, b"")


# ---------------------------------------------------------------------------- payloads


def test_payload_shape():
    e = event(90, used=11_250_001, limit=12_500_000, occurred_ms=1_773_144_000_123)
    p = event_payload(e)
    assert p == {
        "type": "budget.threshold_crossed",
        "timestamp": "2026-03-10T12:00:00.123Z",
        "data": {"id": e.id, "org": "acme", "scope": "org:acme/team:t0", "metric": "cost",
                 "period": "month", "period_id": "2026-03", "threshold": 90,
                 "used": "11.250001", "limit": "12.500000"},
    }
    assert event_payload(event(50, used=0))["data"]["used"] == "0.000000"
    tokens = event_payload(event(75, metric="total_tokens", used=750, limit=1000))["data"]
    assert (tokens["used"], tokens["limit"]) == (750, 1000)
    body = encode_payload(e)
    assert json.loads(body) == p
    assert b" " not in body and body.index(b'"data"') < body.index(b'"timestamp"')
    assert e.id == event(90, used=1, occurred_ms=5).id  # stable per crossing


# ---------------------------------------------------------------------------- delivery


def make(outbox: FakeOutbox, sinks: dict[str, object], clock: Clock, **kw: object) -> Deliverer:
    return Deliverer(outbox, sinks, clock=clock, rng=random.Random(7), **kw)  # type: ignore[arg-type]


def test_fault_500_then_down_then_back(receiver: WebhookReceiver):
    clock, outbox = Clock(), FakeOutbox()
    events = [event(t, i) for i in range(4) for t in (50, 100)]
    outbox.add(events, ["hook"], clock())
    sink = WebhookSink("hook", receiver.url, SECRET, timeout=2.0)
    d = make(outbox, {"hook": sink}, clock, base_delay_s=2.0, max_delay_s=60.0)

    receiver.mode = "fail500"
    assert d.run_once() == DeliveryStats(retried=8)
    assert receiver.raw_count() == 8 and receiver.received_ids() == set()
    assert {r.last_error for r in outbox.rows.values()} == {"HTTP 500"}
    assert all(2000 * 0.5 <= r.next_attempt_ms - clock() <= 2000 for r in outbox.rows.values())
    assert d.run_once() == DeliveryStats()  # nothing due before the backoff ends

    receiver.mode = "down"
    delays = []
    for attempt in (2, 3, 4):
        clock.advance(60)
        assert d.run_once() == DeliveryStats(retried=8)
        cap = min(60_000, 2000 * 2 ** (attempt - 1))
        for r in outbox.rows.values():
            assert r.attempts == attempt and r.last_error.startswith("network error")
            assert cap // 2 <= r.next_attempt_ms - clock() <= cap
            delays.append(r.next_attempt_ms - clock())
    assert receiver.raw_count() == 8
    assert max(delays[-8:]) > max(delays[:8])  # the backoff grows

    receiver.mode = "ok"  # back on the same port
    clock.advance(60)
    outbox.fail_mark_delivered = 1  # first success is not recorded: it is redelivered later
    with pytest.raises(Killed):
        d.run_once()
    clock.advance(61)  # the dead worker's leases expire
    assert d.run_once() == DeliveryStats(delivered=8)
    assert outbox.states() == {"delivered": 8}
    assert all(r.attempts == 5 for r in outbox.rows.values())
    assert receiver.received_ids() == {e.id for e in events}
    accepted = receiver.accepted()
    assert len(accepted) == 9  # one duplicate, deduped by id
    assert all(r.valid for r in receiver.requests)
    for r in accepted:
        assert r.headers["content-type"] == "application/json"
        payload = json.loads(r.body)
        assert payload["data"]["id"] == r.id and payload["type"] == "budget.threshold_crossed"


def test_killed_worker_loses_nothing(receiver: WebhookReceiver):
    clock, outbox = Clock(), FakeOutbox()
    events = [event(t, i) for i in range(5) for t in (50, 75, 90)]
    outbox.add(events, ["hook", "billing"], clock())
    seen: list[str] = []
    calls = {"n": 0}

    def dies_on_third(e: AlertEvent) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed
        seen.append(e.id)

    sink = WebhookSink("hook", receiver.url, SECRET)
    first = make(outbox, {"hook": sink, "billing": CallbackSink("billing", dies_on_third)},
                 clock, lease_s=30, worker="w1")
    with pytest.raises(Killed):
        first.run_once()
    leased = [r for r in outbox.rows.values() if r.state == "pending"]
    assert leased and all(r.lease_until_ms == clock() + 30_000 for r in leased)
    billing = CallbackSink("billing", lambda e: seen.append(e.id))
    second = make(outbox, {"hook": sink, "billing": billing}, clock, lease_s=30, worker="w2")
    assert second.run_once() == DeliveryStats()  # still leased by the dead worker
    clock.advance(31)
    stats = second.run_once()
    assert stats.delivered == len(leased) and outbox.states() == {"delivered": 30}
    assert receiver.received_ids() == {e.id for e in events}
    assert set(seen) == {e.id for e in events} and len(seen) == 15
    assert outbox.claims[-1] == ("w2", len(leased))


def test_dead_letter_after_max_attempts():
    clock, outbox = Clock(), FakeOutbox()
    outbox.add([event(100)], ["billing"], clock())
    attempts_seen: list[int] = []

    class Flaky:
        name = "billing"

        def deliver(self, e: AlertEvent, attempt: int) -> None:
            attempts_seen.append(attempt)
            raise RuntimeError("billing\nsystem down")

    d = make(outbox, {"billing": Flaky()}, clock, max_attempts=4, base_delay_s=1, max_delay_s=4)
    results = []
    for _ in range(6):
        results.append(d.run_once())
        clock.advance(4)
    assert results[:4] == [DeliveryStats(retried=1)] * 3 + [DeliveryStats(dead=1)]
    assert results[4:] == [DeliveryStats()] * 2
    assert attempts_seen == [1, 2, 3, 4]
    (row,) = outbox.rows.values()
    assert (row.state, row.attempts) == ("dead", 4)
    assert row.last_error == "RuntimeError: billing system down"


def test_callback_sink_and_unknown_sink():
    clock, outbox = Clock(), FakeOutbox()
    e1, e2 = event(50), event(75)
    outbox.add([e1, e2], ["billing", "gone"], clock())
    got: list[AlertEvent] = []
    d = make(outbox, {"billing": CallbackSink("billing", got.append)}, clock, max_delay_s=30)
    assert d.run_once() == DeliveryStats(delivered=2, unknown_sink=2)
    assert got == [e1, e2]
    gone = [r for r in outbox.rows.values() if r.sink == "gone"]
    assert all(r.state == "pending" and r.attempts == 0 for r in gone)
    assert all(r.next_attempt_ms == clock() + 30_000 and "not configured" in r.last_error
               for r in gone)
    clock.advance(30)
    d.sinks["gone"] = CallbackSink("gone", got.append)  # configured again: resumes
    assert d.run_once() == DeliveryStats(delivered=2)
    assert outbox.states() == {"delivered": 4}


def test_backoff_bounds_and_lease_cutoff():
    clock, outbox = Clock(), FakeOutbox()
    d = make(outbox, {}, clock, base_delay_s=1.0, max_delay_s=600.0)
    for attempts in range(1, 80):
        cap = min(600_000, 1000 * 2 ** (attempts - 1))
        assert cap // 2 <= d.backoff_ms(attempts) <= cap
    # a batch whose lease runs out mid-way leaves the rest for the next claim
    outbox.add([event(t) for t in (50, 75, 90)], ["slow"], clock())

    class Slow:
        name = "slow"

        def deliver(self, e: AlertEvent, attempt: int) -> None:
            clock.advance(6)

    d = make(outbox, {"slow": Slow()}, clock, lease_s=10)
    assert d.run_once() == DeliveryStats(delivered=2)
    assert d.run_once() == DeliveryStats(delivered=1)


def test_run_forever_stops():
    clock, outbox = Clock(), FakeOutbox()
    outbox.add([event(t) for t in (50, 75, 90, 100)], ["cb"], clock())
    got: list[AlertEvent] = []
    d = make(outbox, {"cb": CallbackSink("cb", got.append)}, clock, batch=3)
    stop = threading.Event()
    t = threading.Thread(target=d.run_forever, args=(stop, 0.01))
    t.start()
    try:
        for _ in range(500):
            if len(got) == 4:
                break
            stop.wait(0.01)
    finally:
        stop.set()
        t.join(5)
    assert not t.is_alive() and len(got) == 4


def test_log_sink_one_line(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="budgetlimiter.alerts")
    sink = LogSink()
    sink.deliver(event(75, scope="org:acme/user:evil\nFAKE LINE"), 1)
    sink.deliver(event(100), 1)
    recs = [r for r in caplog.records if r.name == "budgetlimiter.alerts"]
    assert [r.levelno for r in recs] == [logging.INFO, logging.WARNING]
    assert all("\n" not in r.getMessage() for r in recs)
    assert recs[0].getMessage().startswith("budget.threshold_crossed {")
    assert '"used":"9.375000"' in recs[0].getMessage()


def test_secret_never_leaks(caplog: pytest.LogCaptureFixture, receiver: WebhookReceiver):
    caplog.set_level(logging.DEBUG)
    clock, outbox = Clock(), FakeOutbox()
    outbox.add([event(50), event(100)], ["hook", "log"], clock())
    url = receiver.url + "?token=" + KEY_PART
    sink = WebhookSink("hook", url, SECRET, headers={"X-Team": "eng"})
    d = make(outbox, {"hook": sink, "log": LogSink()}, clock, max_attempts=3)
    receiver.mode = "fail500"
    d.run_once()
    receiver.mode = "down"
    for _ in range(3):
        clock.advance(10)
        d.run_once()
    assert outbox.states() == {"dead": 2, "delivered": 2}
    with pytest.raises(DeliveryError) as info:
        sink.deliver(event(90), 1)
    texts = [caplog.text, repr(sink), str(info.value), repr(info.value), repr(d.sinks),
             *(r.last_error for r in outbox.rows.values())]
    assert all(KEY_PART not in t and SECRET not in t for t in texts)
    assert "***" in repr(sink) and "token" not in repr(sink)
    assert all(r.headers.get("x-team") == "eng" for r in receiver.requests)
    with pytest.raises(ValueError) as bad:
        WebhookSink("hook", "ftp://x/" + KEY_PART + "?s=" + KEY_PART, SECRET)
    assert "?s=" not in str(bad.value)


def test_delivery_to_unreachable_url_is_a_delivery_error():
    sink = WebhookSink("hook", "http://127.0.0.1:9/", "s3cret", timeout=0.5)
    with pytest.raises(DeliveryError, match="network error"):
        sink.deliver(event(), 1)
    hdrs, body = sink.request(event())
    verify("s3cret", hdrs, body)
    assert replace(event(), used=1).id == event().id
