# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export PLEDGEWATCH_DATABASE_URL ?= sqlite:///./pledgewatch.db

.PHONY: run test lint typecheck pytest install install-dev lock clean bench bench-quick bench-tools \
	test-long faults

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev: requirements-dev.lock $(VENV)/.runtime
	$(BIN)/pip install --quiet -r requirements-dev.lock
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

## run: migrate, seed, print an admin key, serve on http://127.0.0.1:8000 (SQLite)
run: install
	$(BIN)/pledgewatch demo

## test: lint, type-check and the whole suite (SQLite and PostgreSQL)
test: install-dev lint typecheck pytest

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy app tests bench

pytest:
	$(BIN)/pytest -n 2 --dist loadgroup

## test-long: the long tier `make test` leaves out (twenty minutes or so on two cores): 10,000
## Schemathesis cases with every check on each database
test-long: install-dev
	PLEDGEWATCH_LONG_TESTS=1 $(BIN)/pytest -n 2 --dist loadgroup tests/e2e/test_schemathesis.py

## faults: overload and faults, measured at full size (docs/RELIABILITY.md; 20,000 items through
## three SIGKILLs, PostgreSQL restarted under load, ten times the sustainable rate)
faults: install
	$(BIN)/python -m bench.faults

## bench: the benchmark of docs/PERFORMANCE.md at full size (1M evidence items; about 20
## minutes the first time, half of it making the data, which is kept for later runs)
bench: install bench-tools
	$(BIN)/python -m bench full

## bench-quick: the same on a tenth of the data, in under two minutes (CI's smoke check)
bench-quick: install bench-tools
	$(BIN)/python -m bench quick

BENCH_VENV := .venv-bench

# The load driver (Debian's wrk) and the peer (Datasette, in its own venv: its pins never
# meet the app's).
bench-tools: $(BENCH_VENV)/.installed
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }

$(BENCH_VENV)/.installed: bench/requirements-datasette.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet -r bench/requirements-datasette.txt
	touch $@

## lock: re-pin every dependency (run after changing pyproject.toml)
lock:
	rm -rf /tmp/pledgewatch-lock && $(PYTHON) -m venv /tmp/pledgewatch-lock
	/tmp/pledgewatch-lock/bin/pip install --quiet .
	/tmp/pledgewatch-lock/bin/pip freeze --exclude pledgewatch > requirements.lock
	/tmp/pledgewatch-lock/bin/pip install --quiet ".[dev]"
	/tmp/pledgewatch-lock/bin/pip freeze --exclude pledgewatch > requirements-dev.lock

clean:
	rm -rf $(VENV) pledgewatch.db pledgewatch.db-wal pledgewatch.db-shm
