"""The blocking feature and dataset checks fed bad data: a leak, a tampered window, one bad row
among good ones. Each must fail and name what failed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from carry_pipeline.defs.datasets.checks import (
    folds_ordered_without_overlap,
    train_features_standardised,
    windows_leak_free,
)
from carry_pipeline.defs.features.assets import carry_features, market_bars
from carry_pipeline.defs.features.checks import (
    every_symbol_on_same_grid,
    no_nan_after_warmup,
    point_in_time_on_sampled_cutoffs,
    sentiment_finite_after_warmup,
)
from carry_pipeline.defs.features.resources import FeatureSettings
from carry_pipeline.lib.features import carry as carry_module
from carry_pipeline.lib.features.bars import build_market_bars
from carry_pipeline.lib.features.point_in_time import _frame_diff
from carry_pipeline.lib.features.windows import write_training_windows

BAR = timedelta(minutes=15)


def one_bad(frame: pl.DataFrame, column: str, value: object, row: int = -1) -> pl.DataFrame:
    """`frame` with `column` set to `value` in one row only (the last by default)."""
    at = frame.height + row if row < 0 else row
    return frame.with_columns(
        pl.when(pl.int_range(pl.len()) == at)
        .then(pl.lit(value, dtype=frame[column].dtype))
        .otherwise(pl.col(column))
        .alias(column)
    )


@pytest.fixture(scope="module")
def bars(raw: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return build_market_bars(raw["spot"], raw["perp"], raw["funding"], raw["order_book"])


def test_grid_check_fails_on_one_null_price(bars: pl.DataFrame) -> None:
    assert every_symbol_on_same_grid(market_bars=bars).passed
    failed = every_symbol_on_same_grid(market_bars=one_bad(bars, "spot_price", None))
    assert not failed.passed
    assert "spot_price: 1 nulls" in (failed.description or "")


def test_nan_check_fails_on_one_null_and_names_the_column(pipeline_out: dict) -> None:
    features = pipeline_out["carry_features"]
    assert no_nan_after_warmup(carry_features=features).passed
    failed = no_nan_after_warmup(carry_features=one_bad(features, "f_basis_bps", None))
    assert not failed.passed and "f_basis_bps" in (failed.description or "")


def test_nan_check_fails_on_a_symbol_off_the_grid(pipeline_out: dict) -> None:
    features = pipeline_out["carry_features"]
    # One symbol loses a bar after the warm-up: the grids differ.
    eth = features["symbol"].unique().sort()[-1]
    last = features.filter(pl.col("symbol") == eth)["ts"].max()
    broken = features.filter(~((pl.col("symbol") == eth) & (pl.col("ts") == last)))
    failed = no_nan_after_warmup(carry_features=broken)
    assert not failed.passed
    assert "carry_features" in (failed.description or "")


def test_sentiment_check_fails_on_one_nan(pipeline_out: dict) -> None:
    windows = pipeline_out["sentiment_windows"]
    col = next(c for c in windows.columns if c.startswith("f_") and windows[c].dtype.is_float())
    assert sentiment_finite_after_warmup(sentiment_windows=windows).passed
    failed = sentiment_finite_after_warmup(sentiment_windows=one_bad(windows, col, float("nan")))
    assert not failed.passed and col in (failed.description or "")


def test_sampled_point_in_time_check_fails_on_a_leak(
    raw: dict[str, pl.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = carry_module._symbol_features

    def leaky(lf, bar, cfg):  # noqa: ANN001, ANN202
        # The next bar's basis: look-ahead.
        out = real(lf, bar, cfg)
        return out.with_columns(pl.col("f_basis_bps").shift(-1).alias("f_next_basis"))

    monkeypatch.setattr(carry_module, "_symbol_features", leaky)
    settings = FeatureSettings(ema_length=10, pit_history="40d", pit_future="2d", pit_samples=1)
    result = point_in_time_on_sampled_cutoffs(
        feature_settings=settings,
        raw_spot_ohlcv=raw["spot"],
        raw_perp_ohlcv=raw["perp"],
        raw_funding_rates=raw["funding"],
        raw_order_book=raw["order_book"],
        sentiment_scores=raw["sentiment"],
    )
    assert not result.passed
    assert "carry_features.f_next_basis changed" in (result.description or "")


def test_frame_diff_sees_a_new_nan_and_the_cutoff_bar() -> None:
    t = datetime(2024, 1, 2, tzinfo=UTC)
    ts = [t - 2 * BAR, t - BAR, t, t + BAR]
    a = pl.DataFrame({"ts": ts, "f_x": [1.0, 2.0, 3.0, 4.0], "f_y": [1.0, float("nan"), 1.0, 1.0]})
    assert _frame_diff(a, a, t, "f") == []
    # f_x changes at t exactly; f_y turns NaN at t - 2 bars and stops being NaN at t - 1 bar.
    b = a.with_columns(
        pl.Series("f_x", [1.0, 2.0, 3.5, 9.0]), pl.Series("f_y", [float("nan"), 1.0, 1.0, 1.0])
    )
    problems = _frame_diff(a, b, t, "f")
    assert any(p.startswith(f"f.f_x changed at {t}") for p in problems), problems
    assert any(p.startswith(f"f.f_y changed at {t - 2 * BAR} (2 values)") for p in problems)
    # Only the value after t changed: no problem.
    assert _frame_diff(a, a.with_columns(pl.Series("f_x", [1.0, 2.0, 3.0, 9.0])), t, "f") == []


def test_folds_check_fails_without_an_embargo(pipeline_out: dict) -> None:
    folds = pipeline_out["walk_forward_folds"]
    assert folds_ordered_without_overlap(walk_forward_folds=folds).passed
    broken = folds.with_columns(
        pl.when(pl.col("fold") == 1)
        .then(pl.col("test_start") + BAR)
        .otherwise(pl.col("train_end"))
        .alias("train_end")
    )
    failed = folds_ordered_without_overlap(walk_forward_folds=broken)
    assert not failed.passed and "fold 1" in (failed.description or "")


def standardised(out: dict, stats: pl.DataFrame) -> dg.AssetCheckResult:
    return train_features_standardised(
        normalisation_stats=stats,
        carry_features=out["carry_features"],
        sentiment_windows=out["sentiment_windows"],
        walk_forward_folds=out["walk_forward_folds"],
    )


def tamper_stat(stats: pl.DataFrame, column: str, fold: int) -> pl.DataFrame:
    """Shift one live feature's statistic `column` of `fold` by one standard deviation."""
    feature = stats.filter((pl.col("fold") == fold) & ~pl.col("degenerate"))["feature"][0]
    hit = (pl.col("fold") == fold) & (pl.col("feature") == feature)
    return stats.with_columns(
        pl.when(hit).then(pl.col(column) + pl.col("std")).otherwise(pl.col(column)).alias(column)
    )


def test_standardised_check_fails_on_an_off_mean_alone(pipeline_out: dict) -> None:
    stats = pipeline_out["normalisation_stats"]
    assert standardised(pipeline_out, stats).passed
    # Only the mean is off: the std of the normalised train features is still 1.
    failed = standardised(pipeline_out, tamper_stat(stats, "mean", fold=1))
    assert not failed.passed
    assert "fold 1: max |mean|" in (failed.description or "")


def test_standardised_check_fails_on_statistics_that_do_not_recompute(pipeline_out: dict) -> None:
    # The robust median is not used by the standard normalisation: only the recomputation sees it.
    failed = standardised(
        pipeline_out, tamper_stat(pipeline_out["normalisation_stats"], "median", 0)
    )
    assert not failed.passed
    assert failed.description == "fold 0: statistics depend on rows after its train end"


@pytest.fixture(scope="module")
def manifest(pipeline_out: dict, short_config, tmp_path_factory) -> pl.DataFrame:  # noqa: ANN001
    root: Path = tmp_path_factory.mktemp("windows")
    return write_training_windows(
        pipeline_out["features"],
        pipeline_out["normalisation_stats"],
        pipeline_out["walk_forward_folds"],
        root,
        short_config.windows,
        bar=BAR,
    )


def leak_free(out: dict, manifest: pl.DataFrame, **changes: pl.DataFrame) -> dg.AssetCheckResult:
    ins = {
        "training_windows": manifest,
        "carry_features": out["carry_features"],
        "sentiment_windows": out["sentiment_windows"],
        "walk_forward_folds": out["walk_forward_folds"],
        "normalisation_stats": out["normalisation_stats"],
    }
    return windows_leak_free(**{**ins, **changes})


def test_windows_check_fails_on_a_tampered_window(pipeline_out: dict, manifest) -> None:  # noqa: ANN001
    assert leak_free(pipeline_out, manifest).passed
    # The features at the last bar of fold 0's train array are not what the array holds.
    row = manifest.filter((pl.col("fold") == 0) & (pl.col("segment") == "train")).row(0, named=True)
    features = pipeline_out["carry_features"]
    tampered = features.with_columns(
        pl.when(pl.col("ts") == row["last_ts"])
        .then(pl.col("f_basis_bps") + 1.0)
        .otherwise(pl.col("f_basis_bps"))
        .alias("f_basis_bps")
    )
    failed = leak_free(pipeline_out, manifest, carry_features=tampered)
    assert not failed.passed
    assert "fold 0 train: last window differs" in (failed.description or "")


def test_windows_check_fails_on_a_train_array_holding_the_train_end(
    pipeline_out: dict,
    manifest,  # noqa: ANN001
) -> None:
    row = manifest.filter((pl.col("fold") == 0) & (pl.col("segment") == "train")).row(0, named=True)
    folds = pipeline_out["walk_forward_folds"].with_columns(
        pl.when(pl.col("fold") == 0)
        .then(pl.lit(row["last_ts"]))
        .otherwise(pl.col("train_end"))
        .alias("train_end")
    )
    failed = leak_free(pipeline_out, manifest, walk_forward_folds=folds)
    assert not failed.passed
    assert f"fold 0 train: holds {row['last_ts']}, at or after train end" in failed.description


def test_a_failing_grid_check_blocks_the_features(bars: pl.DataFrame) -> None:
    # market_bars stands in for the real asset (same key) with one null price among good rows.
    @dg.asset(key=market_bars.key)
    def bad_market_bars() -> pl.DataFrame:
        return one_bad(bars, "spot_price", None)

    result = dg.materialize(
        [bad_market_bars, every_symbol_on_same_grid, carry_features],
        resources={"feature_settings": FeatureSettings(ema_length=10)},
        raise_on_error=False,
    )
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and "spot_price: 1 nulls" in (check.description or "")
    materialized = {e.asset_key for e in result.get_asset_materialization_events()}
    assert market_bars.key in materialized and carry_features.key not in materialized
