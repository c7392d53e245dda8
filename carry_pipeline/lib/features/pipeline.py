"""The whole feature and dataset chain as one function, from raw tables to fold tensors.

The Dagster assets run these steps one asset at a time; `run_feature_pipeline` runs them in one call
for the point-in-time check, the benchmark and the tests, so that all three exercise exactly the
asset code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
import polars as pl

from carry_pipeline.lib.features.bars import MarketBarsConfig, build_market_bars
from carry_pipeline.lib.features.carry import CarryFeaturesConfig, build_carry_features
from carry_pipeline.lib.features.folds import WalkForwardConfig, make_walk_forward_folds
from carry_pipeline.lib.features.normalisation import compute_normalisation_stats
from carry_pipeline.lib.features.sentiment import SentimentWindowsConfig, build_sentiment_windows
from carry_pipeline.lib.features.timeframes import parse_duration, ts_bounds
from carry_pipeline.lib.features.windows import TrainingWindowsConfig, fold_tensor

RAW_TABLES = ("spot", "perp", "funding", "order_book", "sentiment")
"""Keys of the raw-table dict: `raw_spot_ohlcv`, `raw_perp_ohlcv`, `raw_funding_rates`,
`raw_order_book` and `sentiment_scores`."""


@dataclass(frozen=True)
class FeaturePipelineConfig:
    """Settings of every step, as the assets take them."""

    bars: MarketBarsConfig = field(default_factory=MarketBarsConfig)
    """`market_bars` settings."""
    carry: CarryFeaturesConfig = field(default_factory=CarryFeaturesConfig)
    """`carry_features` settings."""
    sentiment: SentimentWindowsConfig = field(default_factory=SentimentWindowsConfig)
    """`sentiment_windows` settings."""
    folds: WalkForwardConfig = field(default_factory=WalkForwardConfig)
    """`walk_forward_folds` settings."""
    windows: TrainingWindowsConfig = field(default_factory=TrainingWindowsConfig)
    """`training_windows` settings."""


def combine_features(carry: pl.DataFrame, sentiment: pl.DataFrame | None) -> pl.DataFrame:
    """Join carry features and sentiment windows on `ts`; a row is warm-up if either part is.

    Args:
        carry: `carry_features` (`ts`, `symbol`, `warmup`, `f_` columns).
        sentiment: `sentiment_windows` (`ts`, `sentiment`, `warmup`, `f_sent_` columns) or None.

    Returns:
        `ts`, `symbol`, `warmup` and every `f_` column, sorted by symbol then ts.

    Raises:
        ValueError: a bar of `carry` has no sentiment row.
    """
    if sentiment is None:
        return carry
    sent = sentiment.drop("sentiment", strict=False).rename({"warmup": "_sent_warmup"})
    joined = carry.join(sent, on="ts", how="left", maintain_order="left")
    missing = joined.filter(pl.col("_sent_warmup").is_null())
    if missing.height:
        raise ValueError(
            f"sentiment_windows has no row for {missing.height} bars of carry_features, first "
            f"{missing['ts'][0]}; rebuild sentiment_windows on the same grid"
        )
    return joined.with_columns(pl.col("warmup") | pl.col("_sent_warmup")).drop("_sent_warmup")


def build_market_frame(
    bars: pl.DataFrame,
    carry: pl.DataFrame,
    sentiment: pl.DataFrame | None = None,
    *,
    drop_warmup: bool = True,
) -> pl.DataFrame:
    """The env's market frame: `market_bars` with the `sentiment` level and every `f_` feature.

    Hand the result to `carry_env` as it is (`MarketData.from_frame`, or the env's market data).
    It carries the env's optional price detail (`carry_env.market.PRICE_DETAIL_COLUMNS`):
    `perp_high` / `perp_low` and `spot_high` / `spot_low` from each leg's bar (null on that leg's
    forward-filled, stale bars, whose range is unknown) and `mark_price` from the settlements (null
    between them and where the venue published none; a `market_bars` table written before it had
    the column gets an all-null one).

    Args:
        bars: `market_bars`.
        carry: `carry_features` of the same bars.
        sentiment: `sentiment_windows` on the same grid, or None.
        drop_warmup: keep only bars after the warm-up (where every feature and the sentiment level
            are defined); False keeps every bar, features null in the warm-up.

    Returns:
        One row per bar per symbol, sorted by symbol then ts.

    Raises:
        ValueError: a bar of `bars` has no feature row, or every bar is in the warm-up.
    """
    features = combine_features(carry, sentiment)
    frame = bars.join(features, on=["ts", "symbol"], how="left", maintain_order="left")
    if frame["warmup"].null_count():
        raise ValueError("carry_features does not cover every bar of market_bars; rebuild it")
    if sentiment is not None:
        level = sentiment.select("ts", "sentiment")
        frame = frame.join(level, on="ts", how="left", maintain_order="left")
    if drop_warmup:
        start, _ = usable_span(features)
        frame = frame.filter(pl.col("ts") >= start)
    return _with_price_detail(frame.drop("warmup"))


def _with_price_detail(frame: pl.DataFrame) -> pl.DataFrame:
    # A filled gap bar repeats the previous close as its high and low: that is no observed range, so
    # the env must not read it as one (it checks margin at the close there instead), leg by leg.
    if "mark_price" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("mark_price"))
    # Frames without a leg's range or its stale flag (hand-built ones) pass as they are.
    unknown_range = [
        pl.when(pl.col(f"{leg}_stale")).then(None).otherwise(pl.col(c)).alias(c)
        for leg in ("perp", "spot")
        for c in (f"{leg}_high", f"{leg}_low")
        if c in frame.columns and f"{leg}_stale" in frame.columns
    ]
    return frame.with_columns(unknown_range) if unknown_range else frame


def usable_span(features: pl.DataFrame) -> tuple[datetime, datetime]:
    """First bar after the warm-up and last bar of a feature frame.

    Raises:
        ValueError: every row is warm-up.
    """
    usable = features.filter(~pl.col("warmup"))["ts"]
    if usable.len() == 0:
        raise ValueError("every feature row is in the warm-up; supply more history")
    return ts_bounds(usable, what="features")


def run_feature_pipeline(
    raw: dict[str, pl.DataFrame], config: FeaturePipelineConfig | None = None
) -> dict[str, object]:
    """Run market bars, carry features, sentiment windows, folds, statistics and fold tensors in
    memory.

    Args:
        raw: the raw tables keyed as in `RAW_TABLES` (`order_book` and `sentiment` may be absent).
        config: settings of every step.

    Returns:
        `market_bars`, `carry_features`, `sentiment_windows` (None without sentiment), `features`
        (the two joined), `walk_forward_folds`, `normalisation_stats` and `tensors`: a dict `(fold,
        segment) -> (values, ts_us)` of the normalised arrays `training_windows` writes.
    """
    cfg = config or FeaturePipelineConfig()
    bar = parse_duration(cfg.bars.bar)
    bars = build_market_bars(
        raw["spot"], raw["perp"], raw["funding"], raw.get("order_book"), cfg.bars
    )
    carry = build_carry_features(bars, cfg.carry)
    sentiment = None
    if raw.get("sentiment") is not None:
        sentiment = build_sentiment_windows(raw["sentiment"], bars["ts"], cfg.sentiment)
    features = combine_features(carry, sentiment)
    start, end = usable_span(features)
    folds = make_walk_forward_folds(start, end, bar, cfg.folds)
    stats = compute_normalisation_stats(features, folds)
    tensors: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
    for fold in folds.iter_rows(named=True):
        segments: tuple[Literal["train", "test"], ...] = (
            ("train",) if fold["is_latest"] else ("train", "test")
        )
        for segment in segments:
            values, ts, _, _ = fold_tensor(features, stats, fold, segment, bar, cfg.windows)
            tensors[(fold["fold"], segment)] = (values, ts)
    return {
        "market_bars": bars,
        "carry_features": carry,
        "sentiment_windows": sentiment,
        "features": features,
        "walk_forward_folds": folds,
        "normalisation_stats": stats,
        "tensors": tensors,
    }
