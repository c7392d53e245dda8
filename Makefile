# carry: the two Quickstart commands are `make run` and `make test`; both install first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck bench clean

# torch==2.13.0 is installed on its own first: that pin resolves to the local CPU wheel, and any
# other torch requirement would pull several GB of CUDA packages.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m carry_env.demo

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check carry_env carry_pipeline tests bench
	$(VENV)/bin/ruff format --check carry_env carry_pipeline tests bench

typecheck: install
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/env_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache
