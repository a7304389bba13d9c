"""The Lua script registry: one place that loads and hashes the scripts.

Each script is ``lua/lib.lua`` followed by ``lua/<name>.lua``. The SHA1 is computed here, calls
go out as ``EVALSHA``; the engine answers a ``NOSCRIPT`` reply (after ``SCRIPT FLUSH``, a
restart or a failover) by loading the script and sending the call again, once (see
:mod:`budgetlimiter.engine.transport`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from redis.exceptions import NoScriptError, ResponseError

SCRIPT_NAMES = ("check", "settle", "flush", "ack", "rebuild", "adjust", "lease")


def _lua_dir() -> Path:
    """Scripts ship inside the wheel as ``budgetlimiter/lua``; a checkout has them at ``lua/``."""
    packaged = resources.files("budgetlimiter") / "lua"
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[2] / "lua"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError("budgetlimiter Lua scripts not found (broken installation)")


def read_lua(name: str) -> str:
    return (_lua_dir() / f"{name}.lua").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Script:
    """A script's full source and its SHA1."""

    name: str
    source: str
    sha: str

    @classmethod
    def load(cls, name: str) -> Script:
        source = read_lua("lib") + "\n" + read_lua(name)
        return cls(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())


class Registry:
    """All scripts, loaded once per process."""

    _instance: Registry | None = None

    def __init__(self) -> None:
        self.scripts = {name: Script.load(name) for name in SCRIPT_NAMES}

    @classmethod
    def default(cls) -> Registry:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __getitem__(self, name: str) -> Script:
        return self.scripts[name]


def is_noscript(reply: object) -> bool:
    return isinstance(reply, NoScriptError) or (
        isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")
    )
