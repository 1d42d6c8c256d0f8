# echoclr: every target creates/uses the project venv .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-all bench lint format clean-demo

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,explain,cluster]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/echoclr demo

test: $(STAMP)
	$(PY) -m pytest

test-all: $(STAMP)
	$(PY) -m pytest -m "slow or not slow"

bench: $(STAMP)
	bash bench/run_all.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check echoclr_cli tests bench
	$(VENV)/bin/ruff format --check echoclr_cli tests bench

format: $(STAMP)
	$(VENV)/bin/ruff format echoclr_cli tests bench
	$(VENV)/bin/ruff check --fix echoclr_cli tests bench
