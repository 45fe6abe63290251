# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export PLEDGEWATCH_DATABASE_URL ?= sqlite:///./pledgewatch.db

.PHONY: run test lint typecheck pytest install install-dev lock clean

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
	$(BIN)/mypy app tests

pytest:
	$(BIN)/pytest -n 2 --dist loadgroup

## lock: re-pin every dependency (run after changing pyproject.toml)
lock:
	rm -rf /tmp/pledgewatch-lock && $(PYTHON) -m venv /tmp/pledgewatch-lock
	/tmp/pledgewatch-lock/bin/pip install --quiet .
	/tmp/pledgewatch-lock/bin/pip freeze --exclude pledgewatch > requirements.lock
	/tmp/pledgewatch-lock/bin/pip install --quiet ".[dev]"
	/tmp/pledgewatch-lock/bin/pip freeze --exclude pledgewatch > requirements-dev.lock

clean:
	rm -rf $(VENV) pledgewatch.db pledgewatch.db-wal pledgewatch.db-shm
