""".ci/system-deps, the one script that installs what the tests need and pip cannot, run with
a PATH of fakes: it never touches the machine (no apt-get, no root needed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "system-deps"
PACKAGES = "redis-server redis-tools chromium tmux openssl prometheus"


def fake_bin(tmp_path: Path, uid: int, tools: tuple[str, ...] = ()) -> Path:
    """A PATH directory holding only a fake ``id``, a fake ``apt-get`` that logs its
    arguments, and fakes of ``tools`` (as if installed)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    scripts = {"id": f"#!/bin/sh\necho {uid}\n",
               "apt-get": f'#!/bin/sh\necho "$@" >> {tmp_path / "apt.log"}\n'}
    scripts.update({tool: "#!/bin/sh\nexit 0\n" for tool in tools})
    for name, text in scripts.items():
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    return bindir


def run(bindir: Path) -> subprocess.CompletedProcess[str]:
    # bash by absolute path: the PATH has no bash (nor any real tool) in it
    return subprocess.run(["/bin/bash", str(SCRIPT)], env={"PATH": str(bindir)},
                          capture_output=True, text=True, timeout=30)


def test_script_is_executable_and_used_by_make_test_and_ci() -> None:
    assert os.access(SCRIPT, os.X_OK)
    makefile = (ROOT / "Makefile").read_text()
    assert "pytest: venv system-deps" in makefile and "\t.ci/system-deps" in makefile
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec make test" in ci and "apt-get" not in ci


def test_not_root_names_every_missing_package_on_one_line_and_exits_2(tmp_path: Path) -> None:
    bindir = fake_bin(tmp_path, uid=1000)
    done = run(bindir)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert f"missing system packages for the tests: {PACKAGES} " in done.stderr
    assert not (tmp_path / "apt.log").exists()  # apt-get never ran


def test_not_root_names_only_what_is_missing(tmp_path: Path) -> None:
    bindir = fake_bin(tmp_path, uid=1000, tools=("redis-server", "redis-cli", "chromium",
                                                  "openssl"))
    done = run(bindir)
    assert done.returncode == 2
    # redis-benchmark comes with redis-tools, as redis-cli does
    assert "missing system packages for the tests: redis-tools tmux prometheus " in done.stderr


def test_nothing_missing_does_nothing(tmp_path: Path) -> None:
    bindir = fake_bin(tmp_path, uid=1000, tools=("redis-server", "redis-cli", "redis-benchmark",
                                                  "chromium", "tmux", "openssl", "prometheus"))
    done = run(bindir)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_root_runs_apt_get_update_once_then_installs_the_missing_packages(
        tmp_path: Path) -> None:
    bindir = fake_bin(tmp_path, uid=0, tools=("openssl",))
    done = run(bindir)
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls == ["update -qq",
                     "install -y -qq redis-server redis-tools chromium tmux prometheus"]
    # the fake apt-get installed nothing: the script says so rather than carrying on
    assert done.returncode == 2
    assert "still missing after apt-get install: redis-server redis-tools chromium tmux " \
        "prometheus" in done.stderr
