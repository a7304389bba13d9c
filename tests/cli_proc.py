"""The real console script as a subprocess, importing the tree under test.

``python -m budgetlimiter.cli`` runs the same entry point as the installed ``budgetlimiter``
script (``budgetlimiter.cli:run``); ``PYTHONPATH`` set to this checkout makes the child import
this tree whatever the virtual environment's editable install points at. The child runs in a
directory of its own (no ``./budgetlimiter.toml`` is read, nothing lands in the checkout) with
no ``BUDGETLIMITER_*`` variable of the parent's environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POLICY = str(ROOT / "examples" / "policy.yaml")
ALICE = ("--org", "acme", "--team", "eng", "--user", "alice", "--agent", "gpt-4o")
DAN = ("--org", "acme", "--team", "research", "--user", "dan", "--agent", "claude-sonnet")


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGETLIMITER_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "budgetlimiter.cli", *args]


@dataclass
class Done:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Cli:
    """``cli("check", ...)`` runs the console script with the given global settings."""

    cwd: Path
    redis: str | None = None
    db: str | None = None
    policy: str | None = POLICY

    def args(self) -> list[str]:
        out: list[str] = []
        for flag, value in (("--redis", self.redis), ("--db", self.db),
                            ("--policy", self.policy)):
            if value is not None:
                out += [flag, value]
        return out

    def __call__(self, *args: str, timeout: float = 60) -> Done:
        done = subprocess.run(command(*self.args(), *args), cwd=self.cwd, env=child_env(),
                              capture_output=True, text=True, timeout=timeout)
        return Done(done.returncode, done.stdout, done.stderr)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(command(*self.args(), *args), cwd=self.cwd, env=child_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_error_line(done: Done) -> str:
    """The single stderr line of a failed command (no traceback, nothing else)."""
    assert "Traceback" not in done.err, done.err
    assert done.err.count("\n") == 1, done.err
    assert done.err.startswith("error: "), done.err
    return done.err
