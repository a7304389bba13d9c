"""``python -m budgetlimiter.cli``: the console script, for environments without it on PATH."""

from . import run

if __name__ == "__main__":
    run()
