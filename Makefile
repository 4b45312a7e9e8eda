# `make test` sets up a fresh virtual environment in .venv and runs the test suite.
VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: setup test bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[test]"
	touch $@

test: setup
	$(PYTHON) -m pytest

bench: setup
	$(PYTHON) bench/scoring.py
