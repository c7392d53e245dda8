"""`dg.materialize` of the models stage on a constructed 1 h market (fold 0 and the latest window)
stored in a temporary DuckDB as the features and datasets stages would store it: the experts and
the meta-controller for one fold, the registry rows and saved files, history kept across
retrains, and a bad config failing the run naming the expert with nothing overwritten."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import polars as pl
import pytest
import torch
from dagster_duckdb import DuckDBResource

from carry_pipeline.defs.models.assets import (
    UPSTREAM,
    anomaly_expert,
    long_term_expert,
    meta_controller,
    sentiment_expert,
    short_term_expert,
)
from carry_pipeline.defs.models.resources import ModelSettings
from carry_pipeline.lib.duckdb_io import CarryDuckDBIOManager, utc_frame
from carry_pipeline.lib.features.folds import FOLD_SCHEMA
from carry_pipeline.lib.features.normalisation import compute_normalisation_stats
from carry_pipeline.lib.features.pipeline import combine_features
from carry_pipeline.lib.features.windows import TrainingWindowsConfig, write_training_windows
from carry_pipeline.lib.training.registry import REGISTRY_SCHEMA, fold_inputs, market_data
from carry_pipeline.lib.training.train import data_sha256
from tests.pipeline.training.conftest import carry_frame

T0 = datetime(2024, 1, 1, tzinfo=UTC)
BAR = timedelta(hours=1)
EXPERTS = [anomaly_expert, short_term_expert, long_term_expert, sentiment_expert]
TINY = json.dumps(
    {
        "n_envs": 4,
        "n_steps": 32,
        "batch_size": 64,
        "n_epochs": 1,
        "episode_length": 64,
        "progress_every": 64,
    }
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _upstream_tables(database: Path, windows_root: Path) -> None:
    """features.* and datasets.* tables of 200 hourly bars: fold 0 (150 train bars, 40 test) and
    the latest window (every bar)."""
    frame = carry_frame(200, ("BTC", "ETH"), funding_bp=5.0)
    bars = frame.select(
        "ts",
        "symbol",
        "spot_price",
        "perp_price",
        "funding_rate",
        "spot_depth_usd",
        "perp_depth_usd",
        "spread_bps",
    )
    carry = frame.select("ts", "symbol", pl.lit(False).alias("warmup"), pl.col("^f_.*$"))
    ts = frame["ts"].unique().sort()
    rng = np.random.default_rng(3)
    sentiment = pl.DataFrame(
        {"ts": ts, "sentiment": rng.uniform(-1, 1, ts.len()), "warmup": False}
    ).with_columns(pl.col("sentiment").alias("f_sent_level"))
    folds = pl.DataFrame(
        [
            {
                "fold": 0,
                "is_latest": False,
                "scheme": "anchored",
                "train_start": T0,
                "train_end": T0 + 150 * BAR,
                "test_start": T0 + 151 * BAR,
                "test_end": T0 + 191 * BAR,
                "embargo_hours": 1.0,
            },
            {
                "fold": 1,
                "is_latest": True,
                "scheme": "anchored",
                "train_start": T0,
                "train_end": T0 + 200 * BAR,
                "test_start": None,
                "test_end": None,
                "embargo_hours": 1.0,
            },
        ],
        schema=FOLD_SCHEMA,
    )
    features = combine_features(carry, sentiment)
    stats = compute_normalisation_stats(features, folds)
    manifest = write_training_windows(
        features, stats, folds, windows_root, TrainingWindowsConfig(lookback=8), bar=BAR
    )
    tables = {
        "features.market_bars": bars,
        "features.carry_features": carry,
        "features.sentiment_windows": sentiment,
        "datasets.walk_forward_folds": folds,
        "datasets.normalisation_stats": stats,
        "datasets.training_windows": manifest,
    }
    with duckdb.connect(str(database)) as con:
        for name, table in tables.items():
            con.execute(f"create schema if not exists {name.split('.')[0]}")
            con.register("t", table.to_arrow())
            con.execute(f"create table {name} as select * from t")
            con.unregister("t")


@pytest.fixture
def store(tmp_path: Path) -> dict:
    database = tmp_path / "carry.duckdb"
    _upstream_tables(database, tmp_path / "windows")
    return {"database": database, "models": tmp_path / "models"}


def _materialize(store: dict, assets: list, **settings) -> dg.ExecuteInProcessResult:
    defaults = {"timesteps": 128, "folds": [0], "models_root": str(store["models"])}
    defaults.update({n: TINY for n in ("anomaly", "short_term", "long_term", "sentiment", "meta")})
    return dg.materialize(
        [*(dg.AssetSpec(key) for key in UPSTREAM.values()), *EXPERTS, meta_controller],
        selection=dg.AssetSelection.assets(*assets),
        resources={
            "io_manager": CarryDuckDBIOManager(database=str(store["database"])),
            "duckdb": DuckDBResource(database=str(store["database"])),
            "model_settings": ModelSettings(**{**defaults, **settings}),
        },
        raise_on_error=False,
    )


def _registry(store: dict) -> pl.DataFrame:
    with duckdb.connect(str(store["database"]), read_only=True) as con:
        return utc_frame(con.sql("select * from models.registry order by trained_at").pl())


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_experts_and_meta_for_one_fold_then_a_bad_config_changes_nothing(store: dict) -> None:
    result = _materialize(store, [*EXPERTS, meta_controller])
    assert result.success
    registry = _registry(store)
    assert set(REGISTRY_SCHEMA) <= set(registry.columns)
    assert sorted(registry["expert"].to_list()) == [
        "anomaly",
        "long_term",
        "meta",
        "sentiment",
        "short_term",
    ]
    assert registry["fold"].to_list() == [0] * 5 and not registry["is_latest"].any()
    assert (registry["timesteps"] == 128).all() and (registry["seed"] == 0).all()
    assert (registry["threads"] == 1).all() and registry["run_id"].n_unique() == 1
    assert (registry["train_start"] == T0).all() and (registry["train_end"] == T0 + 150 * BAR).all()
    # The data hash is that of the fold's train windows and train-span market.
    with duckdb.connect(str(store["database"]), read_only=True) as con:
        tables = {
            t: utc_frame(con.sql(f"select * from {t}").pl())
            for t in (
                "features.market_bars",
                "features.carry_features",
                "features.sentiment_windows",
                "datasets.walk_forward_folds",
                "datasets.training_windows",
            )
        }
        own = con.sql("select * from models.short_term_expert").pl()
    market = market_data(
        tables["features.market_bars"],
        tables["features.carry_features"],
        tables["features.sentiment_windows"],
    )
    [fold0] = fold_inputs(
        market, tables["datasets.walk_forward_folds"], tables["datasets.training_windows"], [0]
    )
    assert set(registry["data_sha256"]) == {data_sha256(fold0.windows, fold0.market)}
    assert own.height == 1 and own["model_path"][0] == str(store["models"] / "short_term" / "fold0")
    meta_row = registry.filter(pl.col("expert") == "meta").row(0, named=True)
    assert json.loads(meta_row["spec"])["experts"]["long_term"] == str(
        store["models"] / "long_term" / "fold0"
    )
    for name in ("anomaly", "short_term", "long_term", "sentiment", "meta"):
        assert (store["models"] / name / "fold0" / "model.zip").exists()
    assert not (store["models"] / "short_term" / "fold1").exists()  # only fold 0 selected
    mat = result.asset_materializations_for_node("models__meta_controller")[0]
    assert isinstance(mat.metadata["fold0_val_net_carry"].value, float)
    assert mat.metadata["timesteps"].value == 128

    # An unknown algorithm fails the run at once, naming the expert; nothing is overwritten.
    before = _files(store["models"])
    failed = _materialize(store, [short_term_expert], short_term='{"algorithm": "A2C"}')
    assert not failed.success
    [failure] = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    message = str(failure.event_specific_data.error)
    assert "short_term: expert 'short_term': algorithm 'A2C' is not one of" in message
    assert _registry(store).equals(registry)
    assert _files(store["models"]) == before

    # A retrain with another seed appends to the history and replaces the saved model.
    again = _materialize(store, [short_term_expert], seed=1)
    assert again.success
    history = _registry(store)
    assert history.height == 6 and history.head(5).equals(registry)
    assert history.filter(pl.col("expert") == "short_term")["seed"].to_list() == [0, 1]
