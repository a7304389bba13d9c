"""Fork server for the mutation runner: imports the slow modules once, then runs each pytest
selection in a forked child (about 2.5 s of interpreter and import start-up saved per mutant).

Started by the runner inside the temporary copy of the tree (``python -m
tests.mutation.zygote MODULE...``). Protocol, one JSON object per line: the server says
``{"ready": seconds}``; the runner sends ``{"args": [...], "log": path, "env": {...},
"cpu_limit": s}`` (``env``: set in the child; ``cpu_limit``: CPU seconds before the child is
killed); the server answers ``{"pid": n}`` (the child leads its own process group, so the
runner can kill it and the redis-servers it started) and then ``{"rc": code, "cpu": seconds}``
(negative: killed by that signal; the CPU time of the child and its waited-for children).

Children write no bytecode (a mutated module must never be read back from a stale ``.pyc``),
run with ``--assert=plain`` (the test modules may be imported before pytest could rewrite
them) and a hypothesis profile without example database and without shrinking.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time


def main(modules: list[str]) -> int:
    sys.dont_write_bytecode = True
    t0 = time.monotonic()
    from hypothesis import Phase, settings

    # no example database (a mutant never replays another's examples) and no shrinking: a
    # mutant needs a failing example, not the smallest one (shrinking took minutes of CPU).
    # Loaded before the test modules: their @settings inherit from the profile in force.
    settings.register_profile("mutants", database=None,
                              phases=[Phase.explicit, Phase.reuse, Phase.generate])
    settings.load_profile("mutants")
    for name in modules:
        importlib.import_module(name)
    _send({"ready": round(time.monotonic() - t0, 2)})
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.environ.update(req.get("env", {}))
            _child(req["args"], req["log"], req.get("cpu_limit"))
        _send({"pid": pid})
        _, status, usage = os.wait4(pid, 0)
        # CPU of the child and of what it waited for (its redis-servers): the cost of a mutant
        # whatever else the machine is doing
        _send({"rc": os.waitstatus_to_exitcode(status),
               "cpu": round(usage.ru_utime + usage.ru_stime, 3)})
    return 0


def _child(args: list[str], log: str, cpu_limit: int | None) -> None:
    code = 3
    try:
        os.setsid()
        if cpu_limit:  # a time limit that a loaded machine cannot trip: CPU seconds
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit, cpu_limit + 5))
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        import pytest

        code = int(pytest.main(args))
    except BaseException:  # said in the log, then the exit code 3
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _send(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
