# Every target works from a fresh clone: the ones that need the virtualenv build it first.
PYTHON ?= python3.11
VENV := .venv
# Touched after a successful install, so pip only runs again when pyproject.toml changes.
INSTALLED := $(VENV)/.installed

.PHONY: install up test lint

install: $(INSTALLED)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Quiet twice: errors still show, the machine index's "location is ignored" warnings do not.
$(INSTALLED): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --quiet --quiet --progress-bar off -e '.[dev]'
	touch $@

up: install
	$(VENV)/bin/embedq up

# The fault tests restart Redis and reset kombu's pools in the test process: they get a process of their own.
test: install
	$(VENV)/bin/pytest -q -m "not faults" $(PYTEST_ARGS)
	$(VENV)/bin/pytest -q -m faults $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
