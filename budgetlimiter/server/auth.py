"""Bearer-token authentication: constant-time comparison, read / write / admin scopes, and
org-restricted tokens.

The gate (:mod:`.middleware`) finds the token and refuses what its scope never allows; it
leaves the token in ``scope["state"]["token"]``. What depends on the request's content (which
org it is about, whether it changes limits) is checked by the handlers through
:func:`require_org` and :func:`require_admin`, the only places that decide it.
"""

from __future__ import annotations

import hmac
from typing import Any

from .config import Token
from .problems import Problem

#: Paths open without a token (probes and the API description).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def find_token(tokens: tuple[Token, ...], authorization: str | None) -> Token | None:
    """The token matching an ``Authorization: Bearer <secret>`` header, or ``None``.

    Every configured secret is compared with :func:`hmac.compare_digest`, always all of them,
    so the time taken does not tell which (or whether a) token matched.
    """
    if not authorization:
        return None
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return None
    given = presented.strip().encode("utf-8", "surrogateescape")
    found: Token | None = None
    for token in tokens:
        if hmac.compare_digest(given, token.secret.encode("utf-8")) and found is None:
            found = token
    return found


def allowed(token: Token, method: str) -> bool:
    """Read tokens may only read; write and admin tokens may use every method (changing
    limits needs admin: :func:`require_admin`)."""
    return token.scope != "read" or method in READ_METHODS


def request_token(request: Any) -> Token | None:
    """The token the gate accepted for ``request`` (None: auth is off). Found again from the
    header when the gate did not leave it (so the org and admin checks never depend on how
    the gate is written)."""
    state = request.scope.get("state", {})
    if "token" in state:
        found: Token | None = state["token"]
        return found
    server = getattr(getattr(request.app, "state", None), "server", None)
    tokens: tuple[Token, ...] = server.config.tokens if server is not None else ()
    return find_token(tokens, request.headers.get("authorization")) if tokens else None


def org_refusal(token: Token | None, orgs: tuple[str, ...]) -> str | None:
    """Why ``token`` may not make a request about ``orgs`` (empty: about every org), or
    None when it may. The one rule of org-restricted tokens, for HTTP and gRPC."""
    if token is None or token.org is None:
        return None
    if not orgs:
        return f"token {token.name!r} is restricted to org {token.org!r}; this endpoint " \
               "covers every org"
    for org in orgs:
        if org != token.org:
            return (f"token {token.name!r} is restricted to org {token.org!r}; the request "
                    f"is about org {org[:100]!r}")
    return None


def require_org(request: Any, *orgs: str) -> None:
    """Refuse (403 ``forbidden``) a token restricted to one org when the request is about
    another org (or about no org in particular: ``orgs`` empty)."""
    require_org_of(request_token(request), *orgs)


def require_org_of(token: Token | None, *orgs: str) -> None:
    """:func:`require_org` for a token already found (the hot endpoints carry it in
    :class:`~.fastpath.Incoming`)."""
    why = org_refusal(token, orgs)
    if why is not None:
        raise Problem("forbidden", why)


def require_admin(request: Any) -> str:
    """Refuse (403) a token without the ``admin`` scope; return who acts (the token name,
    or ``""`` when auth is off)."""
    token = request_token(request)
    if token is None:
        return ""
    if token.scope != "admin":
        raise Problem("forbidden", f"token {token.name!r} has scope {token.scope!r}; changing "
                      "limits needs an admin token")
    return token.name
