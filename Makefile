# carry: the two Quickstart commands are `make run` and `make test`; both install first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck bench clean mutation serve

CORE_STAMP := $(VENV)/.core-stamp
KERNEL_DEPS := numpy numba gymnasium polars

# Two steps. First what the env's numba kernels need (KERNEL_DEPS at pyproject.toml's specifiers),
# so that `make run` can compile them while the rest installs; then torch==2.13.0 on its own (that
# pin resolves to the local CPU wheel, and any other torch requirement would pull several GB of
# CUDA packages), then the project.
$(CORE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $$($(PY) -c 'import re, tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print(" ".join(d for d in deps if re.split("[<>=!~; ]", d)[0] in "$(KERNEL_DEPS)".split()))')
	touch $(CORE_STAMP)

$(STAMP): $(CORE_STAMP) pyproject.toml
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main run on the embedded default (offline): ingest, features, datasets, models, reports, a
# paper session. On a fresh install the kernel warm-up starts in the background as soon as its
# packages are in, and runs while pip installs the rest (carry_env/warmup.py; its log is
# data/warmup.log); the run's own warm-up then waits for it and loads what it compiled.
run: dagster-home $(CORE_STAMP)
	@test -f $(STAMP) || { echo "compiling the env's numba kernels in the background while the rest installs (data/warmup.log)"; nohup $(PY) -m carry_env.warmup > data/warmup.log 2>&1 & }
	@$(MAKE) --no-print-directory install
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
