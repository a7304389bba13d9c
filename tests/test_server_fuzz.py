"""Schemathesis against the sidecar's own OpenAPI document: generated requests, valid and
invalid, to every operation of a live server on a real redis-server, with a write token, and
every check schemathesis has: no 5xx, valid requests accepted, invalid ones refused, answers
that match the document (status, content type, headers, body schema).

In CI the examples are few and fixed (derandomized, a deadline per request) to keep it short
on two shared cores; ``BUDGETLIMITER_FUZZ_EXAMPLES=1000`` runs a deep random search (about 4
minutes). The body limit is raised so that large generated batches meet the document's
``maxItems`` rather than the transport's size limit, which the document cannot state."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from budgetlimiter.server import ServerConfig, create_app, parse_tokens
from budgetlimiter.server.openapi import build_openapi
from budgetlimiter.server.testing import LiveServer

from .servers import RedisServer

pytestmark = pytest.mark.redis

SECRET = "w" * 24
POLICY = """
timezone: UTC
reservation_ttl_seconds: 60
default_pricing: {input_per_million: "1", output_per_million: "2"}
orgs:
  acme:
    limits: [{metric: cost, amount: "10", period: month}]
    rates: [{metric: requests, limit: 100, per: second, burst: 200}]
"""

schema = schemathesis.openapi.from_dict(build_openapi("test"))
#: generated requests per operation (more, and random, for a deep run on a workstation)
DEEP = os.environ.get("BUDGETLIMITER_FUZZ_EXAMPLES")
EXAMPLES = int(DEEP or "30")


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
                                  db_url=f"sqlite:///{tmp / 'fuzz.db'}", redis_timeout=1.0,
                                  tokens=parse_tokens([f"fuzz:{SECRET}:admin"]),
                                  max_body=16 << 20))
    with LiveServer(app, http="httptools") as server:
        yield server


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=timedelta(seconds=3), derandomize=DEEP is None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_document_and_server_agree(case: schemathesis.Case[Any], live: LiveServer) -> None:
    # An override's entries follow the policy file's rules, some across fields (a
    # rollover_cap needs rollover: accumulate, thresholds increase, one entry per key) that
    # JSON Schema cannot state: such a body is refused with 422 naming the field although
    # the document calls it well formed. Every other check runs on it.
    excluded = [positive_data_acceptance] if case.method == "PUT" else []
    case.call_and_validate(base_url=live.url, headers={"Authorization": f"Bearer {SECRET}"},
                           timeout=5, excluded_checks=excluded)
