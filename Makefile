# carry: the two Quickstart commands are `make run` and `make test`; both install first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck bench clean mutation serve

# torch==2.13.0 is installed on its own first: that pin resolves to the local CPU wheel, and any
# other torch requirement would pull several GB of CUDA packages.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main run on the embedded default (offline): ingest, features, datasets, then the env on their output.
run: install dagster-home
	DAGSTER_HOME=$(DAGSTER_HOME_DIR) $(PY) -m carry_pipeline.main

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check carry_env carry_pipeline tests bench
	$(VENV)/bin/ruff format --check carry_env carry_pipeline tests bench

typecheck: install
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/env_throughput.py

# Curated mutation check (issue 13): plants each bug of tests/mutation/specs/ in a scratch copy
# and runs its tests; fails on any survivor. Not part of `make test` (minutes, not seconds).
mutation: install
	$(PY) -m tests.mutation.run $(if $(ONLY),--only $(ONLY),)

clean:
	rm -rf $(VENV) .pytest_cache

# The inference service: the current champion of models.champion over HTTP (README, "Inference
# service"). The DuckDB file is $CARRY_DUCKDB, else data/carry.duckdb.
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 8000
serve: install
	$(PY) -m carry_pipeline.serve --host $(SERVE_HOST) --port $(SERVE_PORT)

# Dagster: the instance lives in data/dagster_home (dagster.yaml is copied there first).
DAGSTER_HOME_DIR := $(CURDIR)/data/dagster_home
INGEST_DATE ?= $(shell date -u -d yesterday +%Y-%m-%d)
INGEST_ASSETS ?= BTC ETH

.PHONY: dev ingest dagster-home

dagster-home:
	mkdir -p $(DAGSTER_HOME_DIR)
	cp dagster.yaml $(DAGSTER_HOME_DIR)/dagster.yaml

dev: install dagster-home
	DAGSTER_HOME=$(DAGSTER_HOME_DIR) $(VENV)/bin/dagster dev -w workspace.yaml

# One day (INGEST_DATE, default yesterday UTC) of every raw table for each of INGEST_ASSETS.
ingest: install dagster-home
	for a in $(INGEST_ASSETS); do \
	  DAGSTER_HOME=$(DAGSTER_HOME_DIR) $(VENV)/bin/dagster job execute -m carry_pipeline \
	    -j ingest_job --tags "{\"dagster/partition\": \"$$a|$(INGEST_DATE)\"}" || exit 1; \
	done
