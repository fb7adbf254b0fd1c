# Every target works from a fresh clone: the ones that need the virtualenv build it first.
PYTHON ?= python3.11
VENV := .venv
# The lock: exact versions with hashes, compiled from pyproject.toml by pip-tools (docs: development).
LOCK := requirements/dev.txt
# Touched after a successful install, so pip only runs again when the lock changes.
INSTALLED := $(VENV)/.installed
PIP_INSTALL := $(VENV)/bin/python -m pip install --quiet --quiet --progress-bar off

.PHONY: install up test lint lock upgrade

install: $(INSTALLED)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Exactly the lock (--no-deps: nothing resolved at install time), then embedq itself, built with the locked
# setuptools. pip check fails the install if the lock is not a consistent set.
$(INSTALLED): $(LOCK) pyproject.toml | $(VENV)/bin/python
	$(PIP_INSTALL) --require-hashes --no-deps -r $(LOCK)
	$(PIP_INSTALL) --no-deps --no-build-isolation -e .
	$(VENV)/bin/python -m pip check
	touch $@

up: install
	$(VENV)/bin/embedq up

# The fault tests restart Redis and reset kombu's pools in the test process: they get a pytest process of their
# own, run beside the rest (their Postgres and Redis are their own too, and they mostly wait: on kills, outages
# and visibility timeouts); their output comes after the rest's. Exit status 5 (every test deselected, e.g. by a
# PYTEST_ARGS path with no fault test in it) is not a failure.
FAULTS_LOG := .pytest-faults.log
test: install
	@echo "pytest -m faults runs beside the rest; its output follows theirs"; \
	$(VENV)/bin/pytest -q -m faults $(PYTEST_ARGS) >$(FAULTS_LOG) 2>&1 & faults=$$!; \
	$(VENV)/bin/pytest -q -m "not faults" $(PYTEST_ARGS); rest=$$?; \
	wait $$faults; faulted=$$?; \
	echo "---- pytest -m faults"; cat $(FAULTS_LOG); \
	for rc in $$rest $$faulted; do case $$rc in 0|5) ;; *) exit 1 ;; esac; done

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Re-locking: pip-tools in a venv of its own. `make lock` after editing pyproject.toml keeps every pin it can;
# `make upgrade` moves every pin to the newest release pyproject.toml allows, then the suite says whether they work.
LOCK_VENV := .lockenv
PIP_COMPILE := $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --all-build-deps \
	--no-emit-index-url --no-emit-find-links $(LOCK_ARGS)
# The GPU image's torch is PyPI's CUDA build: resolved without this machine's pip configuration (its find-links
# carry the CPU wheel).
PYPI_ONLY := env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null

$(LOCK_VENV)/bin/pip-compile:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --progress-bar off pip-tools==7.7.0

lock: $(LOCK_VENV)/bin/pip-compile
	$(PIP_COMPILE) --extra worker --extra embedded --extra test --extra onnx -o requirements/dev.txt pyproject.toml
	$(PIP_COMPILE) --extra worker --extra flower --extra modelscope -o requirements/image-cpu.txt pyproject.toml
	$(PYPI_ONLY) $(PIP_COMPILE) --extra worker-gpu --extra flower --extra modelscope \
		-o requirements/image-gpu.txt pyproject.toml

upgrade:
	$(MAKE) lock LOCK_ARGS=--upgrade
	$(MAKE) test
