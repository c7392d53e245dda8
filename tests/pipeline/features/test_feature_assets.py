"""Tests of carry_pipeline/defs/features and defs/datasets: assets called directly, and a
`dg.materialize` of raw + feature + dataset assets into a temporary DuckDB on the simulated
exchange."""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import polars as pl
import pytest

from carry_pipeline.defs.datasets.assets import (
    normalisation_stats,
    training_windows,
    walk_forward_folds,
)
from carry_pipeline.defs.datasets.checks import (
    folds_ordered_without_overlap,
    train_features_standardised,
    windows_leak_free,
)
from carry_pipeline.defs.features.assets import (
    carry_features,
    market_bars,
    sentiment_scores,
    sentiment_windows,
)
from carry_pipeline.defs.features.checks import (
    every_symbol_on_same_grid,
    no_nan_after_warmup,
    point_in_time_on_sampled_cutoffs,
    sentiment_finite_after_warmup,
)
from carry_pipeline.defs.features.resources import FeatureSettings
from carry_pipeline.defs.ingestion.assets import (
    raw_funding_rates,
    raw_order_book,
    raw_perp_ohlcv,
    raw_spot_ohlcv,
)
from carry_pipeline.defs.ingestion.resources import ExchangeResource
from carry_pipeline.lib.duckdb_io import CarryDuckDBIOManager
from carry_pipeline.lib.features.windows import open_windows

RAW_ASSETS = [raw_spot_ohlcv, raw_perp_ohlcv, raw_funding_rates, raw_order_book]
OUR_ASSETS = [
    market_bars,
    carry_features,
    sentiment_scores,
    sentiment_windows,
    walk_forward_folds,
    normalisation_stats,
    training_windows,
]
OUR_CHECKS = [
    every_symbol_on_same_grid,
    no_nan_after_warmup,
    point_in_time_on_sampled_cutoffs,
    sentiment_finite_after_warmup,
    folds_ordered_without_overlap,
    train_features_standardised,
    windows_leak_free,
]
DAYS = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]


def short_settings(windows_root: Path) -> FeatureSettings:
    """Every window short enough for five days of data (the defaults need about two months)."""
    return FeatureSettings(
        zscore_window="4h",
        funding_zscore_periods=3,
        return_horizons=["1h", "4h"],
        vol_window="4h",
        vol_of_vol_window="8h",
        moments_window="4h",
        microstructure_window="4h",
        correlation_window="4h",
        higher_timeframes=["1h"],
        ema_length=10,
        sentiment_change_window="2h",
        sentiment_zscore_window="6h",
        sentiment_mean_windows=["2h", "6h"],
        sentiment_history="1d",
        n_folds=2,
        train_span="1d",
        test_span="12h",
        embargo="1h",
        lookback=8,
        windows_root=str(windows_root),
        pit_samples=1,
        pit_history="2d",
        pit_future="12h",
    )


def test_market_bars_called_directly(raw: dict[str, pl.DataFrame]) -> None:
    out = market_bars(
        context=dg.build_asset_context(),
        feature_settings=FeatureSettings(),
        raw_spot_ohlcv=raw["spot"],
        raw_perp_ohlcv=raw["perp"],
        raw_funding_rates=raw["funding"],
        raw_order_book=raw["order_book"],
    )
    bars = out.value
    assert bars.height == raw["spot"].height
    assert out.metadata["symbols"].value == "BTC/USDT:USDT, ETH/USDT:USDT"
    result = every_symbol_on_same_grid(market_bars=bars)
    assert result.passed, result.description


def test_bad_input_fails_without_retries(raw: dict[str, pl.DataFrame]) -> None:
    with pytest.raises(dg.Failure, match="has no spot leg") as info:
        market_bars(
            context=dg.build_asset_context(),
            feature_settings=FeatureSettings(),
            raw_spot_ohlcv=raw["spot"].filter(pl.col("symbol") == "BTC/USDT"),
            raw_perp_ohlcv=raw["perp"],
            raw_funding_rates=raw["funding"],
            raw_order_book=raw["order_book"],
        )
    assert info.value.allow_retries is False


def test_features_and_checks_called_directly(raw: dict[str, pl.DataFrame]) -> None:
    settings = FeatureSettings(ema_length=10, pit_history="40d", pit_future="2d", pit_samples=1)
    bars = market_bars(
        context=dg.build_asset_context(),
        feature_settings=settings,
        raw_spot_ohlcv=raw["spot"],
        raw_perp_ohlcv=raw["perp"],
        raw_funding_rates=raw["funding"],
        raw_order_book=raw["order_book"],
    ).value
    features = carry_features(feature_settings=settings, market_bars=bars).value
    assert no_nan_after_warmup(carry_features=features).passed
    windows = sentiment_windows(
        feature_settings=settings, sentiment_scores=raw["sentiment"], market_bars=bars
    ).value
    assert sentiment_finite_after_warmup(sentiment_windows=windows).passed
    pit = point_in_time_on_sampled_cutoffs(
        feature_settings=settings,
        raw_spot_ohlcv=raw["spot"],
        raw_perp_ohlcv=raw["perp"],
        raw_funding_rates=raw["funding"],
        raw_order_book=raw["order_book"],
        sentiment_scores=raw["sentiment"],
    )
    assert pit.passed, pit.description
    # A NaN slipped in after the warm-up fails the check and names the column.
    broken = features.with_columns(
        pl.when(pl.int_range(pl.len()) == features.height - 1)
        .then(float("nan"))
        .otherwise(pl.col("f_rsi_bar"))
        .alias("f_rsi_bar")
    )
    failed = no_nan_after_warmup(carry_features=broken)
    assert not failed.passed and "f_rsi_bar" in (failed.description or "")


def test_exchange_without_sentiment_fails_clearly(tmp_path: Path) -> None:
    bars = pl.DataFrame({"ts": [datetime(2024, 1, 2, tzinfo=UTC)]})
    context = dg.build_asset_context()
    # The replay exchange serves no sentiment index: say so and point at the other sources.
    replay = ExchangeResource(kind="replay", replay_path=str(tmp_path))
    with pytest.raises(dg.Failure, match="serves no sentiment index; set") as info:
        sentiment_scores(
            context=context, feature_settings=FeatureSettings(), exchange=replay, market_bars=bars
        )
    assert info.value.allow_retries is False
    # A misconfigured exchange fails at once too.
    missing = ExchangeResource(kind="replay", replay_path=str(tmp_path / "absent"))
    with pytest.raises(dg.Failure, match="does not exist"):
        sentiment_scores(
            context=context, feature_settings=FeatureSettings(), exchange=missing, market_bars=bars
        )


def test_sentiment_from_a_file_source(tmp_path: Path) -> None:
    path = tmp_path / "fng.csv"
    path.write_text("timestamp,value\n2024-01-01,20\n2024-01-02,80\n")
    settings = FeatureSettings(
        sentiment_source="file",
        sentiment_path=str(path),
        sentiment_score_column="value",
        sentiment_score_range=[0.0, 100.0],
        sentiment_publication_lag="1h",
    )
    bars = pl.DataFrame({"ts": [datetime(2024, 1, 3, tzinfo=UTC)]})
    out = sentiment_scores(
        context=dg.build_asset_context(),
        feature_settings=settings,
        exchange=ExchangeResource(),
        market_bars=bars,
    ).value
    assert out["score"].to_list() == pytest.approx([-0.6, 0.6])
    assert out["published_at"][0] == datetime(2024, 1, 1, 1, tzinfo=UTC)


@pytest.mark.slow
def test_materialize_raw_features_datasets_into_duckdb(tmp_path: Path) -> None:
    database = tmp_path / "carry.duckdb"
    resources = {
        "io_manager": CarryDuckDBIOManager(database=str(database)),
        "exchange": ExchangeResource(),
        "feature_settings": short_settings(tmp_path / "windows"),
    }
    for day in DAYS:
        for base in ("BTC", "ETH"):
            key = dg.MultiPartitionKey({"date": day, "asset": base})
            raw_run = dg.materialize(RAW_ASSETS, resources=resources, partition_key=str(key))
            assert raw_run.success
    result = dg.materialize(
        [*RAW_ASSETS, *OUR_ASSETS, *OUR_CHECKS],
        resources=resources,
        selection=dg.AssetSelection.assets(*OUR_ASSETS),
    )
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert {c.check_name for c in checks} == {c.check_key.name for c in OUR_CHECKS}
    assert all(c.passed for c in checks), [c.description for c in checks if not c.passed]

    with duckdb.connect(str(database), read_only=True) as con:
        per_symbol = con.sql(
            "select symbol, count(*), min(ts), max(ts), count(funding_rate) "
            "from features.market_bars group by symbol order by symbol"
        ).fetchall()
        # Five days of 15-minute bars per symbol on one grid (first close 00:15 on day one);
        # 8-hourly settlements, 3 a day, less the one at 00:00 on day one, before the first close.
        assert [r[0] for r in per_symbol] == ["BTC/USDT:USDT", "ETH/USDT:USDT"]
        assert per_symbol[0][1:] == per_symbol[1][1:]
        assert per_symbol[0][1] == 5 * 96 and per_symbol[0][4] == 3 * 5 - 1
        live = con.sql(
            "select count(*) from features.carry_features where not warmup and "
            "(isnan(f_basis_bps) or f_rsi_bar is null)"
        ).fetchall()
        assert live == [(0,)]
        folds = con.sql(
            "select fold, is_latest, train_end, test_start from datasets.walk_forward_folds "
            "order by fold"
        ).fetchall()
        assert [f[1] for f in folds] == [False, False, True]
        stats = con.sql("select count(distinct fold), count(*) from datasets.normalisation_stats")
        [(n_folds, n_rows)] = stats.fetchall()
        assert n_folds == 3 and n_rows > 3 * 40
        manifest = con.sql("select * from datasets.training_windows order by fold, segment").pl()
    assert manifest.height == 5
    windows, _ = open_windows(manifest.row(0, named=True))
    assert windows.shape[1:] == (8, 2, manifest["n_features"][0])
    assert np.isfinite(windows).all()
