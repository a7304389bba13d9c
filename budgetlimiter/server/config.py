"""Sidecar settings: listen address, backends, bearer tokens and limits.

Tokens are ``name:secret:scope`` triples (``scope`` is ``read``, ``write`` or ``admin``),
optionally restricted to one org with a fourth part, ``name:secret:scope:org=acme``. A server
bound to anything but a loopback address refuses to start without at least one token.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field
from typing import Literal

from ..engine.leases import LeaseConfig
from .params import scope_error

TokenScope = Literal["read", "write", "admin"]
_SCOPES: tuple[TokenScope, ...] = ("read", "write", "admin")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
DEFAULT_MAX_BODY = 64 * 1024
DEFAULT_REDIS_TIMEOUT = 0.25


class ConfigError(ValueError):
    """The sidecar configuration is unusable (the server does not start)."""


@dataclass(frozen=True)
class Token:
    """One bearer token. ``secret`` is never logged or shown in ``repr``."""

    name: str
    secret: str = field(repr=False)
    scope: TokenScope
    #: the one org this token may read or change (None: every org)
    org: str | None = None

    @classmethod
    def parse(cls, text: str) -> Token:
        """Parse ``name:secret:scope[:org=ORG]`` (the secret may itself contain colons)."""
        name, sep, rest = text.strip().partition(":")
        org: str | None = None
        head, sep_org, last = rest.rpartition(":")
        if sep_org and last.startswith("org="):
            rest, org = head, last[len("org="):]
            if not org:
                raise ConfigError(f"token {name!r}: org= needs an org id")
        secret, sep2, scope = rest.rpartition(":")
        if not sep or not sep2 or not name or not secret:
            raise ConfigError("a token must look like name:secret:scope[:org=ORG] "
                              "(scope read, write or admin)")
        if scope not in _SCOPES:
            raise ConfigError(f"token {name!r}: scope must be read, write or admin, "
                              f"got {scope!r}")
        if len(secret) < 16:
            raise ConfigError(f"token {name!r}: the secret must be at least 16 characters")
        return cls(name, secret, _SCOPES[_SCOPES.index(scope)], org)

    def text(self) -> str:
        """The ``name:secret:scope[:org=ORG]`` form :meth:`parse` reads."""
        tail = "" if self.org is None else f":org={self.org}"
        return f"{self.name}:{self.secret}:{self.scope}{tail}"


def parse_tokens(values: list[str] | tuple[str, ...], env: str | None = None) -> tuple[Token, ...]:
    """Tokens from repeated ``--token`` values and a comma-separated environment value."""
    texts = [v for v in values if v.strip()]
    if env:
        texts += [part for part in env.split(",") if part.strip()]
    tokens = tuple(Token.parse(t) for t in texts)
    names = [t.name for t in tokens]
    if len(set(names)) != len(names):
        raise ConfigError("token names must be unique")
    return tokens


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses; hostnames count as exposed."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


#: the longest window accepted: beyond it the wait costs more than the batch saves
MAX_PIPELINE_WINDOW = 0.05


@dataclass(frozen=True)
class ServerConfig:
    """Everything :func:`budgetlimiter.server.create_app` and ``budgetlimiter serve`` need."""

    redis_url: str = "memory://"
    policy_path: str | None = None
    db_url: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = 1
    tokens: tuple[Token, ...] = ()
    max_body: int = DEFAULT_MAX_BODY
    redis_timeout: float = DEFAULT_REDIS_TIMEOUT
    ready_timeout: float = 1.0
    watch_policy: float = 0.0  # seconds between policy file mtime checks; 0 = off
    log_level: str = "info"
    #: scopes always given per-budget gauges in /metrics (others: over gauge_min_percent,
    #: blocked or forecast to exceed), at most gauge_max_budgets budgets in all
    gauge_scopes: tuple[str, ...] = ()
    gauge_min_percent: float = 50.0
    gauge_max_budgets: int = 200
    #: also export the metrics through OpenTelemetry (OTLP/HTTP; needs the otel extra)
    otel: bool = False
    #: run the reconciler and the alert deliverer in this process (needs db_url); the
    #: ``serve`` command turns it on unless ``--no-reconcile``
    reconcile: bool = False
    reconcile_interval: float = 2.0
    #: seconds an org's reconcile lease lasts (0: no leases, every org reconciled here)
    reconcile_lease: float = 6.0
    webhooks: tuple[str, ...] = ()
    #: the environment variable holding the webhook signing secret (never the secret)
    webhook_secret_env: str = "BUDGETLIMITER_WEBHOOK_SECRET"
    #: ``serve --leases CALLS[,SECONDS]``: checks admitted from in-process slices (0 = off)
    lease_calls: int = 0
    lease_seconds: float = 1.0
    #: once started, move everything alive into the garbage collector's permanent generation
    #: (``gc.freeze()``): the process's own long-lived objects (policy, models, caches) are
    #: then never scanned again. ``serve`` turns it on (it owns its process); an app embedded
    #: in another program leaves that program's collector alone.
    gc_freeze: bool = False
    #: seconds a Redis call may wait for others to share its write while the process is
    #: busy (:class:`~budgetlimiter.aio.AsyncBudgetLimiter`'s ``pipeline_window``); ``serve``
    #: sets 4 ms with ``--grpc-port`` (``--pipeline-window``)
    pipeline_window: float = 0.0

    @property
    def lease_config(self) -> LeaseConfig | None:
        """The limiter's lease settings (None: leases off)."""
        if not self.lease_calls:
            return None
        return LeaseConfig(calls=self.lease_calls, seconds=self.lease_seconds)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.tokens)

    def validate(self) -> ServerConfig:
        """Raise :class:`ConfigError` for an unsafe or impossible configuration."""
        if not is_loopback(self.host) and not self.tokens:
            raise ConfigError(
                f"refusing to listen on {self.host} without authentication: pass --token "
                "name:secret:scope or set BUDGETLIMITER_TOKENS (or bind 127.0.0.1)")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if self.lease_calls:
            try:
                self.lease_config  # noqa: B018 - validates calls and seconds
            except ValueError as exc:
                raise ConfigError(f"--leases: {exc}") from None
        for text in self.gauge_scopes:
            why = scope_error(text)
            if why is not None:
                raise ConfigError(f"gauge scope {text[:120]!r}: {why}")
        if self.gauge_max_budgets < 0:
            raise ConfigError(f"gauge max budgets must be >= 0, got {self.gauge_max_budgets}")
        if not 0 <= self.pipeline_window <= MAX_PIPELINE_WINDOW:
            raise ConfigError(f"pipeline window must be 0..{MAX_PIPELINE_WINDOW * 1000:g} ms, "
                              f"got {self.pipeline_window * 1000:g} ms")
        if self.max_body < 1024:
            raise ConfigError(f"max body must be at least 1024 bytes, got {self.max_body}")
        if self.reconcile_interval <= 0 or self.reconcile_lease < 0:
            raise ConfigError("reconcile interval must be > 0 and the lease >= 0 seconds")
        if self.reconcile and self.webhooks and not os.environ.get(self.webhook_secret_env):
            raise ConfigError(f"--webhook needs a signing secret in ${self.webhook_secret_env}")
        return self


ENV_CONFIG = "BUDGETLIMITER_SERVE_CONFIG"


def dump_env_config(config: ServerConfig) -> str:
    """Serialise a config for worker processes (see :func:`load_env_config`)."""
    data = {k: v for k, v in vars(config).items() if k != "tokens"}
    data["tokens"] = [t.text() for t in config.tokens]
    return json.dumps(data)


def parse_leases(text: str) -> tuple[int, float]:
    """``CALLS[,SECONDS]`` of ``serve --leases`` (``64`` or ``64,0.5``; seconds default 1)."""
    calls_text, _, seconds_text = text.partition(",")
    try:
        calls = int(calls_text.strip())
        seconds = float(seconds_text.strip()) if seconds_text.strip() else 1.0
    except ValueError:
        raise ConfigError(f"--leases: expected CALLS[,SECONDS] such as 64,1, got {text!r}"
                          ) from None
    return calls, seconds


def load_env_config() -> ServerConfig:
    """The config a ``budgetlimiter serve`` parent put in ``BUDGETLIMITER_SERVE_CONFIG``."""
    data = json.loads(os.environ[ENV_CONFIG])
    data["tokens"] = parse_tokens(data.get("tokens", []))
    data["gauge_scopes"] = tuple(data.get("gauge_scopes", ()))
    data["webhooks"] = tuple(data.get("webhooks", ()))
    return ServerConfig(**data)
