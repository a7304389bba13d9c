"""Schemathesis against the sidecar's own OpenAPI document: generated requests (valid and
invalid) to every operation of a live server on a real redis-server never get a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from budgetlimiter.server import ServerConfig, create_app
from budgetlimiter.server.openapi import build_openapi
from budgetlimiter.server.testing import LiveServer

from .servers import RedisServer
from .test_server import POLICY

pytestmark = pytest.mark.redis

schema = schemathesis.openapi.from_dict(build_openapi("test"))


@pytest.fixture(scope="module")
def live(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("fuzz")
    policy = Path(tmp / "policy.yaml")
    policy.write_text(POLICY)
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.client().flushall()
    app = create_app(ServerConfig(redis_url=redis_server.url, policy_path=str(policy),
                                  db_url=f"sqlite:///{tmp / 'fuzz.db'}", redis_timeout=1.0))
    with LiveServer(app, http="httptools") as server:
        yield server


@schema.parametrize()
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_no_server_errors(case: schemathesis.Case[Any], live: LiveServer) -> None:
    case.call_and_validate(base_url=live.url, checks=[not_a_server_error], timeout=10)
