"""Constructed markets and their fold inputs for the training tests, built through the datasets
stage's own functions (`compute_normalisation_stats`, `write_training_windows`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from carry_env.market import MarketData
from carry_pipeline.lib.features.folds import FOLD_SCHEMA
from carry_pipeline.lib.features.normalisation import compute_normalisation_stats
from carry_pipeline.lib.features.windows import TrainingWindowsConfig, write_training_windows
from carry_pipeline.lib.training.observation import WindowSet
from carry_pipeline.lib.training.train import FoldSpan, train_span_market

T0 = datetime(2024, 1, 1, tzinfo=UTC)
BAR = timedelta(hours=1)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@dataclass(frozen=True)
class FoldInputs:
    """One fold's market and windows, as the `models` assets will hand them to training."""

    frame: pl.DataFrame
    market: MarketData
    """The whole market (train, embargo and test bars)."""
    train_market: MarketData
    fold: FoldSpan
    train_windows: WindowSet
    test_windows: WindowSet
    stats: pl.DataFrame
    test_start_bar: int
    """Index in `market` of the first test bar."""


def carry_frame(
    n_bars: int,
    symbols: tuple[str, ...] = ("BTC",),
    funding_bp: float = 3.0,
    seed: int = 1,
) -> pl.DataFrame:
    """A 1 h venue where funding of `funding_bp` settles every bar on every symbol, prices random
    walk slowly, the basis is tight, books are deep; features `f_funding_bp`, `f_basis_bps`,
    `f_noise`.

    Full long carry (1.5x leverage cap, 75,000 USDT per leg on 100,000) earns 75,000 * 3e-4 = 22.5
    USDT an hour; opening it costs 75,000 * (10 + 5) bp of fees plus half-spreads, about 120 USDT.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for j, s in enumerate(symbols):
        spot = 100.0 * (j + 1) * np.exp(np.cumsum(rng.normal(0.0, 5e-4, n_bars)))
        perp = spot * (1.0 + rng.normal(0.0, 1e-4, n_bars))
        funding = np.full(n_bars, funding_bp * 1e-4) + rng.normal(0.0, 2e-5, n_bars)
        parts.append(
            pl.DataFrame(
                {
                    "ts": [T0 + i * BAR for i in range(n_bars)],
                    "symbol": [s] * n_bars,
                    "spot_price": spot,
                    "perp_price": perp,
                    "funding_rate": funding,
                    "spot_depth_usd": np.full(n_bars, 2e7),
                    "perp_depth_usd": np.full(n_bars, 2e7),
                    "spread_bps": np.full(n_bars, 1.0),
                    "f_funding_bp": funding * 1e4,
                    "f_basis_bps": (perp / spot - 1.0) * 1e4,
                    "f_noise": rng.normal(0.0, 1.0, n_bars),
                }
            )
        )
    return pl.concat(parts).sort("ts", "symbol")


def fold_inputs(
    frame: pl.DataFrame, root: Path, *, train_bars: int, test_bars: int, lookback: int = 8
) -> FoldInputs:
    """Fold 0: train on the first `train_bars`, a 1-bar embargo, test on the next `test_bars`."""
    train_end = T0 + train_bars * BAR
    test_start = train_end + BAR
    folds = pl.DataFrame(
        [
            {
                "fold": 0,
                "is_latest": False,
                "scheme": "anchored",
                "train_start": T0,
                "train_end": train_end,
                "test_start": test_start,
                "test_end": test_start + test_bars * BAR,
                "embargo_hours": 1.0,
            }
        ],
        schema=FOLD_SCHEMA,
    )
    features = frame.select("ts", "symbol", pl.lit(False).alias("warmup"), pl.col("^f_.*$"))
    stats = compute_normalisation_stats(features, folds)
    manifest = write_training_windows(
        features, stats, folds, root, TrainingWindowsConfig(lookback=lookback), bar=BAR
    )
    rows = {r["segment"]: r for r in manifest.iter_rows(named=True)}
    market = MarketData.from_frame(frame)
    fold = FoldSpan.from_row(folds.row(0, named=True))
    return FoldInputs(
        frame=frame,
        market=market,
        train_market=train_span_market(market, fold),
        fold=fold,
        train_windows=WindowSet.from_manifest_row(rows["train"]),
        test_windows=WindowSet.from_manifest_row(rows["test"]),
        stats=stats,
        test_start_bar=market.index_of(test_start),
    )


def crash_frame(
    n_bars: int,
    crash_bars: tuple[int, ...],
    *,
    warning_bars: int = 4,
    squeeze: float = 0.4,
    funding_bp: float = 10.0,
    seed: int = 3,
) -> pl.DataFrame:
    """`carry_frame` on one symbol (BTC) with scheduled perp squeezes and a visible precursor.

    At each bar `c` of `crash_bars` the perp prints `1 + squeeze` times its price for that one bar
    (spot unchanged, so the basis blows out by `squeeze`): a short perp at the env's default 3x
    isolated leverage loses more than its collateral and is liquidated, whatever its size. The
    feature `f_squeeze` is noise N(0, 1) except on the `warning_bars` bars before each crash, where
    it ramps to 4, 6, 8, 10 (+ noise), and the quoted spread widens from 1 bp to 5, 10, 15, 20 bp
    (liquidity withdrawing): the precursor, visible in the windows and in the env's `spread_bps`
    from bar `c - warning_bars` on (a window ending at a bar includes it).
    """
    frame = carry_frame(n_bars, ("BTC",), funding_bp=funding_bp, seed=seed)
    rng = np.random.default_rng(seed + 1)
    perp = frame["perp_price"].to_numpy().copy()
    squeeze_feature = rng.normal(0.0, 1.0, n_bars)
    spread = frame["spread_bps"].to_numpy().copy()
    ramp = np.arange(1, warning_bars + 1)
    for c in crash_bars:
        perp[c] *= 1.0 + squeeze
        squeeze_feature[c - warning_bars : c] += 2.0 + 2.0 * ramp
        spread[c - warning_bars : c] = 20.0 * ramp / warning_bars
    return frame.with_columns(
        pl.Series("spread_bps", spread),
        pl.Series("perp_price", perp),
        pl.Series("f_basis_bps", (perp / frame["spot_price"].to_numpy() - 1.0) * 1e4),
        pl.Series("f_squeeze", squeeze_feature),
    )


def sentiment_frame(
    n_bars: int,
    *,
    regime_bars: int = 60,
    lead_bars: int = 6,
    funding_bp: float = 10.0,
    seed: int = 4,
) -> pl.DataFrame:
    """`carry_frame` on one symbol (BTC) whose funding flips sign every `regime_bars` bars (+, -,
    +, ...), with extreme sentiment ahead of each flip.

    The sentiment (`sentiment` column and the window feature `f_sent_score`) is noise N(0, 0.3)
    except on the `lead_bars` bars before a flip, where it is 3 times the sign of the coming
    funding (+ noise): euphoria before funding turns positive, panic before it turns negative.
    """
    frame = carry_frame(n_bars, ("BTC",), funding_bp=funding_bp, seed=seed)
    rng = np.random.default_rng(seed + 1)
    sign = np.where((np.arange(n_bars) // regime_bars) % 2 == 0, 1.0, -1.0)
    funding = frame["funding_rate"].to_numpy() * sign
    sentiment = rng.normal(0.0, 0.3, n_bars)
    for flip in range(regime_bars, n_bars, regime_bars):
        sentiment[flip - lead_bars : flip] += 3.0 * sign[flip]
    return frame.with_columns(
        pl.Series("funding_rate", funding),
        pl.Series("f_funding_bp", funding * 1e4),
        pl.Series("sentiment", sentiment),
        pl.Series("f_sent_score", sentiment),
    )
