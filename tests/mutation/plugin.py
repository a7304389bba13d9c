"""pytest plugin of the mutation runner (``-p tests.mutation.plugin``), driven by one JSON file
named in ``BL_MUTANTS_PLAN``:

- ``"rows": {fixture: param}``: only the tests whose parametrized fixtures take these
  values (e.g. ``backend_url: redis``, ``client_kind: sync``); tests without them run as
  they are.
- ``{"record": path, "watch": {...}}`` (the unmutated baseline run of a target): writes to
  ``path``, per test, how long it took and what it *reached*: the Lua scripts it ran (every
  script call goes through :class:`budgetlimiter.engine.scripts.Registry`) and which of the
  ``watch``-ed Python files (``{absolute path: name}``) had code called, in any thread; ``"*"``
  when the test started a process other than redis-server (what a child does is not seen, so
  such a test counts as reaching everything).
- ``{"keep": [nodeid, ...] | null, "order": {nodeid: rank}}`` (a mutant's run): deselects the
  tests not in ``keep`` (those that cannot reach the mutated file) and runs the rest by
  ``rank`` (the tests that killed most mutants of this file first, then the fast ones), so
  that ``-x`` stops a killed mutant early. ``"result": path`` gets the first failing test.

Nothing here changes what a test does; it only chooses which tests run, in which order, and
watches.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

_plan: dict[str, Any] = {}
_current: list[str] = [""]
_reach: dict[str, set[str]] = defaultdict(set)
_seconds: dict[str, float] = defaultdict(float)
_first_failure: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get("BL_MUTANTS_PLAN")
    if not path:
        return
    _plan.update(json.loads(Path(path).read_text(encoding="utf-8")))
    if "record" in _plan:
        _start_recording(_plan.get("watch", {}))


def _start_recording(watch: dict[str, str]) -> None:
    import subprocess
    from multiprocessing.process import BaseProcess

    from budgetlimiter.engine.scripts import Registry

    get = Registry.__getitem__

    def recording_get(self: Registry, name: str) -> Any:
        _reach[_current[0]].add(f"lua:{name}")
        return get(self, name)

    Registry.__getitem__ = recording_get  # type: ignore[method-assign]

    popen_init = subprocess.Popen.__init__

    def recording_popen(self: Any, args: Any, *a: Any, **kw: Any) -> None:
        argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        program = os.path.basename(os.fsdecode(argv[0]).split()[0]) if argv else ""
        if not program.startswith("redis-"):  # redis-server, redis-cli: no library code
            _reach[_current[0]].add("*")
        popen_init(self, args, *a, **kw)

    subprocess.Popen.__init__ = recording_popen  # type: ignore[method-assign]
    start = BaseProcess.start

    def recording_start(self: BaseProcess) -> None:
        _reach[_current[0]].add("*")
        start(self)

    BaseProcess.start = recording_start  # type: ignore[method-assign]

    if watch:
        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "call":
                name = watch.get(frame.f_code.co_filename)
                if name is not None:
                    _reach[_current[0]].add(name)

        sys.setprofile(profile)
        threading.setprofile(profile)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Any:
    _current[0] = item.nodeid
    yield


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _seconds[report.nodeid] += report.duration
    if report.failed and not _first_failure:
        _first_failure.append(report.nodeid)


def _in_rows(item: pytest.Item, rows: dict[str, str]) -> bool:
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    return all(params.get(name, value) == value for name, value in rows.items())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rows: dict[str, str] = _plan.get("rows", {})
    keep = _plan.get("keep")
    wanted = set(keep) if keep is not None else None
    chosen = [i for i in items if _in_rows(i, rows) and (wanted is None or i.nodeid in wanted)]
    if len(chosen) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in chosen])
        items[:] = chosen
    order: dict[str, float] = _plan.get("order", {})
    last = float(len(order))
    items.sort(key=lambda i: order.get(i.nodeid, last))  # stable: unknown ones keep theirs


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _plan:
        return
    sys.setprofile(None)
    threading.setprofile(None)
    if "record" in _plan:
        tests = {n: {"seconds": round(s, 3), "reach": sorted(_reach.get(n, ()))}
                 for n, s in _seconds.items()}
        Path(_plan["record"]).write_text(json.dumps(tests), encoding="utf-8")
    if "result" in _plan:
        Path(_plan["result"]).write_text(json.dumps({
            "first_failure": _first_failure[0] if _first_failure else "",
            "ran": len(_seconds)}), encoding="utf-8")
