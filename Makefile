# Fresh machine: `make demo` runs the demo, `make test` runs lint, types and the test suite.
# Each target creates the virtual environment it needs (.venv) on first use; `make pytest`
# (so `make test`) first installs the system packages the tests need (.ci/system-deps:
# apt-get as root, else it names what is missing and stops).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: venv demo test lint typecheck pytest system-deps bench clean

$(BIN)/budgetlimiter: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/budgetlimiter

demo: venv
	$(BIN)/budgetlimiter demo

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

system-deps:
	.ci/system-deps

pytest: venv system-deps
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: venv
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks

mutants: venv  # mutation testing of the rules (about an hour of one core; README "Development")
	$(BIN)/python -m tests.mutation $(MUTANTS_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
