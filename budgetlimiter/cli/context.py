"""Shared state of one CLI invocation: settings, and lazily opened policy, limiter and store."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click

from ..errors import InvalidInput

EXIT_DENIED = 1
EXIT_INPUT = 2
EXIT_UNAVAILABLE = 3
#: commit of a released reservation, or release of a committed one (nothing changed)
EXIT_SETTLED = 4
#: commit or release of a reservation id Redis does not know (nothing changed)
EXIT_NOT_FOUND = 5
DEFAULT_CONFIG = "budgetlimiter.toml"

#: The library's log lines on stderr, errors only: a command reports an outage in its own one
#: line (a check's "redis unavailable" warning would be a second). ``reconcile`` and ``serve``
#: configure logging of their own and drop this handler.
class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the ``sys.stderr`` of the moment (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


LOG_HANDLER = _StderrHandler()
LOG_HANDLER.setLevel(logging.ERROR)
LOG_HANDLER.setFormatter(logging.Formatter("budgetlimiter: %(message)s"))


def load_config(path: str | None) -> dict[str, str]:
    """Settings from a TOML config file (``redis``, ``db``, ``policy`` keys)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib  # type: ignore[no-redef, import-not-found, unused-ignore]
    file = Path(path) if path else Path(DEFAULT_CONFIG)
    if not file.is_file():
        if path:
            raise click.UsageError(f"config file {path} not found")
        return {}
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise click.UsageError(f"{file}: {exc}") from None
    section = data.get("budgetlimiter", data)
    unknown = set(section) - {"redis", "db", "policy"}
    if unknown:
        raise click.UsageError(f"{file}: unknown settings {sorted(unknown)}")
    return {k: str(v) for k, v in section.items()}


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***`` (error messages never show secrets)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))
    except ValueError:
        return "<unparsable URL>"


def check_redis_url(url: str) -> None:
    """Raise :class:`InvalidInput` naming what is wrong with a backend URL, without
    connecting (the sidecar must start while Redis is down)."""
    from redis.connection import parse_url

    from ..backends import _sentinel_parts, parse_backend

    try:
        kind = parse_backend(url).kind
        if kind == "sentinel":
            _sentinel_parts(url)
        elif kind in ("redis", "cluster"):
            parse_url(url.replace("+cluster", "", 1))  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise InvalidInput(f"bad --redis URL {redacted(url)!r}: {exc}") from None


def open_store(url: str | None) -> Any:
    """The durable store of ``url``, not connected yet; :class:`InvalidInput` when there is no
    URL or it is not one the store accepts."""
    from sqlalchemy.exc import ArgumentError

    from ..durable.store.sql import Store

    if not url:
        raise InvalidInput("no database: pass --db URL (sqlite:///file.db or "
                           "postgresql://...), or set BUDGETLIMITER_DB")
    try:
        return Store(url)
    except (ValueError, ArgumentError) as exc:
        raise InvalidInput(f"bad --db URL {redacted(url)!r}: {exc}") from None


class Context:
    """What every command needs; opened on first use and closed when the command ends."""

    def __init__(self, redis_url: str, db_url: str | None, policy_path: str | None, fmt: str,
                 strict: bool = False) -> None:
        self.redis_url = redis_url
        self.db_url = db_url
        self.policy_path = policy_path
        self.fmt = fmt
        self.strict = strict
        self._policy: Any = None
        self._limiter: Any = None
        self._store: Any = None

    def policy(self) -> Any:
        if self._policy is None:
            from ..policy import load_policy

            if not self.policy_path:
                raise click.UsageError("no policy: pass --policy FILE or set "
                                       "BUDGETLIMITER_POLICY")
            self._policy = load_policy(Path(self.policy_path))
        return self._policy

    def limiter(self) -> Any:
        if self._limiter is None:
            from ..client import BudgetLimiter

            policy = self.policy()
            check_redis_url(self.redis_url)
            # a command's process ends right away: usage it could not store is an error
            # (exit 3), never queued in a memory that dies with it
            self._limiter = BudgetLimiter(policy, self.redis_url, timeout=2.0,
                                          outage_queue=False)
        return self._limiter

    def store(self) -> Any:
        if self._store is None:
            self._store = open_store(self.db_url)
            self._store.migrate()
        return self._store

    def declared(self, org: str, team: str | None = None) -> None:
        """Say on stderr when ``org`` (or ``team``, in an org that lists its teams) is not
        declared in the policy, so that only defaults apply (a typo, most likely); with
        ``--strict`` that is an error (exit 2) before anything is read or written."""
        policy = self.policy()
        if not policy.orgs:  # a policy of defaults only: no org name can be a typo
            return
        spec = policy.orgs.get(org)
        if spec is None:
            what = (f"org {org!r} is not declared in {self.policy_path}: only the policy's "
                    "top-level defaults apply to it")
        elif team is not None and spec.teams and team not in spec.teams:
            teams = list(spec.teams)
            listed = ", ".join(teams[:6]) + (", ..." if len(teams) > 6 else "")
            what = (f"team {team!r} is not declared under org {org!r} in {self.policy_path}, "
                    f"which lists its teams ({listed}): only defaults apply to it")
        else:
            return
        if self.strict:
            raise InvalidInput(f"{what} (--strict)")
        click.echo(f"warning: {what}", err=True)

    def close(self) -> None:
        if self._limiter is not None:
            self._limiter.close()
        if self._store is not None:
            self._store.close()
