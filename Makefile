# Two entry points (README): `make demo` runs the main job, `make test` runs the tests.
# Each installs what it needs into .venv first, once per pyproject.toml change.
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo test install

$(INSTALLED): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the CPU wheel; the project's range is satisfied by it afterwards
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(INSTALLED)

demo: $(INSTALLED)
	$(VENV)/bin/statelm demo

test: $(INSTALLED)
	$(VENV)/bin/ruff check pipeline tests benchmarks
	$(PY) -m pytest -q
