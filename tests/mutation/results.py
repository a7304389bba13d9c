"""What the mutation runner remembers between runs, in ``.mutants/`` (git-ignored):

- ``status.json``: the latest result of every mutant ever run, keyed by ``file:line:col`` and
  the mutation: ``{"status": killed|survived|timeout, "killed_by": nodeid, "seconds": s}``.
  ``--survivors`` re-runs those whose latest result is survived or timeout; ``--counts``
  prints the per-file counts of the current tree from it. A killed mutant stays killed while
  its test exists (tests are only added), so partial runs add up to a full picture.
- ``reach-<file>.json``: per test of a target, its duration and what it reached in the last
  unmutated run (see :mod:`tests.mutation.plugin`).

The kill history that orders each target's tests (most kills first) is derived from
``status.json`` (the ``killed_by`` of that file's mutants), not kept on its own.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from .mutants import Mutant

STATUSES = ("killed", "equivalent", "survived", "timeout", "not run")


def key(m: Mutant) -> str:
    return f"{m.id} | {m.mutation}"


class Store:
    """``status.json`` in ``directory``: loaded once, saved after every result."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "status.json"
        self.status: dict[str, dict[str, Any]] = {}
        directory.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.status = json.loads(self.path.read_text(encoding="utf-8"))

    def record(self, m: Mutant, status: str, seconds: float, killed_by: str,
               cpu: float = 0.0) -> None:
        """Store one result (read, update, write under a lock: two runs may share the file)."""
        with open(self.dir / "status.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.exists():
                self.status = json.loads(self.path.read_text(encoding="utf-8"))
            self.status[key(m)] = {"status": status, "seconds": round(seconds, 2),
                                   "cpu": round(cpu, 2), "killed_by": killed_by}
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.status, indent=0, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)

    def latest(self, m: Mutant) -> str:
        entry = self.status.get(key(m))
        return str(entry["status"]) if entry else "not run"

    def kills(self, path: str) -> Counter[str]:
        """How many mutants of ``path`` each test killed (its first failing test)."""
        prefix = path + ":"
        return Counter(e["killed_by"] for k, e in self.status.items()
                       if k.startswith(prefix) and e["status"] == "killed" and e["killed_by"])

    def reach_path(self, target: str) -> Path:
        return self.dir / f"reach-{target.replace('/', '_')}.json"


def counts(mutants: list[Mutant], equivalent: set[str], store: Store) -> dict[str, Counter[str]]:
    """Per file (and ``total``): how many mutants are in each of :data:`STATUSES`."""
    out: dict[str, Counter[str]] = {}
    for m in mutants:
        status = "equivalent" if key(m) in equivalent else store.latest(m)
        out.setdefault(m.path, Counter())[status] += 1
        out.setdefault("total", Counter())[status] += 1
    return out


def cpu_minutes(mutants: list[Mutant], store: Store) -> float:
    """CPU minutes the latest results of ``mutants`` took (what a full run costs one core)."""
    return sum(float(store.status.get(key(m), {}).get("cpu", 0)) for m in mutants) / 60


def format_counts(table: dict[str, Counter[str]]) -> str:
    width = max(len(p) for p in table) if table else 5
    head = f"{'file':<{width}} " + " ".join(f"{s:>10}" for s in STATUSES)
    rows = [head]
    for path, c in sorted(table.items(), key=lambda kv: (kv[0] == "total", kv[0])):
        rows.append(f"{path:<{width}} " + " ".join(f"{c[s]:>10}" for s in STATUSES))
    return "\n".join(rows)
