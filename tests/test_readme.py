"""The README's examples run as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_ten_line_example_runs_as_written():
    block = python_blocks()[0]
    assert len([line for line in block.splitlines() if line.strip()]) <= 14
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    assert out.getvalue().strip() == "spent 0.006120 USD"


def test_readme_names_the_two_fresh_machine_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci


def test_leases_example_runs_as_written():
    blocks = python_blocks()
    leases = next(b for b in blocks if "LeaseConfig" in b)
    scope: dict[str, object] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(blocks[0], "README.md", "exec"), scope)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(leases, "README.md", "exec"), scope)
    assert out.getvalue().split() == ["True", "6120"]
