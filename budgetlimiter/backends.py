"""Redis connections by URL: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
``redis+cluster://`` and ``memory://`` (in-process fakeredis running the same Lua scripts).

Every connection gets bounded socket and connect timeouts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

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


def parse_backend(url: str) -> Backend:
    scheme = urlparse(url).scheme
    kinds = {
        "redis": "redis", "rediss": "redis", "unix": "redis",
        "redis+sentinel": "sentinel", "rediss+sentinel": "sentinel",
        "redis+cluster": "cluster", "rediss+cluster": "cluster",
        "memory": "memory",
    }
    if scheme not in kinds:
        raise ValueError(
            f"unsupported backend URL scheme {scheme!r}; use redis://, rediss://, unix://, "
            "redis+sentinel://, redis+cluster:// or memory://"
        )
    return Backend(url, kinds[scheme])


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


def _sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    parsed = urlparse(url)
    hosts = []
    for part in parsed.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = part.partition(":")
        hosts.append((host, int(port or 26379)))
    service = parsed.path.strip("/").split("/")[0] or "mymaster"
    kwargs: dict[str, Any] = {}
    if parsed.password:
        kwargs["password"] = unquote(parsed.password)
    if parsed.username:
        kwargs["username"] = unquote(parsed.username)
    query = parse_qs(parsed.query)
    if "db" in query:
        kwargs["db"] = int(query["db"][0])
    if parsed.scheme.startswith("rediss"):
        kwargs["ssl"] = True
    return hosts, service, kwargs


def connect_sync(url: str, *, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> Any:
    """A sync redis-py client for ``url``."""
    backend = parse_backend(url)
    opts: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout}
    if backend.kind == "memory":
        import fakeredis

        return fakeredis.FakeRedis(server=_memory_server(url))
    if backend.kind == "cluster":
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url.replace("+cluster", "", 1), **opts)
    if backend.kind == "sentinel":
        from redis.sentinel import Sentinel

        hosts, service, kwargs = _sentinel_parts(url)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts, sentinel_kwargs={"socket_timeout": connect_timeout}, **opts, **kwargs)
        return sentinel.master_for(service, **opts, **kwargs)  # type: ignore[no-untyped-call]
    import redis

    return redis.Redis.from_url(url, **opts)


def connect_async(url: str, *, timeout: float = DEFAULT_TIMEOUT,
                  connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> Any:
    """An asyncio redis-py client for ``url``."""
    backend = parse_backend(url)
    opts: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout}
    if backend.kind == "memory":
        import fakeredis

        return fakeredis.FakeAsyncRedis(server=_memory_server(url))
    if backend.kind == "cluster":
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url.replace("+cluster", "", 1), **opts)
    if backend.kind == "sentinel":
        from redis.asyncio.sentinel import Sentinel

        hosts, service, kwargs = _sentinel_parts(url)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts, sentinel_kwargs={"socket_timeout": connect_timeout}, **opts, **kwargs)
        return sentinel.master_for(service, **opts, **kwargs)
    import redis.asyncio

    return redis.asyncio.Redis.from_url(url, **opts)
