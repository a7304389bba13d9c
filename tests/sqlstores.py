"""Fixtures for the SQL store on SQLite (a file per test) and PostgreSQL (a schema per test).

PostgreSQL is expected at 127.0.0.1:5432, database ``test``, trust auth (user ``postgres`` or
``root``). If it is unreachable the postgres tests FAIL, unless BUDGETLIMITER_SKIP_POSTGRES=1.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from budgetlimiter.durable.store.sql import Store

PG_URLS = ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://root@127.0.0.1:5432/test")
_pg_url: list[str] = []


class SqlUrl(str):
    """A database URL (with ``?schema=`` for PostgreSQL, which :class:`Store` accepts) that
    also carries the parts separately: ``Store(u.url, schema=u.schema)``."""

    url: str
    schema: str | None

    def __new__(cls, url: str, schema: str | None = None) -> SqlUrl:
        self = super().__new__(cls, url if schema is None else f"{url}?schema={schema}")
        self.url, self.schema = url, schema
        return self


def postgres_url() -> str:
    """The first PostgreSQL URL that answers (fails the test if none does)."""
    if _pg_url:
        return _pg_url[0]
    if os.environ.get("BUDGETLIMITER_SKIP_POSTGRES") == "1":
        pytest.skip("BUDGETLIMITER_SKIP_POSTGRES=1")
    errors = []
    for url in PG_URLS:
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"),
                               poolclass=NullPool, connect_args={"connect_timeout": 5})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            _pg_url.append(url)
            return url
        except Exception as exc:
            errors.append(f"{url}: {exc}")
        finally:
            engine.dispose()
    pytest.fail("PostgreSQL is unreachable (set BUDGETLIMITER_SKIP_POSTGRES=1 to skip):\n"
                + "\n".join(errors))


def _admin(url: str, sql: str) -> None:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"),
                           poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


@pytest.fixture(params=[
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", marks=pytest.mark.postgres, id="postgres"),
])
def store_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> Iterator[SqlUrl]:
    """A fresh, empty database: an SQLite file, or a new PostgreSQL schema dropped after."""
    if request.param == "sqlite":
        yield SqlUrl(f"sqlite:///{os.path.join(tmp_path, 'store.db')}")
        return
    with postgres_schema() as url:
        yield url


@contextlib.contextmanager
def postgres_schema() -> Iterator[SqlUrl]:
    """A new PostgreSQL schema on the test server, dropped afterwards."""
    url = postgres_url()
    schema = f"bl_test_{uuid.uuid4().hex[:12]}"
    _admin(url, f'CREATE SCHEMA "{schema}"')
    try:
        yield SqlUrl(url, schema)
    finally:
        _admin(url, f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def make_store(store_url: SqlUrl) -> Iterator[Callable[[], Store]]:
    """Factory of migrated :class:`Store` objects on the test's database (each call opens a
    new Store, like another process would); all are closed after the test."""
    opened: list[Store] = []

    def make() -> Store:
        store = Store(store_url.url, schema=store_url.schema)
        opened.append(store)
        store.migrate()
        return store

    yield make
    for store in opened:
        store.close()
