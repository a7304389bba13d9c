"""``deploy/envoy.yaml`` is a valid Envoy bootstrap (parsed with Envoy's own protobuf classes
from xds-protos, unknown fields rejected) that sends what the default mapping reads."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

# registers the typed_config types the file names
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from budgetlimiter.envoy import SERVICE_NAME
from budgetlimiter.policy import EnvoyMapping

ENVOY_YAML = Path(__file__).resolve().parent.parent / "deploy" / "envoy.yaml"


def load() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(ENVOY_YAML.read_text())
    return data


def bootstrap(data: dict[str, Any]) -> Any:
    return json_format.ParseDict(data, bootstrap_pb2.Bootstrap(), ignore_unknown_fields=False)


def test_deploy_envoy_yaml_is_a_valid_bootstrap_for_the_default_mapping() -> None:
    boot = bootstrap(load())
    listener = boot.static_resources.listeners[0]
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    ratelimit = rate_limit_pb2.RateLimit()
    assert hcm.http_filters[0].typed_config.Unpack(ratelimit)
    mapping = EnvoyMapping()
    assert ratelimit.domain in mapping.domains and ratelimit.failure_mode_deny
    cluster = ratelimit.rate_limit_service.grpc_service.envoy_grpc.cluster_name
    rls = next(c for c in boot.static_resources.clusters if c.name == cluster)
    assert rls.health_checks[0].grpc_health_check.service_name == SERVICE_NAME
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in \
        rls.typed_extension_protocol_options  # gRPC needs HTTP/2
    route = hcm.route_config.virtual_hosts[0].routes[1]
    request_time, *stream_done = route.route.rate_limits
    keys = {a.request_headers.descriptor_key for a in request_time.actions}
    e = mapping.entries
    assert keys == {e.org, e.team, e.user, e.agent, e.request_id}
    assert not request_time.apply_on_stream_done
    metrics = []
    for limit in stream_done:
        assert limit.apply_on_stream_done and "io.envoy.ai_gateway" in limit.hits_addend.format
        generic = {a.generic_key.descriptor_key: a.generic_key.descriptor_value
                   for a in limit.actions if a.HasField("generic_key")}
        assert generic[mapping.stream_done.key] == mapping.stream_done.value
        metrics.append(generic[e.metric])
    assert metrics == ["input_tokens", "output_tokens"]


@pytest.mark.parametrize("typo", ["rate_limit", "apply_on_stream_dne", "descriptor_keys"])
def test_a_typo_cannot_ship(typo: str) -> None:
    data = copy.deepcopy(load())
    hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    route = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][1]["route"]
    limits = route["rate_limits"]
    if typo == "rate_limit":
        route["rate_limit"] = route.pop("rate_limits")
    elif typo == "apply_on_stream_dne":
        limits[1]["apply_on_stream_dne"] = limits[1].pop("apply_on_stream_done")
    else:
        action = limits[0]["actions"][0]["request_headers"]
        action["descriptor_keys"] = action.pop("descriptor_key")
    with pytest.raises(json_format.ParseError):
        bootstrap(data)
