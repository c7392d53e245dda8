"""Every blocking check of defs/features and defs/datasets fails on bad data and names what failed,
and a failing check stops the assets downstream of it in a `dg.materialize`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

import carry_pipeline.lib.features.carry as carry_module
from carry_pipeline.defs.datasets.checks import (
    folds_ordered_without_overlap,
    train_features_standardised,
    windows_leak_free,
)
from carry_pipeline.defs.features.assets import carry_features
from carry_pipeline.defs.features.checks import (
    every_symbol_on_same_grid,
    no_nan_after_warmup,
    point_in_time_on_sampled_cutoffs,
    sentiment_finite_after_warmup,
)
from carry_pipeline.defs.features.resources import FeatureSettings
from carry_pipeline.lib.features.windows import write_training_windows

ETH = "ETH/USDT:USDT"


def _set_one(frame: pl.DataFrame, row: int, col: str, value: float) -> pl.DataFrame:
    """`frame` with `col` of row `row` replaced by `value` (one bad row among good ones)."""
    return frame.with_columns(
        pl.when(pl.int_range(pl.len()) == row).then(value).otherwise(pl.col(col)).alias(col)
    )


def _drop_eth_row(frame: pl.DataFrame) -> tuple[pl.DataFrame, object]:
    eth = frame.filter(pl.col("symbol") == ETH)
    gone = eth["ts"][eth.height // 2]
    return frame.filter(~((pl.col("symbol") == ETH) & (pl.col("ts") == gone))), gone


def test_grid_check_fails_on_a_missing_bar_and_a_null_price(pipeline_out: dict) -> None:
    bars: pl.DataFrame = pipeline_out["market_bars"]  # type: ignore[assignment]
    assert every_symbol_on_same_grid(market_bars=bars).passed
    holed, _ = _drop_eth_row(bars)
    result = every_symbol_on_same_grid(market_bars=holed)
    assert not result.passed and "ETH" in (result.description or "")
    nulled = bars.with_columns(
        pl.when(pl.int_range(pl.len()) == 100)
        .then(None)
        .otherwise(pl.col("spot_price"))
        .alias("spot_price")
    )
    result = every_symbol_on_same_grid(market_bars=nulled)
    assert not result.passed and result.description == "spot_price: 1 nulls"


def test_nan_check_names_the_column_and_fails_on_a_broken_grid(pipeline_out: dict) -> None:
    features: pl.DataFrame = pipeline_out["carry_features"]  # type: ignore[assignment]
    assert no_nan_after_warmup(carry_features=features).passed
    bad = _set_one(features, features.height - 1, "f_basis_bps", float("inf"))
    result = no_nan_after_warmup(carry_features=bad)
    assert not result.passed and "'f_basis_bps': 1" in (result.description or "")
    holed, _ = _drop_eth_row(features)
    result = no_nan_after_warmup(carry_features=holed)
    assert not result.passed and "ETH" in (result.description or "")


def test_sentiment_check_names_the_column(pipeline_out: dict) -> None:
    windows: pl.DataFrame = pipeline_out["sentiment_windows"]  # type: ignore[assignment]
    assert sentiment_finite_after_warmup(sentiment_windows=windows).passed
    col = next(c for c in windows.columns if c.startswith("f_sent_") and c != "f_sent_stale")
    bad = _set_one(
        windows.with_columns(pl.col(col).cast(pl.Float64)), windows.height - 2, col, np.nan
    )
    result = sentiment_finite_after_warmup(sentiment_windows=bad)
    assert not result.passed and f"'{col}': 1" in (result.description or "")


def test_point_in_time_check_catches_a_leak(
    raw_long: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = FeatureSettings(ema_length=10, pit_history="40d", pit_future="2d", pit_samples=1)
    inputs = {
        "raw_spot_ohlcv": raw_long["spot"],
        "raw_perp_ohlcv": raw_long["perp"],
        "raw_funding_rates": raw_long["funding"],
        "raw_order_book": raw_long["order_book"],
        "sentiment_scores": raw_long["sentiment"],
    }
    real = carry_module._symbol_features

    def leaky(lf, bar, cfg):  # noqa: ANN001, ANN202
        # The next bar's basis, shown now: look-ahead.
        return real(lf, bar, cfg).with_columns(pl.col("f_basis_bps").shift(-1).alias("f_next"))

    monkeypatch.setattr(carry_module, "_symbol_features", leaky)
    result = point_in_time_on_sampled_cutoffs(feature_settings=settings, **inputs)
    assert not result.passed
    assert "carry_features.f_next changed" in (result.description or "")


def test_folds_check_fails_on_overlapping_test_spans(pipeline_out: dict) -> None:
    folds: pl.DataFrame = pipeline_out["walk_forward_folds"]  # type: ignore[assignment]
    assert folds_ordered_without_overlap(walk_forward_folds=folds).passed
    overlapping = folds.with_columns(
        pl.when(pl.col("fold") == 1)
        .then(pl.col("test_start") - timedelta(days=3))
        .otherwise(pl.col("test_start"))
        .alias("test_start")
    )
    result = folds_ordered_without_overlap(walk_forward_folds=overlapping)
    assert not result.passed and "fold 1" in (result.description or "")


def test_standardised_check_fails_on_tampered_stats(pipeline_out: dict) -> None:
    ins = {
        "carry_features": pipeline_out["carry_features"],
        "sentiment_windows": pipeline_out["sentiment_windows"],
        "walk_forward_folds": pipeline_out["walk_forward_folds"],
    }
    stats: pl.DataFrame = pipeline_out["normalisation_stats"]  # type: ignore[assignment]
    assert train_features_standardised(normalisation_stats=stats, **ins).passed
    live = stats.filter((pl.col("fold") == 1) & ~pl.col("degenerate"))["feature"][0]
    # Only the mean of one feature of fold 1 is off: the std of its z-scores is still 1.
    moved = stats.with_columns(
        pl.when((pl.col("fold") == 1) & (pl.col("feature") == live))
        .then(pl.col("mean") + pl.col("std"))
        .otherwise(pl.col("mean"))
        .alias("mean")
    )
    result = train_features_standardised(normalisation_stats=moved, **ins)
    assert not result.passed
    assert (result.description or "").startswith("fold 1: max |mean| 1.00e+00, max |std - 1|")
    # The robust statistics are not used by the z-score, but the recomputation tells them apart.
    robust = stats.with_columns(
        pl.when((pl.col("fold") == 1) & (pl.col("feature") == live))
        .then(pl.col("iqr_std") * 2.0)
        .otherwise(pl.col("iqr_std"))
        .alias("iqr_std")
    )
    result = train_features_standardised(normalisation_stats=robust, **ins)
    assert not result.passed
    assert result.description == "fold 1: statistics depend on rows after its train end"


@pytest.fixture(scope="module")
def manifest(pipeline_out: dict, short_config, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    """The training-window arrays of `pipeline_out` written to a temporary folder."""
    from carry_pipeline.lib.features.pipeline import combine_features

    features = combine_features(pipeline_out["carry_features"], pipeline_out["sentiment_windows"])
    return write_training_windows(
        features,
        pipeline_out["normalisation_stats"],
        pipeline_out["walk_forward_folds"],
        tmp_path_factory.mktemp("windows"),
        short_config.windows,
        bar=timedelta(minutes=15),
    )


def _windows_check(pipeline_out: dict, manifest: pl.DataFrame) -> dg.AssetCheckResult:
    return windows_leak_free(
        training_windows=manifest,
        carry_features=pipeline_out["carry_features"],
        sentiment_windows=pipeline_out["sentiment_windows"],
        walk_forward_folds=pipeline_out["walk_forward_folds"],
        normalisation_stats=pipeline_out["normalisation_stats"],
    )


def test_windows_check_fails_on_a_tampered_window(
    pipeline_out: dict, manifest: pl.DataFrame, tmp_path: Path
) -> None:
    assert _windows_check(pipeline_out, manifest).passed
    row = manifest.filter((pl.col("fold") == 0) & (pl.col("segment") == "test"))
    values = np.load(row["values_path"][0])
    values[-1, 0, 0] += 0.5  # one value of the last window
    tampered = tmp_path / "values.npy"
    np.save(tampered, values)
    bad = manifest.with_columns(
        pl.when((pl.col("fold") == 0) & (pl.col("segment") == "test"))
        .then(pl.lit(str(tampered)))
        .otherwise(pl.col("values_path"))
        .alias("values_path")
    )
    result = _windows_check(pipeline_out, bad)
    assert not result.passed
    assert result.description == "fold 0 test: last window differs from the normalised features"


def test_windows_check_fails_on_a_train_array_past_its_train_end(
    pipeline_out: dict, manifest: pl.DataFrame
) -> None:
    folds: pl.DataFrame = pipeline_out["walk_forward_folds"]  # type: ignore[assignment]
    train_end = folds.filter(pl.col("fold") == 0)["train_end"][0]
    bad = manifest.with_columns(
        pl.when((pl.col("fold") == 0) & (pl.col("segment") == "train"))
        .then(pl.lit(train_end).cast(manifest["last_ts"].dtype))
        .otherwise(pl.col("last_ts"))
        .alias("last_ts")
    )
    result = _windows_check(pipeline_out, bad)
    assert not result.passed
    assert "fold 0 train: holds" in (result.description or "")
    assert "at or after train end" in (result.description or "")


def test_a_failing_blocking_check_stops_downstream_assets(pipeline_out: dict) -> None:
    holed, _ = _drop_eth_row(pipeline_out["market_bars"])  # type: ignore[arg-type]

    @dg.asset(key=dg.AssetKey(["features", "market_bars"]))
    def market_bars() -> pl.DataFrame:
        return holed

    result = dg.materialize(
        [market_bars, carry_features, every_symbol_on_same_grid],
        resources={"feature_settings": FeatureSettings()},
        raise_on_error=False,
    )
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "every_symbol_on_same_grid" and not check.passed
    assert "ETH" in (check.description or "")
    done = {e.asset_key for e in result.get_asset_materialization_events()}
    assert done == {dg.AssetKey(["features", "market_bars"])}
