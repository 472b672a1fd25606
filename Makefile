# The two commands the README promises. VENV_DIR points at another virtualenv if you have one.
VENV_DIR ?= .venv
PYTHON ?= python3
PY := $(VENV_DIR)/bin/python
SPHEREAR := $(VENV_DIR)/bin/spherear

.PHONY: test lint install installed quickstart

# which checkout the venv's editable install points at, and since when
STAMP := $(VENV_DIR)/.spherear-installed

$(PY):
	$(PYTHON) -m venv $(VENV_DIR)

install: $(PY)
	$(PY) -m pip install -e ".[dev]"
	echo "$(CURDIR)" > $(STAMP)

# The install is editable, so code changes need no reinstall: pip runs again only when
# pyproject.toml changed since, or when the venv (a shared VENV_DIR) points elsewhere.
installed: | $(PY)
	@if [ ! -f $(STAMP) ] || [ pyproject.toml -nt $(STAMP) ] \
		|| [ "$$(cat $(STAMP))" != "$(CURDIR)" ]; then $(MAKE) install; fi

test: installed
	$(PY) -m pytest

lint: installed
	$(VENV_DIR)/bin/ruff check .
	$(VENV_DIR)/bin/ruff format --check .

# The whole pipeline on the embedded synthetic set, at 32x32 on the CPU: the same commands
# the README walks through. Rerunning it reuses or resumes every finished step.
quickstart: installed
	$(SPHEREAR) prepare-data --recipe recipes/tiny.toml --num-proc 2
	$(SPHEREAR) train-vae --recipe recipes/tiny_vae.toml
	$(SPHEREAR) cache-latents --recipe recipes/tiny.toml
	$(SPHEREAR) train-ar --recipe recipes/tiny.toml
	$(SPHEREAR) sample --n 200 --batch-size 200
	$(SPHEREAR) eval-probe
	$(SPHEREAR) eval-fid || echo "eval-fid skipped: it needs the Inception weights (see README)"
	$(SPHEREAR) runs
