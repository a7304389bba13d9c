"""The OpenAPI 3.1 document of the sidecar, built from the pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import models as m
from .params import (
    CHECK_PARAMS,
    EFFECTIVE_PARAMS,
    SCOPE_HELP,
    SCOPE_SCHEMA,
    TREE_PARAMS,
    USAGE_PARAMS,
    Param,
)
from .problems import PROBLEM_MEDIA_TYPE

_REQUESTS: list[type[BaseModel]] = [m.CheckRequest, m.CommitRequest, m.ReleaseRequest,
                                    m.RecordRequest, m.BatchRequest]
_RESPONSES: list[type[BaseModel]] = [m.DecisionOut, m.SettleOut, m.BatchOut, m.ScopeStatusOut,
                                     m.UsageOut, m.EffectivePolicyOut, m.UiTreeOut, m.HealthOut,
                                     m.ReadyOut, m.ProblemOut, m.ForecastOut]
_REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref(model)}}}


_PROBLEM = {"description": "Error (RFC 9457 problem details; branch on `code`).",
            "content": {PROBLEM_MEDIA_TYPE: {"schema": _ref(m.ProblemOut)}}}


def _params(params: tuple[Param, ...]) -> list[dict[str, Any]]:
    return [p.openapi() for p in params]


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": _ref(m.ProblemOut)}}}


def _post(op_id: str, summary: str, body: type[BaseModel], out: type[BaseModel],
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id, "summary": summary,
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": _ref(body)}}},
        "responses": {"200": _json(out, "OK"), "default": _PROBLEM},
    }
    op.update(extra or {})
    return {"post": op}


def _get(op_id: str, summary: str, out: type[BaseModel], params: list[dict[str, Any]],
         *, public: bool = False, extra_responses: dict[str, Any] | None = None
         ) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "parameters": params,
                          "responses": {"200": _json(out, "OK"), **(extra_responses or {}),
                                        "default": _PROBLEM}}
    if public:
        op["security"] = []
    return {"get": op}


_CHECK_EXTRA = {
    "parameters": [
        *_params(CHECK_PARAMS),
        {"name": "Prefer", "in": "header", "required": False,
         "description": "RFC 7240 preferences; `budget-status=http` is the same as "
         "`?http_status=true` (other preferences are ignored).",
         "schema": {"type": "string"}},
    ],
    "responses": {
        "200": _json(m.DecisionOut, "The decision (allowed or not)."),
        "429": {"description": "Blocked, with HTTP-status semantics requested.",
                "headers": {
                    "Retry-After": {"schema": {"type": "integer"}},
                    "RateLimit-Policy": {"schema": {"type": "string"}},
                    "RateLimit": {"schema": {"type": "string"}}},
                "content": {PROBLEM_MEDIA_TYPE: {"schema": _ref(m.ProblemOut)}}},
        "default": _PROBLEM,
    },
}
_ORG_MISMATCH = {"409": _problem("`org_mismatch`: the request names two different orgs.")}

def build_openapi(version: str) -> dict[str, Any]:
    """The complete OpenAPI 3.1 document."""
    pairs = ([(model, "validation") for model in _REQUESTS]
             + [(model, "serialization") for model in _RESPONSES])
    _, schemas = models_json_schema(pairs, ref_template=_REF)  # type: ignore[arg-type]
    paths: dict[str, Any] = {
        "/v1/check": _post("check", "Check and reserve (all-or-nothing).", m.CheckRequest,
                           m.DecisionOut, _CHECK_EXTRA),
        "/v1/commit": _post("commit", "Commit actual usage of a reservation (by id).",
                            m.CommitRequest, m.SettleOut,
                            {"responses": {"200": _json(m.SettleOut, "OK"), **_ORG_MISMATCH,
                                           "default": _PROBLEM}}),
        "/v1/release": _post("release", "Release a reservation.", m.ReleaseRequest,
                             m.SettleOut),
        "/v1/record": _post("record", "Record usage without a reservation.", m.RecordRequest,
                            m.SettleOut),
        "/v1/check:batch": _post("checkBatch", "Many independent checks, one round trip.",
                                 m.BatchRequest, m.BatchOut),
        "/v1/status/{scope}": _get("scopeStatus", "Live counters of one scope.",
                                   m.ScopeStatusOut, [{
                                       "name": "scope", "in": "path", "required": True,
                                       "description": "The scope text, URL-encoded (e.g. "
                                       "org%3Aacme%2Fteam%3Aeng). " + SCOPE_HELP,
                                       "schema": SCOPE_SCHEMA}]),
        "/v1/forecast/{scope}": _get("scopeForecast", "Where each budget of one scope is "
                                     "heading by its period's end.", m.ForecastOut, [{
                                         "name": "scope", "in": "path", "required": True,
                                         "description": "The scope text, URL-encoded. "
                                         + SCOPE_HELP, "schema": SCOPE_SCHEMA}]),
        "/v1/usage": _get("usage", "Reports from the durable store.", m.UsageOut,
                          _params(USAGE_PARAMS), extra_responses=_ORG_MISMATCH),
        "/v1/policy/effective": _get("effectivePolicy", "What the policy applies to a subject.",
                                     m.EffectivePolicyOut, _params(EFFECTIVE_PARAMS)),
        "/v1/ui/tree": _get("uiTree", "The dashboard's view of one org (live counters).",
                            m.UiTreeOut, _params(TREE_PARAMS)),
        "/healthz": _get("healthz", "Liveness: the process answers.", m.HealthOut, [],
                         public=True),
        "/readyz": _get("readyz", "Readiness: Redis, scripts and policy.", m.ReadyOut, [],
                        public=True, extra_responses={"503": _json(m.ReadyOut, "Not ready.")}),
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics.",
                             "responses": {"200": {"description": "Text exposition format.",
                                                   "content": {"text/plain": {"schema": {
                                                       "type": "string"}}}},
                                           "default": _PROBLEM}}},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document.",
                                  "security": [],
                                  "responses": {"200": {"description": "OpenAPI 3.1.",
                                                        "content": {"application/json": {
                                                            "schema": {"type": "object"}}}},
                                                "default": _PROBLEM}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "budgetlimiter sidecar", "version": version,
                 "description": "Token, cost and rate budgets for AI agent invocations. "
                 "Money is decimal USD strings; errors are RFC 9457 problem documents."},
        "paths": paths,
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }
