"""The HTTP sidecar: the library's operations over a versioned JSON API (``budgetlimiter
serve``), with Prometheus metrics, health probes, bearer tokens and policy reload on SIGHUP."""

from __future__ import annotations

from .app import Server, create_app
from .config import ConfigError, ServerConfig, Token, parse_tokens

__all__ = ["ConfigError", "Server", "ServerConfig", "Token", "create_app", "parse_tokens"]
