"""Mutation testing of the rules: ``python -m tests.mutation`` (``make mutants``).

Generates mutants of ``lua/*.lua`` and of the argument planning (see
:mod:`tests.mutation.mutants` for the operators and :mod:`tests.mutation.targets` for which
tests judge which file, on which row of the test table), applies them one at a time to a
temporary copy of the tree (the real files are never edited) and runs, in a forked child of
a fork server, the file's tests that reach it (recorded by an unmutated run first; see
:mod:`tests.mutation.plugin`), most-killing first, ``-x``: the first failure kills the mutant.
A mutant survives only when all of them pass; one over its CPU limit is a timeout. Results go
to ``.mutants/status.json`` (``--survivors``, ``--resume``, ``--counts``). Mutants listed in
``tests/mutation/equivalent.txt`` (with the reason they cannot change behaviour) are not run.

Exit status 0 when every mutant run was killed (or timed out) and every equivalence entry
still names a mutant; 1 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .mutants import Mutant, lua_mutants, py_mutants
from .results import Store, counts, cpu_minutes, format_counts, key
from .targets import TARGETS, Target

ROOT = Path(__file__).resolve().parents[2]
EQUIVALENT = Path(__file__).with_name("equivalent.txt")
_IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache",
                                 ".pytest_cache", ".hypothesis", "test-artifacts", "results",
                                 ".mutants", "*.sqlite3", "*.db", "node_modules")


def generate(target: Target, root: Path = ROOT) -> list[Mutant]:
    source = (root / target.path).read_text(encoding="utf-8")
    if target.is_lua:
        return lua_mutants(target.path, source)
    return py_mutants(target.path, source, set(target.functions) if target.functions else None)


def read_equivalents(path: Path = EQUIVALENT) -> dict[tuple[str, str], str]:
    """``(file:line:col, mutation) -> why`` from the equivalence list."""
    out: dict[tuple[str, str], str] = {}
    if not path.exists():
        return out
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(" | ", 2)]
        if len(parts) != 3 or not parts[2]:
            raise SystemExit(f"{path}:{n}: expected 'file:line:col | mutation | why'")
        out[(parts[0], parts[1])] = parts[2]
    return out


#: CPU seconds of every pytest child of this run (baselines and mutants)
CPU = [0.0]


@dataclass
class Result:
    mutant: Mutant
    status: str  # killed | survived | timeout
    seconds: float
    killed_by: str = ""


class Zygote:
    """The fork server (:mod:`tests.mutation.zygote`) running in the copy."""

    def __init__(self, copy: Path, modules: list[str]) -> None:
        env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.mutation.zygote", *modules], cwd=copy, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = float(str(self._read(120)["ready"]))
        #: CPU seconds of the children run so far
        self.cpu = 0.0

    def _read(self, timeout: float | None) -> dict[str, object]:
        assert self.proc.stdout is not None
        if timeout is not None:
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            if not ready:
                raise TimeoutError
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fork server exited (see its stderr above)")
        obj: dict[str, object] = json.loads(line)
        return obj

    def run(self, args: list[str], log: Path, timeout: float, env: dict[str, str],
            cpu_limit: int | None = None) -> int | None:
        """The child's exit code, or None when it ran out of time (it is killed): more than
        ``cpu_limit`` CPU seconds, or ``timeout`` seconds of wall time (a safety net: on a
        loaded machine a niced child may wait long for a core)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"args": args, "log": str(log), "env": env,
                                          "cpu_limit": cpu_limit}) + "\n")
        self.proc.stdin.flush()
        pid = int(str(self._read(600)["pid"]))
        try:
            done = self._read(timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # the child and the redis-servers it started
            done = self._read(600)
            self.cpu += float(str(done.get("cpu", 0)))
            return None
        self.cpu += float(str(done.get("cpu", 0)))
        rc = int(str(done["rc"]))
        if cpu_limit and rc in (-signal.SIGXCPU, -signal.SIGKILL):
            return None  # over its CPU limit
        return rc

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def _killed_by(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in lines:
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0][:160]
    return "(a failure outside the tests' own reports, e.g. at session end)"


def _module_of(test: str) -> str:
    return test.split("::")[0].removesuffix(".py").replace("/", ".")


def _reach_key(target: Target) -> str:
    """What a test must have reached to be able to see a mutant of ``target``."""
    if target.path == "lua/lib.lua":
        return "lua:"  # prepended to every script: any script call
    if target.is_lua:
        return "lua:" + Path(target.path).stem
    return target.path


def _reaches(reach: list[str], wanted: str) -> bool:
    return any(r == "*" or r == wanted or (wanted == "lua:" and r.startswith("lua:"))
               for r in reach)


def _in_functions(source: str) -> list[tuple[int, int]]:
    """Character spans of the bodies of every function of a Python source: a mutant outside
    them changes a module-level value that any test may read, so it runs every test."""
    tree = ast.parse(source)
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first, last = node.body[0], node.body[-1]
            assert last.end_lineno is not None
            spans.append((starts[first.lineno - 1], starts[last.end_lineno]))
    return spans


def run_target(target: Target, mutants: list[Mutant], copy: Path, seed: int,
               done: int, total: int, report: list[Result], store: Store,
               only_tests: list[str] | None = None) -> None:
    """Run ``mutants`` of ``target``. ``only_tests`` (a quick check of new tests): those
    instead of the target's; then only kills are recorded (passing a part of the tests is no
    survival)."""
    tests = [t for t in only_tests or target.tests if (copy / t.split("::")[0]).exists()]
    missing = sorted(set(target.tests) - set(tests))
    args = ["-x", "-q", "-p", "no:cacheprovider", "-p", "tests.mutation.plugin",
            "--assert=plain", f"--hypothesis-seed={seed}", *tests]
    rows = " ".join(f"{k}={v}" for k, v in target.rows.items())
    print(f"\n{target.path}: {len(mutants)} mutants; rows {rows}; pytest {' '.join(args)}",
          flush=True)
    if missing:
        print(f"  (not in this tree, left out: {' '.join(missing)})")
    modules = list(target.preimport)
    if target.is_lua:  # the package is not mutated: its tests can be imported once too
        modules += ["tests.conftest", "tests.mutation.plugin",
                    *dict.fromkeys(_module_of(t) for t in tests)]
    zygote = Zygote(copy, modules)
    logs = Path(tempfile.mkdtemp(prefix="bl-mutant-logs-"))
    plan = logs / "plan.json"
    env = {"BL_MUTANTS_PLAN": str(plan)}
    try:
        reach_file = store.reach_path(target.path)
        watch = {} if target.is_lua else {str(copy / target.path): target.path}
        plan.write_text(json.dumps({"record": str(reach_file), "watch": watch,
                                    "rows": target.rows}))
        t0 = time.monotonic()
        rc = zygote.run(args, logs / "baseline.log", 1800, env)
        if rc != 0:  # once more: a timing test may trip while the recording slows it down
            print(f"  unmutated run failed ({_killed_by(logs / 'baseline.log')}); again",
                  flush=True)
            t0 = time.monotonic()
            rc = zygote.run(args, logs / "baseline.log", 1800, env)
        base = time.monotonic() - t0
        CPU[0] += zygote.cpu
        if rc != 0:
            text = (logs / "baseline.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"baseline run of {target.path}'s tests failed (rc {rc}):\n{text}")
        recorded: dict[str, dict[str, Any]] = json.loads(reach_file.read_text())
        wanted = _reach_key(target)
        reaching = [n for n, r in recorded.items() if _reaches(r["reach"], wanted)]
        seconds = {n: float(r["seconds"]) for n, r in recorded.items()}
        cpu_limit = int(max(30.0, 4 * zygote.cpu))
        timeout = max(900.0, 20 * base)
        print(f"  imports {zygote.ready:.1f} s once; unmutated run {base:.1f} s, "
              f"CPU {zygote.cpu:.1f} s "
              f"({len(recorded)} tests, {len(reaching)} reach the file: "
              f"{sum(seconds[n] for n in reaching):.1f} s); limit per mutant {cpu_limit} s of CPU",
              flush=True)
        path = copy / target.path
        original = path.read_text(encoding="utf-8")
        module_level = [] if target.is_lua or target.functions else _in_functions(original)
        kills = store.kills(target.path)
        for i, m in enumerate(mutants, done + 1):
            everything = bool(module_level) and not any(
                a <= m.start < b for a, b in module_level)
            keep = sorted(recorded) if everything else reaching
            ranked = sorted(keep, key=lambda n: (-kills[n], seconds[n]))
            plan.write_text(json.dumps({"keep": keep, "result": str(logs / "result.json"),
                                        "rows": target.rows,
                                        "order": {n: r for r, n in enumerate(ranked)}}))
            (logs / "result.json").unlink(missing_ok=True)
            t0, cpu0 = time.monotonic(), zygote.cpu
            rc = 0
            if keep:
                path.write_text(m.apply(original), encoding="utf-8")
                try:
                    rc = zygote.run(args, logs / "mutant.log", timeout, env, cpu_limit)
                finally:
                    path.write_text(original, encoding="utf-8")
            took = time.monotonic() - t0
            if rc is None:
                res = Result(m, "timeout", took)
            elif rc == 0:
                res = Result(m, "survived", took, "" if keep else "(no test reaches it)")
            elif rc in (4, 5):  # usage error, nothing collected: the selection is broken
                raise SystemExit(f"pytest exit {rc} on {m.id}: see {logs / 'mutant.log'}")
            else:
                res = Result(m, "killed", took, _first_failure(logs))
                kills[res.killed_by] += 1
            report.append(res)
            cpu = zygote.cpu - cpu0
            if res.status == "killed" or not only_tests:
                store.record(m, res.status, took, res.killed_by, cpu)
            mark = {"killed": "killed  ", "survived": "SURVIVED", "timeout": "timeout "}
            CPU[0] += cpu
            print(f"  [{i:4}/{total}] {mark[res.status]} {m.id} {m.mutation} "
                  f"({took:.1f} s, CPU {cpu:.1f} s)"
                  + (f" by {res.killed_by}" if res.status == "killed" else ""), flush=True)
    finally:
        zygote.close()
        shutil.rmtree(logs, ignore_errors=True)


def _first_failure(logs: Path) -> str:
    try:
        first = str(json.loads((logs / "result.json").read_text())["first_failure"])
    except (OSError, ValueError, KeyError):
        first = ""
    return first or _killed_by(logs / "mutant.log")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", metavar="FILE",
                    help=f"mutate only this file (repeatable); files: {', '.join(TARGETS)}")
    ap.add_argument("--at", action="append", metavar="FILE:LINE[:COL]",
                    help="only the mutants at this place (repeatable)")
    ap.add_argument("--survivors", action="store_true",
                    help="only the mutants whose latest result (RESULTS/status.json) is "
                    "survived or timeout")
    ap.add_argument("--tests", nargs="+", metavar="TEST",
                    help="judge by these tests instead of the file's (to see whether new tests "
                    "kill a mutant; a survival is then not recorded)")
    ap.add_argument("--resume", action="store_true",
                    help="only the mutants with no result yet (continue a stopped run)")
    ap.add_argument("--limit", type=int, metavar="N", help="a random sample of N mutants")
    ap.add_argument("--seed", type=int, help="sampling and hypothesis seed (default: 0, or "
                    "a random one with --limit; printed either way)")
    ap.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    ap.add_argument("--counts", action="store_true",
                    help="print the per-file counts of the latest results, run nothing")
    ap.add_argument("--run-equivalents", action="store_true",
                    help="also run the mutants listed as equivalent (to check the list)")
    ap.add_argument("--results", metavar="DIR", default=str(ROOT / ".mutants"),
                    help="where the latest result of every mutant is kept (default: .mutants)")
    ap.add_argument("--report", metavar="PATH", help="also write this run's results as JSON "
                    "lines")
    ap.add_argument("--retry", metavar="PATH",
                    help="run only the mutants that survived or timed out in that report")
    opts = ap.parse_args(argv)
    # a plain kill still stops the fork server and removes the temporary copy
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    unknown = sorted(set(opts.only or ()) - set(TARGETS))
    if unknown:
        ap.error(f"not a mutated file: {', '.join(unknown)}")
    targets = [TARGETS[p] for p in (opts.only or TARGETS)]
    seed = opts.seed if opts.seed is not None else (
        random.SystemRandom().randrange(2**31) if opts.limit else 0)
    store = Store(Path(opts.results).resolve())  # the children run in the copy
    equivalents = read_equivalents()
    by_target = {t.path: generate(t) for t in targets}
    generated = [m for ms in by_target.values() for m in ms]
    keys = {(m.id, m.mutation) for m in generated}
    stale = sorted(k for k in equivalents if k not in keys
                   and k[0].rsplit(":", 2)[0] in by_target)
    equivalent_keys = {f"{a} | {b}" for a, b in equivalents}
    if opts.counts:
        print(format_counts(counts(generated, equivalent_keys, store)))
        print(f"CPU of the latest results: {cpu_minutes(generated, store):.1f} min")
        for loc, mutation in stale:
            print(f"{EQUIVALENT.name}: no such mutant (the code moved?): {loc} | {mutation}")
        return 1 if stale else 0

    chosen = generated
    if opts.at:
        chosen = [m for m in chosen if any(m.id == a or m.id.startswith(a + ":")
                                           for a in opts.at)]
    if opts.survivors:
        chosen = [m for m in chosen if store.latest(m) in ("survived", "timeout")]
    if opts.resume:
        chosen = [m for m in chosen if store.latest(m) == "not run"]
    if opts.retry:
        again = set()
        for line in Path(opts.retry).read_text().splitlines():
            r = json.loads(line)
            if r["status"] != "killed":
                again.add((r["id"], r["mutation"]))
        chosen = [m for m in chosen if (m.id, m.mutation) in again]
    skipped = [] if opts.run_equivalents else [
        m for m in chosen if (m.id, m.mutation) in equivalents]
    chosen = [m for m in chosen if m not in skipped]
    if opts.limit is not None and opts.limit < len(chosen):
        picked = set(random.Random(seed).sample(range(len(chosen)), opts.limit))
        chosen = [m for i, m in enumerate(chosen) if i in picked]

    per_file = Counter(m.path for m in generated)
    print(f"mutation run: seed {seed}; {len(generated)} mutants generated "
          f"({', '.join(f'{p} {n}' for p, n in per_file.items())}); "
          f"{len(skipped)} listed as equivalent (not run); running {len(chosen)}")
    print("reproduce: python -m tests.mutation --seed", seed,
          *(f"--only {p}" for p in opts.only or ()), *(f"--at {a}" for a in opts.at or ()),
          *(("--survivors",) if opts.survivors else ()),
          *(("--resume",) if opts.resume else ()),
          *((f"--limit {opts.limit}",) if opts.limit else ()), flush=True)
    if opts.list:
        for m in chosen:
            print(f"{m.id} | {m.mutation} | {m.operator} | {store.latest(m)}")
        return 0

    report: list[Result] = []
    copy = Path(tempfile.mkdtemp(prefix="bl-mutants-"))
    started = time.monotonic()
    try:
        shutil.copytree(ROOT, copy, ignore=_IGNORE, dirs_exist_ok=True)
        done = 0
        for t in targets:
            ms = [m for m in chosen if m.path == t.path]
            if ms:
                run_target(t, ms, copy, seed, done, len(chosen), report, store, opts.tests)
                done += len(ms)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
        if opts.report:
            with open(opts.report, "w", encoding="utf-8") as f:
                for r in report:
                    m = r.mutant
                    f.write(json.dumps({"id": m.id, "mutation": m.mutation,
                                        "operator": m.operator, "status": r.status,
                                        "seconds": round(r.seconds, 2),
                                        "killed_by": r.killed_by}) + "\n")

    status = Counter(r.status for r in report)
    minutes = (time.monotonic() - started) / 60
    print(f"\n{len(report)} mutants run in {minutes:.1f} min ({CPU[0] / 60:.1f} min of CPU in "
          f"the test processes): {status['killed']} killed, "
          f"{status['timeout']} timeout, {status['survived']} survived; "
          f"{len(skipped)} equivalent (listed, not run)")
    print(f"\nlatest result of every mutant of {'these files' if opts.only else 'the tree'} "
          f"({store.path}):")
    print(format_counts(counts(generated, equivalent_keys, store)))
    survivors = [r for r in report if r.status == "survived"]
    if survivors:
        print("\nsurvivors (add a test that kills each, or list it as equivalent with why):")
        for r in survivors:
            m = r.mutant
            line = (ROOT / m.path).read_text(encoding="utf-8").splitlines()[m.line - 1]
            print(f"  {key(m)} | {m.operator} {r.killed_by}\n      {line.strip()}")
    if stale:
        print(f"\n{EQUIVALENT.name}: entries that name no mutant (the code moved? update them):")
        for loc, mutation in stale:
            print(f"  {loc} | {mutation}")
    return 1 if survivors or stale else 0


if __name__ == "__main__":
    sys.exit(main())
