"""The `feature_settings` resource: one set of feature and dataset settings for every asset and
check.

The features, datasets and their checks (the point-in-time check recomputes features) must agree on
the settings, so they share one resource rather than per-asset config. Every field has a default
that works offline with the simulated exchange; change them in the run config under
`resources.feature_settings.config` (launchpad or `dagster job execute -c`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from carry_pipeline.lib.features.bars import MarketBarsConfig
from carry_pipeline.lib.features.carry import CarryFeaturesConfig
from carry_pipeline.lib.features.folds import WalkForwardConfig
from carry_pipeline.lib.features.indicators import IndicatorConfig
from carry_pipeline.lib.features.pipeline import FeaturePipelineConfig
from carry_pipeline.lib.features.sentiment import SentimentSourceConfig, SentimentWindowsConfig
from carry_pipeline.lib.features.windows import TrainingWindowsConfig

REPO_ROOT = Path(__file__).resolve().parents[3]


class FeatureSettings(dg.ConfigurableResource):
    """Settings of `market_bars`, `carry_features`, `sentiment_*`, `walk_forward_folds`,
    `normalisation_stats` and `training_windows`."""

    bar: str = Field(
        default="15m", description="Bar of the aligned grid; a multiple of the raw bars."
    )
    symbols: list[str] | None = Field(
        default=None,
        description="Perp symbols to keep (BTC/USDT:USDT); None keeps every ingested one.",
    )
    max_fill_bars: int = Field(
        default=4,
        description="Longest run of missing bars forward-filled (flagged stale); longer fails.",
    )
    max_book_age: str = Field(
        default="1h",
        description="Oldest order-book snapshot used for depth/spread; else the proxies.",
    )
    depth_band_bps: int = Field(default=50, description="Depth band around mid: 10 or 50 bp.")
    proxy_depth_fraction: float = Field(
        default=0.2, description="Depth proxy: fraction of the leg's mean hourly traded notional."
    )
    proxy_spread_bps: float = Field(
        default=1.0, description="Spread proxy per leg (bp) where no fresh snapshot exists."
    )
    zscore_window: str = Field(default="1d", description="Window of the basis z-score.")
    funding_zscore_periods: int = Field(
        default=30, description="Settlements in the funding z-score."
    )
    return_horizons: list[str] = Field(
        default=["1h", "4h", "1d"], description="Horizons of the log returns f_ret_<h>."
    )
    vol_window: str = Field(default="1d", description="Window of the realised volatility.")
    vol_of_vol_window: str = Field(default="7d", description="Window of the vol-of-vol.")
    moments_window: str = Field(default="1d", description="Window of the return skew/kurtosis.")
    microstructure_window: str = Field(
        default="1d", description="Window of the high-low spread, VWAP and trade intensity."
    )
    correlation_window: str = Field(default="1d", description="Window of f_corr_btc_eth.")
    higher_timeframes: list[str] = Field(
        default=["4h", "1d"], description="Closed higher timeframes that get the indicators too."
    )
    ema_length: int = Field(default=50, description="EMA length of f_ema_dist_* (bars of each TF).")
    correlation_pair: list[str] | None = Field(
        default=["BTC/USDT:USDT", "ETH/USDT:USDT"],
        description="Pair whose rolling return correlation is f_corr_btc_eth; None leaves it out.",
    )
    sentiment_source: Literal["exchange", "file", "http"] = Field(
        default="exchange",
        description="exchange: the `exchange` resource's index (the simulated one offline); file: "
        "CSV/Parquet at sentiment_path; http: CSV/JSON at sentiment_url.",
    )
    sentiment_path: str | None = Field(default=None, description="file source: the file.")
    sentiment_url: str | None = Field(default=None, description="http source: the URL.")
    sentiment_timestamp_column: str = Field(
        default="timestamp", description="file/http: the time the score refers to."
    )
    sentiment_score_column: str = Field(default="score", description="file/http: the score.")
    sentiment_published_at_column: str | None = Field(
        default=None, description="file/http: publication time; None uses timestamp + lag."
    )
    sentiment_publication_lag: str = Field(
        default="0s", description="file/http: delay from timestamp to publication if no column."
    )
    sentiment_score_range: list[float] = Field(
        default=[-1.0, 1.0], description="file/http: the source's scale, mapped onto [-1, 1]."
    )
    sentiment_change_window: str = Field(default="1d", description="Lag of f_sent_change.")
    sentiment_zscore_window: str = Field(default="7d", description="Window of f_sent_z.")
    sentiment_mean_windows: list[str] = Field(
        default=["1d", "7d"], description="Rolling means f_sent_mean_<w>."
    )
    sentiment_extreme_level: float = Field(
        default=0.6, description="|level| from which the extreme fear/greed flags are 1."
    )
    sentiment_max_age: str = Field(
        default="2d", description="Age beyond which the latest score is flagged stale."
    )
    sentiment_history: str = Field(
        default="7d", description="Sentiment read before the first bar, to fill its windows."
    )
    fold_scheme: Literal["anchored", "sliding"] = Field(
        default="anchored", description="anchored: train from the start; sliding: last train_span."
    )
    n_folds: int = Field(default=4, description="Walk-forward folds (the latest window on top).")
    train_span: str = Field(default="180d", description="Train span (minimum for anchored folds).")
    test_span: str = Field(default="30d", description="Test span of each fold.")
    embargo: str = Field(default="1d", description="Gap between train end and test start.")
    lookback: int = Field(default=64, description="Bars per training window.")
    normalisation: Literal["standard", "robust"] = Field(
        default="standard", description="standard: mean/std; robust: median/IQR."
    )
    clip: float | None = Field(
        default=10.0, description="Clip normalised windows to [-clip, clip]; None keeps them."
    )
    windows_root: str = Field(
        default=str(REPO_ROOT / "data" / "windows"),
        description="Folder of the memory-mapped training windows (.npy).",
    )
    pit_samples: int = Field(
        default=2, description="Cut-offs drawn by the blocking point-in-time check."
    )
    pit_history: str = Field(
        default="60d", description="Data before each cut-off in the check (beyond the warm-up)."
    )
    pit_future: str = Field(
        default="3d", description="Data after each cut-off in the check, which it perturbs."
    )
    pit_seed: int = Field(default=0, description="Seed of the check's cut-offs and noise.")

    def pipeline(self) -> FeaturePipelineConfig:
        """The lib-level configuration these settings describe (validated there)."""
        return FeaturePipelineConfig(
            bars=MarketBarsConfig(
                bar=self.bar,
                symbols=tuple(self.symbols) if self.symbols is not None else None,
                max_fill_bars=self.max_fill_bars,
                max_book_age=self.max_book_age,
                depth_band_bps=self.depth_band_bps,
                proxy_depth_fraction=self.proxy_depth_fraction,
                proxy_spread_bps=self.proxy_spread_bps,
            ),
            carry=CarryFeaturesConfig(
                zscore_window=self.zscore_window,
                funding_zscore_periods=self.funding_zscore_periods,
                return_horizons=tuple(self.return_horizons),
                vol_window=self.vol_window,
                vol_of_vol_window=self.vol_of_vol_window,
                moments_window=self.moments_window,
                microstructure_window=self.microstructure_window,
                correlation_window=self.correlation_window,
                indicators=IndicatorConfig(ema_length=self.ema_length),
                higher_timeframes=tuple(self.higher_timeframes),
                correlation_pair=(
                    (self.correlation_pair[0], self.correlation_pair[1])
                    if self.correlation_pair
                    else None
                ),
            ),
            sentiment=SentimentWindowsConfig(
                change_window=self.sentiment_change_window,
                zscore_window=self.sentiment_zscore_window,
                mean_windows=tuple(self.sentiment_mean_windows),
                extreme_level=self.sentiment_extreme_level,
                max_age=self.sentiment_max_age,
            ),
            folds=WalkForwardConfig(
                scheme=self.fold_scheme,
                n_folds=self.n_folds,
                train_span=self.train_span,
                test_span=self.test_span,
                embargo=self.embargo,
            ),
            windows=TrainingWindowsConfig(
                lookback=self.lookback, method=self.normalisation, clip=self.clip
            ),
        )

    def sentiment_source_config(self, seed: int = 0) -> SentimentSourceConfig:
        """The file/http source settings (`exchange` is read through the exchange resource)."""
        lo, hi = self.sentiment_score_range
        return SentimentSourceConfig(
            kind="file" if self.sentiment_source == "file" else "http",
            path=self.sentiment_path,
            url=self.sentiment_url,
            timestamp_column=self.sentiment_timestamp_column,
            score_column=self.sentiment_score_column,
            published_at_column=self.sentiment_published_at_column,
            publication_lag=self.sentiment_publication_lag,
            score_range=(lo, hi),
            seed=seed,
        )


@dg.definitions
def resources() -> dg.Definitions:
    """The `feature_settings` resource with its offline defaults."""
    return dg.Definitions(resources={"feature_settings": FeatureSettings()})
