# echoclr: every target creates/uses the project venv .venv and installs what it needs from the
# lock file (requirements.lock: the exact version of every package CI tested; pyproject.toml keeps
# the ranges for people who install echoclr into their own environment).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
LOCK   := requirements.lock
STAMP  := $(VENV)/.installed-stamp
# the extras the lock covers (and `make install` installs)
EXTRAS := dev,explain,cluster
COMPILE = $(VENV)/bin/pip-compile --quiet --allow-unsafe --extra $(EXTRAS) --strip-extras \
	--no-emit-index-url --no-emit-find-links -o $(LOCK) pyproject.toml

.PHONY: install demo test test-all bench lint format clean-demo lock lock-upgrade

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -r $(LOCK)
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
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

# Regenerate the lock from pyproject.toml, keeping every pin that still satisfies it (pip-tools);
# `make lock-upgrade` moves every package to the newest release the ranges allow. Run `make test`
# after either: the lock is what CI and every user of `make` installs.
lock: $(STAMP)
	$(COMPILE)

lock-upgrade: $(STAMP)
	$(COMPILE) --upgrade

lint: $(STAMP)
	$(VENV)/bin/ruff check echoclr_cli tests bench
	$(VENV)/bin/ruff format --check echoclr_cli tests bench

format: $(STAMP)
	$(VENV)/bin/ruff format echoclr_cli tests bench
	$(VENV)/bin/ruff check --fix echoclr_cli tests bench
