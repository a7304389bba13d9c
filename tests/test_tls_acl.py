"""TLS with client certificates and a narrow ACL user: the limiter and the reconciler work with
only the commands and keys they need; a wrong password or a missing client certificate is a
clear error; the password never shows up in logs or reprs."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from budgetlimiter import AsyncBudgetLimiter, BudgetLimiter, Subject, Usage, parse_policy
from budgetlimiter.durable.reconciler import Reconciler
from budgetlimiter.durable.store.sql import Store
from budgetlimiter.errors import BackendRejected

from .clients import make_client
from .servers import RedisServer

pytestmark = pytest.mark.redis

PASSWORD = "s3cr3t-Pa55word-never-logged"
ADMIN_PASSWORD = "admin-Pa55word-also-never-logged"
#: The narrow ACL of the limiter's Redis user (documented in SECURITY.md): its key prefix
#: only, no pub/sub channels, and the commands of the hot path, the reconciler and the Lua
#: scripts (scripts run with the caller's permissions, so their commands must be allowed too).
ACL_COMMANDS = (
    "-@all +ping +evalsha +script|load "
    # reconciler: discovery, flush record, event stream
    "+get +sadd +srem +smembers +scan +xrange +xdel "
    # called inside the Lua scripts
    "+del +exists +hdel +hget +hgetall +hincrby +hmget +hset +pexpire +scard +set +spop "
    "+xadd +zadd +zrangebyscore +zrem +time"
)
ACL_RULE = f"budget on >{PASSWORD} resetkeys ~bl:* resetchannels {ACL_COMMANDS}"

POLICY = """
timezone: UTC
pricing: {gpt: {input_per_million: "1", output_per_million: "2"}}
orgs:
  acme:
    limits: [{metric: cost, amount: "1", period: day, thresholds: [50]}]
    teams:
      eng:
        limits: [{metric: total_tokens, amount: 100000, period: day}]
"""
ALICE = Subject("acme", "gpt", team="eng", user="alice")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)


def make_certs(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, signed by the CA."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=budgetlimiter test CA", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                  "extendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                 "-out", f"{name}.crt", cwd=d)
    return {n: d / n for n in ("ca.crt", "server.crt", "server.key", "client.crt",
                               "client.key")}


class TlsRedis(RedisServer):
    """redis-server with only a TLS port (plain TCP disabled); ``port`` is the TLS port."""

    def __init__(self, certs: dict[str, Path]) -> None:
        self.certs = certs
        super().__init__()  # a free port, picked again if taken before the server binds it

    def command(self) -> list[str]:
        return [
            "redis-server", "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(self.certs["server.crt"]),
            "--tls-key-file", str(self.certs["server.key"]),
            "--tls-ca-cert-file", str(self.certs["ca.crt"]),
            "--tls-auth-clients", "yes",
            "--save", "", "--appendonly", "no", "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"),
            # each rule word is its own argument (one quoted argument is one username)
            "--user", "default", "off",  # no anonymous access
            "--user", *f"admin on >{ADMIN_PASSWORD} ~* &* +@all".split(),
            "--user", *ACL_RULE.split(),
        ]

    def probe_client(self) -> redis.Redis:
        return self.admin()

    def admin(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, username="admin", password=ADMIN_PASSWORD, ssl=True,
            ssl_ca_certs=str(self.certs["ca.crt"]), ssl_certfile=str(self.certs["client.crt"]),
            ssl_keyfile=str(self.certs["client.key"]), ssl_cert_reqs="required",
            socket_timeout=2)

    def url(self, *, user: str = "budget", password: str = PASSWORD,  # type: ignore[override]
            client_cert: bool = True) -> str:
        q = f"ssl_ca_certs={quote(str(self.certs['ca.crt']))}&ssl_cert_reqs=required"
        if client_cert:
            q += (f"&ssl_certfile={quote(str(self.certs['client.crt']))}"
                  f"&ssl_keyfile={quote(str(self.certs['client.key']))}")
        return f"rediss://{user}:{quote(password, safe='')}@127.0.0.1:{self.port}/0?{q}"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    server = TlsRedis(make_certs(d)).start()
    yield server
    server.stop()


def _no_secret_in(text: str) -> None:
    assert PASSWORD not in text
    assert quote(PASSWORD, safe="") not in text


def test_tls_client_cert_and_narrow_acl_user(tls_redis, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    tls_redis.admin().flushall()
    bl = BudgetLimiter(parse_policy(POLICY), tls_redis.url(), timeout=2)
    d = bl.check(ALICE, Usage(input_tokens=1000, output_tokens=100))
    assert d.allowed, d
    assert d.reservation is not None
    r = bl.commit(d.reservation, Usage(input_tokens=900, output_tokens=100))
    assert r.status == "committed"
    d2 = bl.check(ALICE, Usage(input_tokens=10))
    assert d2.allowed and d2.reservation is not None
    assert bl.release(d2.reservation).status == "released"
    assert bl.record(ALICE, Usage(input_tokens=600_000), request_id="big").status == "recorded"
    team = next(x for x in bl.status(ALICE) if str(x.scope) == "org:acme/team:eng")
    assert team.used == 1000 + 600_000
    assert bl.check_batch([(ALICE, Usage(input_tokens=1))])[0].limits[0].taken > 0
    # the reconciler runs with the same narrow user: flush, events, SCAN, restore
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.migrate()
    rec = Reconciler(bl, store)
    stats = rec.run_once()
    assert stats.flushes == 1 and stats.events == 5  # cost 50 %, team tokens 50..100 %
    # data loss, scripts gone too: restore and NOSCRIPT reload need only the same commands
    tls_redis.admin().flushall()
    tls_redis.admin().script_flush()
    assert rec.run_once().restored == ["acme"]
    assert next(x for x in bl.status(ALICE) if str(x.scope) == "org:acme/team:eng").used \
        == 601_000
    store.close()
    # the narrow user cannot touch other keys or run admin commands
    with pytest.raises(redis.exceptions.NoPermissionError):
        bl.redis.set("other:key", "x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        bl.redis.flushall()
    with pytest.raises(redis.exceptions.NoPermissionError):
        bl.redis.config_get("*")
    with pytest.raises(redis.exceptions.NoPermissionError):
        bl.redis.eval("return 1", 0)
    # no secret in reprs or logs
    for obj in (bl, d, r, bl.redis, bl.redis.connection_pool, rec, team):
        _no_secret_in(repr(obj))
    _no_secret_in(str(d))
    for rec_ in caplog.records:
        _no_secret_in(rec_.getMessage())
        _no_secret_in(str(rec_.args))
    bl.close()


def test_wrong_password_is_a_clear_error(tls_redis, caplog, client_kind):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-Pa55word-should-not-leak"
    bl = make_client(client_kind, parse_policy(POLICY), tls_redis.url(password=wrong),
                     timeout=2)
    with pytest.raises(BackendRejected, match="invalid username-password pair") as info:
        bl.status(ALICE)
    # a misconfiguration is raised by check() too, whatever the outage policy
    with pytest.raises(BackendRejected):
        bl.check(ALICE, Usage(input_tokens=1))
    messages = [r.getMessage() for r in caplog.records] + [str(info.value)]
    for m in messages:
        assert wrong not in m and PASSWORD not in m
    assert wrong not in repr(bl) and wrong not in repr(bl.redis)
    bl.close()


def test_missing_client_certificate_is_refused(tls_redis):
    bl = BudgetLimiter(parse_policy(POLICY), tls_redis.url(client_cert=False), timeout=2)
    with pytest.raises(redis.exceptions.ConnectionError) as info:
        bl.status(ALICE)
    text = str(info.value)
    print(f"\nwithout a client certificate: {type(info.value).__name__}: {text}")
    assert text  # an SSL / connection error naming the server, not a hang
    assert PASSWORD not in text
    d = bl.check(ALICE, Usage(input_tokens=1))
    assert not d.allowed and d.degraded
    bl.close()


def test_plain_tcp_and_untrusted_server_are_refused(tls_redis, tmp_path):
    # rediss:// to a server whose certificate is not signed by the given CA
    other = tmp_path / "other"
    other.mkdir()
    other_certs = make_certs(other)
    url = tls_redis.url().replace(quote(str(tls_redis.certs["ca.crt"])),
                                  quote(str(other_certs["ca.crt"])))
    bl = BudgetLimiter(parse_policy(POLICY), url, timeout=2)
    with pytest.raises(redis.exceptions.ConnectionError, match=r"(?i)certificate"):
        bl.status(ALICE)
    bl.close()
    # plain redis:// to the TLS port: the server never answers a plaintext RESP command
    bl = BudgetLimiter(parse_policy(POLICY),
                       f"redis://budget:{PASSWORD}@127.0.0.1:{tls_redis.port}/0", timeout=0.5)
    with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        bl.status(ALICE)
    bl.close()


def test_a_wrong_password_is_not_an_outage_under_fail_open(tls_redis, client_kind):
    policy = parse_policy(POLICY.replace("timezone: UTC", "timezone: UTC\noutage: fail_open"))
    bl = make_client(client_kind, policy, tls_redis.url(password="wrong-Pa55word"), timeout=2)
    try:
        # a misconfiguration must not switch enforcement off: it is raised, not admitted
        with pytest.raises(BackendRejected, match="rejected"):
            bl.check(ALICE, Usage(input_tokens=10**9))  # far above every limit
        assert bl.breaker.state == "closed"
    finally:
        bl.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_asyncio_client_drives_its_own_connection_over_tls_with_the_acl_user(tls_redis, loop):
    """The asyncio client's coalescer takes over a connection redis-py set up (TLS, client
    certificate, ACL user): decisions and settlements go over it, on asyncio's loop and on
    uvloop's (the sidecar's), whose TLS transports differ."""
    tls_redis.admin().flushall()

    async def main() -> None:
        bl = AsyncBudgetLimiter(parse_policy(POLICY), tls_redis.url(), timeout=2)
        decisions = await asyncio.gather(*(bl.check(ALICE, Usage(input_tokens=10))
                                           for _ in range(20)))
        assert all(d.allowed for d in decisions)
        assert bl.coalescer is not None and bl.coalescer._wire is not None
        for d in decisions:
            assert d.reservation is not None
            assert (await bl.commit(d.reservation, Usage(input_tokens=5))).status == "committed"
        team = next(x for x in await bl.status(ALICE) if str(x.scope) == "org:acme/team:eng")
        assert team.used == 100
        await bl.aclose()

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
