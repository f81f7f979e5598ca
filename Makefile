# Two commands from a fresh machine: `make demo` and `make test`. Each makes .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck docs pytest pytest-pure stress stress-ci soak bench bench-instructions clean

# The C fast paths are compiled at install: a changed source installs again.
$(STAMP): pyproject.toml hatch_build.py src/forkwait/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/quickstart.py

test: lint typecheck docs pytest pytest-pure stress-ci

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples docs hatch_build.py
	$(BIN)/ruff format --check src tests bench examples docs hatch_build.py

typecheck: $(STAMP)
	$(BIN)/mypy src tests/typing
	$(BIN)/pyright

# The docs site, from scratch each time so that no warning hides in a cache.
docs: $(STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

pytest: $(STAMP)
	$(BIN)/pytest -q

# The core tests again without the C fast paths (src/forkwait/_speedups.c): the Python
# code they hand the rest to, and all of forkwait where no compiler was found at install.
PURE_TESTS := tests/test_future.py tests/test_wait.py tests/test_cancel.py \
	tests/test_callables.py tests/test_exceptions.py tests/test_context.py \
	tests/test_hosts.py tests/test_scope.py tests/test_speedups.py

pytest-pure: $(STAMP)
	FORKWAIT_PURE_PYTHON=1 $(BIN)/pytest -q $(PURE_TESTS)

# The concurrency tests, again and again, in file order: `make stress` repeats them 20
# times, `make test` twice. `make soak` runs a million fork/wait cycles and prints the
# memory and thread curve (minutes; not part of `make test`).
STRESS_COUNT ?= 20
STRESS_TESTS := tests/test_races.py tests/test_cancel.py tests/test_nesting.py \
	tests/test_reliability.py tests/test_offload.py
STRESS_SKIP := not thousand_pending and not fifty_thousand_cycles and not guard

stress: $(STAMP)
	$(BIN)/pytest -q -p no:randomly --count=$(STRESS_COUNT) -k "$(STRESS_SKIP)" $(STRESS_TESTS)

# In `make test`: twice, without the process pool's tests (seconds each: processes).
stress-ci: $(STAMP)
	$(MAKE) --no-print-directory stress STRESS_COUNT=2 \
		STRESS_TESTS="$(filter-out tests/test_offload.py,$(STRESS_TESTS))"

soak: $(STAMP)
	$(BIN)/python -m bench.soak --cycles 1000000

bench: $(STAMP)
	$(BIN)/python -m bench

# The hot paths in counted instructions (valgrind): repeatable on a noisy machine.
bench-instructions: $(STAMP)
	$(BIN)/python -m bench.instructions

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache docs/_build src/forkwait/_speedups.*.so
