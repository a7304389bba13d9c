"""Shared state of one CLI invocation: settings, and lazily opened limiter and store."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

EXIT_DENIED = 1
EXIT_INPUT = 2
EXIT_UNAVAILABLE = 3
DEFAULT_CONFIG = "budgetlimiter.toml"


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


class Context:
    """What every command needs; opened on first use and closed when the command ends."""

    def __init__(self, redis_url: str, db_url: str, policy_path: str | None, fmt: str) -> None:
        self.redis_url = redis_url
        self.db_url = db_url
        self.policy_path = policy_path
        self.fmt = fmt
        self._limiter: Any = None
        self._store: Any = None

    def policy(self) -> Any:
        from ..policy import load_policy

        if not self.policy_path:
            raise click.UsageError("no policy: pass --policy FILE or set BUDGETLIMITER_POLICY")
        return load_policy(Path(self.policy_path))

    def limiter(self) -> Any:
        if self._limiter is None:
            from ..client import BudgetLimiter

            # a command's process ends right away: usage it could not store is an error
            # (exit 3), never queued in a memory that dies with it
            self._limiter = BudgetLimiter(self.policy(), self.redis_url, timeout=2.0,
                                          outage_queue=False)
        return self._limiter

    def store(self) -> Any:
        if self._store is None:
            from ..durable.store.sql import Store

            self._store = Store(self.db_url)
            self._store.migrate()
        return self._store

    def close(self) -> None:
        if self._limiter is not None:
            self._limiter.close()
        if self._store is not None:
            self._store.close()
