"""Keeping the runtime overrides in force, and auditing what a sidecar changes by itself.

The keeper (:func:`overrides_keeper`) runs in every sidecar with a database: at start it
applies the version SQL has in force and publishes it (Redis may have lost it), and then
republishes whenever Redis lost it (``FLUSHALL``, a restart without persistence; checked
every second), a publication failed, or SQL holds a newer version than the one applied
(checked every 5 s: a writer whose publication failed). :func:`admin_hooks` also audits
policy-file reloads and a start with other tokens than the last recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..durable.store import admin as sql
from .admin import AdminApi, run_store

if TYPE_CHECKING:
    from .app import Server

log = logging.getLogger("budgetlimiter.server")


@contextlib.asynccontextmanager
async def overrides_keeper(server: Server) -> AsyncIterator[None]:
    """Apply and publish the overrides SQL has in force at start; republish when Redis lost
    them or a publication failed (checked every second)."""
    if not server.config.db_url and server._store is None:
        yield
        return
    api = AdminApi(server)

    async def sync_from_sql() -> None:
        store = await server.store()
        current = await run_store(sql.latest_overrides, store)
        if current.version > 0:
            server.overrides_unpublished = False
            await api.publish(current)

    async def keep() -> None:
        tick = 0
        while True:
            try:
                limiter = server.require_limiter()
                behind = False
                if tick % 5 == 0:  # a change another writer stored but never published
                    store = await server.store()
                    latest = await run_store(sql.latest_version_number, store)
                    behind = latest > limiter.engine.watch.applied
                if behind or server.overrides_unpublished or limiter.engine.watch.missing:
                    await sync_from_sql()
            except Exception as exc:  # keep trying: a database or Redis outage passes
                log.warning("override keeper: %s", exc)
            tick += 1
            await asyncio.sleep(1.0)

    try:
        await sync_from_sql()
    except Exception as exc:
        server.overrides_unpublished = True
        log.warning("overrides not restored at start (retrying): %s", exc)
    task = asyncio.create_task(keep())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _policy_digest(policy: Any) -> str:
    text = policy.file_policy().model_dump_json()
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _token_list(server: Server) -> list[str]:
    """The configured tokens as the audit log shows them (never the secrets)."""
    return sorted(f"{t.name}:{t.scope}" + ("" if t.org is None else f":org={t.org}")
                  for t in server.config.tokens)


async def _audit_tokens(server: Server) -> None:
    """Append a ``tokens.change`` entry when the sidecar starts with other tokens (names,
    scopes, orgs) than the last recorded ones."""
    store = await server.store()
    now = _token_list(server)
    entries = await run_store(sql.audit_entries, store, None, None, None, 100_000)
    last: Any = next((e.after for e in reversed(entries) if e.action == "tokens.change"), [])
    if last != now:
        await run_store(sql.append_audit, store, sql.AuditEntry(
            who="sidecar", action="tokens.change", org="", scope="", before=last, after=now,
            why="the sidecar started with these tokens"))


def admin_hooks(server: Server) -> None:
    """Wire the keeper and the audit of policy reloads and token changes into ``server``."""
    if not server.config.db_url and server._store is None:
        return

    @contextlib.asynccontextmanager
    async def hook(srv: Server) -> AsyncIterator[None]:
        try:
            await _audit_tokens(srv)
        except Exception as exc:
            log.warning("token change not audited: %s", exc)
        loop = asyncio.get_running_loop()

        def on_reload(old: Any, new: Any) -> None:
            entry = sql.AuditEntry(
                who="sidecar", action="policy.reload", org="",
                scope=srv.config.policy_path or "", before=_policy_digest(old),
                after=_policy_digest(new), why="policy file reloaded (SIGHUP or --watch-policy)")

            async def write() -> None:
                try:
                    await run_store(sql.append_audit, await srv.store(), entry)
                except Exception as exc:
                    log.warning("policy reload not audited: %s", exc)

            loop.call_soon_threadsafe(lambda: loop.create_task(write()))

        srv.reload_listeners.append(on_reload)
        async with overrides_keeper(srv):
            yield

    server.builtin_hooks.append(hook)
