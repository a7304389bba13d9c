"""Bearer-token authentication: constant-time comparison, read vs write scopes."""

from __future__ import annotations

import hmac

from .config import Token

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
    """Read tokens may only read; write tokens may do everything."""
    return token.scope == "write" or method in READ_METHODS
