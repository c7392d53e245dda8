"""A tiny trained models stage for the reports tests, built once per session: the models tests'
upstream tables (200 hourly bars of BTC and ETH; fold 0 trains on 150 and tests on 40, fold 1 is
the latest window) and the four experts and the meta-controller of fold 0 trained through the
models assets at a few hundred timesteps.

The latest window's row of `models.meta_controller` points at fold 0's meta-controller: the
reports stage only reads the table, and training the latest window too would double the fixture's
time without testing anything more here."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl
import pytest
import torch

from carry_pipeline.lib.duckdb_io import utc_frame
from tests.pipeline.models.test_model_assets import (
    EXPERTS,
    _materialize,
    _upstream_tables,
    meta_controller,
)


@dataclass(frozen=True)
class Store:
    """A DuckDB file with every upstream table of the reports stage, and the model folders."""

    database: Path
    models: Path
    reports: Path
    champions_store: Path
    """The `models_root` that `champion_model` copies champions into (`<it>/champions/`)."""


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Store:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("trained")
    store = {"database": root / "carry.duckdb", "models": root / "models"}
    _upstream_tables(store["database"], root / "windows")
    result = _materialize(store, [*EXPERTS, meta_controller])
    assert result.success
    with duckdb.connect(str(store["database"])) as con:
        con.execute(
            "insert into models.meta_controller select * replace (1 as fold, true as is_latest) "
            "from models.meta_controller where fold = 0"
        )
    return Store(store["database"], store["models"], root / "reports", root / "champions_store")


@pytest.fixture
def store(trained: Store, tmp_path: Path) -> Store:
    """A private copy of the trained store's DuckDB file (the model folders are shared, read
    only)."""
    database = tmp_path / "carry.duckdb"
    shutil.copy(trained.database, database)
    return Store(database, trained.models, tmp_path / "reports", tmp_path / "models")


def read(store: Store, sql: str) -> pl.DataFrame:
    """A query on the store's DuckDB file, read-only."""
    with duckdb.connect(str(store.database), read_only=True) as con:
        return utc_frame(con.sql(sql).pl())
