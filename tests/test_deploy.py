"""The deployment files agree with the package: the image installs extras that exist.

(The image itself is not built here: the CI machines have no Docker engine.)"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def pip_installs(dockerfile: str) -> list[str]:
    """The arguments of every ``pip install`` in a Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", dockerfile)
    out = []
    for line in text.splitlines():
        if not line.lstrip().upper().startswith("RUN"):
            continue
        for command in re.split(r"&&|;", line):
            m = re.search(r"\bpip3? install\b(.*)", command)
            if m:
                out.append(m.group(1))
    return out


def extras_of_this_package(args: str) -> list[set[str]]:
    """The extras requested for budgetlimiter (by name or as its wheel) in pip arguments."""
    found = []
    for m in re.finditer(r"(budgetlimiter[^\s\"'\[]*)\[([^\]]*)\]", args):
        found.append({e.strip() for e in m.group(2).split(",") if e.strip()})
    return found


def test_the_image_installs_extras_that_exist():
    optional = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"])
    installs = pip_installs((ROOT / "deploy" / "Dockerfile").read_text())
    requested = [e for args in installs for e in extras_of_this_package(args)]
    assert requested, f"no budgetlimiter[...] install found in {installs}"
    for extras in requested:
        assert extras <= optional, f"extras {sorted(extras - optional)} are not in pyproject"
    # the sidecar's entry point needs the server extra
    assert any("server" in extras for extras in requested)


def test_the_parser_sees_a_missing_extra():
    dockerfile = ('RUN pip install --no-cache-dir build\n'
                  'RUN pip install "$(ls /tmp/budgetlimiter-*.whl)[sql,postgres]" \\\n'
                  '        "uvicorn[standard]>=0.30" \\\n    && rm /tmp/*.whl\n')
    (args,) = [a for a in pip_installs(dockerfile) if "budgetlimiter" in a]
    assert extras_of_this_package(args) == [{"sql", "postgres"}]
