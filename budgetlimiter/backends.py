"""Redis connections by URL: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
``redis+cluster://`` and ``memory://`` (in-process fakeredis running the same Lua scripts).

Every connection gets bounded socket and connect timeouts.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse, urlsplit

from .errors import InvalidInput

DEFAULT_TIMEOUT = 0.05  # seconds; a decision must never hang on a dead Redis
DEFAULT_CONNECT_TIMEOUT = 0.25

_memory_servers: dict[str, Any] = {}
_memory_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Backend:
    """A resolved backend URL."""

    url: str
    kind: str  # "redis" | "cluster" | "sentinel" | "memory"

    @property
    def cluster(self) -> bool:
        return self.kind == "cluster"


def _bad_url(url: str, problem: str) -> InvalidInput:
    """The error of a backend URL that cannot be read: it names the problem and the scheme,
    never the URL itself (which may hold a password; the caller knows which URL it passed)."""
    scheme = urlsplit(url).scheme
    return InvalidInput(problem.replace("{URL}", f"the {scheme}:// URL"))


def parse_backend(url: str) -> Backend:
    """The kind of a backend URL; an unknown scheme, or seed addresses of a Sentinel or
    Cluster URL that cannot be read, raise :class:`~budgetlimiter.errors.InvalidInput` (a
    ``ValueError``) naming the problem."""
    if not isinstance(url, str):
        raise InvalidInput(f"a backend URL must be a string, got {type(url).__name__}")
    scheme = urlsplit(url).scheme
    kinds = {
        "redis": "redis", "rediss": "redis", "unix": "redis",
        "redis+sentinel": "sentinel", "rediss+sentinel": "sentinel",
        "redis+cluster": "cluster", "rediss+cluster": "cluster",
        "memory": "memory",
    }
    if scheme not in kinds:
        raise InvalidInput(
            f"unsupported backend URL scheme {scheme!r}; use redis://, rediss://, unix://, "
            "redis+sentinel://, redis+cluster:// or memory://"
        )
    kind = kinds[scheme]
    if kind in ("sentinel", "cluster"):
        _seeds(url, 26379 if kind == "sentinel" else 6379)
    return Backend(url, kind)


def _seeds(url: str, default_port: int) -> list[tuple[str, int]]:
    """The ``host:port`` list of a Sentinel or Cluster URL
    (``scheme://[user:password@]host[:port][,host[:port]...][/...]``; IPv6 in brackets)."""
    netloc = urlsplit(url).netloc
    hosts = netloc.rsplit("@", 1)[-1]
    if not hosts:
        what = "sentinel" if default_port == 26379 else "seed node"
        raise _bad_url(url, f"{{URL}} needs host:port of each {what} (several separated by "
                       "commas)")
    seeds = []
    for part in hosts.split(","):
        m = _SEED.fullmatch(part)
        if m is None:
            raise _bad_url(url, f"{part[:60]!r} in {{URL}} is not host:port")
        host = m.group("v6") or m.group("host")
        port = m.group("port")
        if port is None or port == "":
            number = default_port
        elif not port.isdigit() or not 0 < int(port) < 65536:
            raise _bad_url(url, f"the port of {part[:60]!r} in {{URL}} is not a number from 1 "
                           "to 65535")
        else:
            number = int(port)
        seeds.append((host, number))
    return seeds


#: one seed: a host name or IPv4 address, or an IPv6 address in brackets, and a port
_SEED = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s\[\]:/,@]+))(?::(?P<port>[^:]*))?")


def _memory_server(url: str) -> Any:
    try:
        import fakeredis
    except ImportError as exc:  # pragma: no cover - depends on installed extras
        raise ImportError(
            "memory:// needs the 'memory' extra: pip install 'budgetlimiter[memory]'"
        ) from exc
    name = urlparse(url).netloc or "default"
    with _memory_lock:
        server = _memory_servers.get(name)
        if server is None:
            server = _memory_servers[name] = fakeredis.FakeServer()
        return server


#: TLS options of a ``rediss+sentinel://`` URL's query, passed to redis-py as they are
_SSL_QUERY = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
              "ssl_check_hostname", "ssl_ciphers")


def _sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """Sentinel addresses, service name and the master's connection options of a
    ``redis+sentinel://[user:password@]host:port[,host:port...]/service[?db=N&ssl_...]`` URL.

    The password (and user) authenticate to the master and replicas; a Sentinel password,
    if the sentinels need one, is ``sentinel_password`` (and ``sentinel_username``) in the
    query. With ``rediss+sentinel://`` every connection, sentinels included, uses TLS with
    the ``ssl_*`` query options.
    """
    parsed = urlparse(url)
    hosts = _seeds(url, 26379)
    service = parsed.path.strip("/").split("/")[0] or "mymaster"
    kwargs: dict[str, Any] = {}
    if parsed.password:
        kwargs["password"] = unquote(parsed.password)
    if parsed.username:
        kwargs["username"] = unquote(parsed.username)
    query = parse_qs(parsed.query)
    if "db" in query:
        if not query["db"][0].isdigit():
            raise _bad_url(url, f"db in {{URL}} must be a number, got {query['db'][0][:20]!r}")
        kwargs["db"] = int(query["db"][0])
    if parsed.scheme.startswith("rediss"):
        kwargs["ssl"] = True
        for name in _SSL_QUERY:
            if name in query:
                value = query[name][0]
                kwargs[name] = (value.lower() in ("1", "true", "yes")
                                if name == "ssl_check_hostname" else value)
    for name in ("sentinel_password", "sentinel_username"):
        if name in query:
            kwargs[name] = query[name][0]
    return hosts, service, kwargs


def _sentinel_kwargs(kwargs: dict[str, Any], connect_timeout: float) -> dict[str, Any]:
    """Options of the connections to the sentinels themselves (not to the master): bounded
    connect and read timeouts (a dead sentinel must not stall master discovery), TLS like
    the master's, and the sentinels' own credentials if any. Pops those from ``kwargs``."""
    out: dict[str, Any] = {"socket_timeout": connect_timeout,
                           "socket_connect_timeout": connect_timeout}
    for name in ("ssl", *_SSL_QUERY):
        if name in kwargs:
            out[name] = kwargs[name]
    if "sentinel_password" in kwargs:
        out["password"] = kwargs.pop("sentinel_password")
    if "sentinel_username" in kwargs:
        out["username"] = kwargs.pop("sentinel_username")
    return out


def _connect(url: str, timeout: float, connect_timeout: float, *, asyncio: bool) -> Any:
    """One connection factory for both flavours; only the redis-py classes differ."""
    backend = parse_backend(url)
    opts: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout}
    if backend.kind == "memory":
        import fakeredis

        server = _memory_server(url)
        return (fakeredis.FakeAsyncRedis if asyncio else fakeredis.FakeRedis)(server=server)
    if backend.kind == "cluster":
        return _cluster(url, opts, asyncio=asyncio)
    if backend.kind == "sentinel":
        from redis.asyncio.sentinel import Sentinel as AsyncSentinel
        from redis.sentinel import Sentinel

        hosts, service, kwargs = _sentinel_parts(url)
        skw = _sentinel_kwargs(kwargs, connect_timeout)
        factory: Any = AsyncSentinel if asyncio else Sentinel
        sentinel = factory(hosts, sentinel_kwargs=skw, **opts, **kwargs)
        master = sentinel.master_for(service, **opts, **kwargs)
        return hiredis_packing(master) if asyncio else master
    import redis
    import redis.asyncio

    try:
        if asyncio:
            return hiredis_packing(redis.asyncio.Redis.from_url(url, **opts))
        return redis.Redis.from_url(url, **opts)
    except ValueError as exc:  # e.g. a port that is not a number
        raise _bad_url(url, f"{{URL}}: {str(exc)[:200]}") from None


def _cluster(url: str, opts: dict[str, Any], *, asyncio: bool) -> Any:
    """A cluster client that knows every seed of ``redis+cluster://h1:p1,h2:p2,.../``: it
    discovers the cluster from the first one that answers, so it starts while any seed (all
    but one) is down. redis-py takes one seed from the URL (and tries it last) and the others
    as ``startup_nodes``: the URL gets the last seed, so they are tried in the URL's order."""
    seeds = _seeds(url, 6379)
    parts = urlsplit(url.replace("+cluster", "", 1))
    user = parts.netloc.rpartition("@")[0]
    host, port = seeds[-1]
    last = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    one = parts._replace(netloc=f"{user}@{last}" if user else last).geturl()
    node: Any
    factory: Any
    if asyncio:
        from redis.asyncio.cluster import ClusterNode as node
        from redis.asyncio.cluster import RedisCluster as factory
    else:
        from redis.cluster import ClusterNode as node
        from redis.cluster import RedisCluster as factory
    nodes = [node(h, p) for h, p in seeds[:-1]]
    try:
        return factory.from_url(one, startup_nodes=nodes or None, **opts)
    except ValueError as exc:
        raise _bad_url(url, f"{{URL}}: {str(exc)[:200]}") from None


_FAST_CLASSES: dict[type, type] = {}


def hiredis_packing(client: Any) -> Any:
    """Make an asyncio client pack commands with hiredis, as redis-py's sync client does.

    redis-py's asyncio connections encode every argument in Python: for a 4-budget check
    (about 50 arguments) that is more CPU than the rest of the decision. The subclass only
    replaces ``pack_command``; reading, retries and errors stay redis-py's.
    """
    try:
        import hiredis
    except ImportError:  # pragma: no cover - hiredis is a dependency
        return client
    from redis.exceptions import DataError

    pool = getattr(client, "connection_pool", None)
    base = getattr(pool, "connection_class", None)
    if pool is None or base is None or not hasattr(base, "pack_command"):
        return client
    fast = _FAST_CLASSES.get(base)
    if fast is None:
        pack = hiredis.pack_command

        def pack_command(self: Any, *args: Any) -> list[bytes]:
            first = args[0]
            if isinstance(first, str):
                args = tuple(first.encode().split()) + args[1:]
            elif b" " in first:
                args = tuple(first.split()) + args[1:]
            try:
                return [pack(args)]
            except TypeError:
                pass
            args = tuple(bytes(a) if isinstance(a, (bytearray, memoryview)) else a
                         for a in args)
            try:
                return [pack(args)]
            except TypeError as exc:
                raise DataError(str(exc)) from None

        fast = type(f"Hiredis{base.__name__}", (base,), {"pack_command": pack_command})
        _FAST_CLASSES[base] = fast
    pool.connection_class = fast
    return client


def open_backend(redis: str | Any, connect: Any, timeout: float) -> tuple[Any, bool]:
    """A client's Redis connection: from a URL, or an existing redis-py client as it is.
    Also says whether it is Redis Cluster."""
    if isinstance(redis, str):
        return connect(redis, timeout=timeout), parse_backend(redis).cluster
    return redis, type(redis).__name__ == "RedisCluster"


def connect_sync(url: str, *, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> Any:
    """A sync redis-py client for ``url``."""
    return _connect(url, timeout, connect_timeout, asyncio=False)


def connect_async(url: str, *, timeout: float = DEFAULT_TIMEOUT,
                  connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> Any:
    """An asyncio redis-py client for ``url``."""
    return _connect(url, timeout, connect_timeout, asyncio=True)
