"""Schemas of the admin API (runtime limit overrides, versions, rollback, audit log).

The body of ``PUT /v1/limits/{scope}`` is validated by the policy file's own models (see
:mod:`budgetlimiter.policy.overrides`), so its errors are the policy loader's; the models here
publish its shape in the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..policy.model import LimitSpec, RateSpec
from ..policy.overrides import LimitKey, RateKey
from .models import EffectiveLimitOut, EffectiveRateOut, _integral

Reason = Field(min_length=1, max_length=1000, pattern=r"\S",
               description="Why (kept in the audit log).")


class OverrideIn(BaseModel):
    """A scope's override: entries set (the policy file's ``limits``/``rates`` fields) and
    keys removed; it replaces the scope's previous override."""

    model_config = ConfigDict(extra="forbid")

    limits: list[LimitSpec] = []
    rates: list[RateSpec] = []
    remove_limits: list[LimitKey] = []
    remove_rates: list[RateKey] = []
    why: str = Reason
    who: str | None = Field(None, max_length=256, description="Who, when the sidecar has "
                            "no tokens (with tokens: the token's name, and this is ignored).")


class RollbackIn(BaseModel):
    """Put an earlier version of the overrides in force again (as a new version)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: Annotated[int, Field(ge=0, le=2**53, description="The version to return to "
                                  "(0: none)."), BeforeValidator(_integral)]
    why: str = Reason
    who: str | None = Field(None, max_length=256)


class LimitsOut(BaseModel):
    """A scope's override and its effective limits (file and override), with the version of
    the overrides in force; the ``ETag`` header carries ``etag``."""

    scope: str
    version: int
    etag: str
    override: dict[str, Any] | None
    limits: list[EffectiveLimitOut]
    rates: list[EffectiveRateOut]


class VersionOut(BaseModel):
    version: int
    action: str
    scope: str | None
    who: str
    why: str
    at_ms: int


class VersionsOut(BaseModel):
    """The versions of the overrides, newest first."""

    in_force: int
    versions: list[VersionOut]


class AuditOut(BaseModel):
    id: int
    at_ms: int
    who: str
    action: str
    org: str | None
    scope: str | None
    before: Any
    after: Any
    why: str
    version: int | None


class AuditLogOut(BaseModel):
    """Audit entries, oldest first."""

    entries: list[AuditOut]


class ChangeOut(BaseModel):
    """What a change stored (``version``), whether Redis took it (``published``; if not, the
    sidecar publishes it again within a second of Redis answering), its audit entry, and the
    scope's new state (``null`` for a rollback)."""

    version: int
    published: bool
    audit: AuditOut
    state: LimitsOut | None
