# The two commands the README promises. VENV_DIR points at another virtualenv if you have one.
VENV_DIR ?= .venv
PYTHON ?= python3
PY := $(VENV_DIR)/bin/python

.PHONY: test lint install

$(PY):
	$(PYTHON) -m venv $(VENV_DIR)

install: $(PY)
	$(PY) -m pip install -e ".[dev]"

test: install
	$(PY) -m pytest

lint: install
	$(VENV_DIR)/bin/ruff check .
	$(VENV_DIR)/bin/ruff format --check .
