"""Tests of carry_pipeline/lib/features/indicators.py against pandas-ta-classic, and closed higher
bars."""

from __future__ import annotations

import importlib
import warnings
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest

from carry_pipeline.lib.features.indicators import (
    IndicatorConfig,
    add_indicators,
    higher_timeframe_bars,
)

with warnings.catch_warnings():
    # pandas-ta-classic's import-time banner uses a pandas API deprecated in pandas 3.
    warnings.simplefilter("ignore")
    ta = importlib.import_module("pandas_ta_classic")


def ohlc_path(n: int, seed: int, flat_every: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    high = close * (1 + np.abs(rng.normal(0.0, 0.004, n)))
    low = close * (1 - np.abs(rng.normal(0.0, 0.004, n)))
    if flat_every:
        # Flat bars (high == low == close) occur in thin crypto markets; pandas-ta swaps in epsilon.
        flat = np.arange(n) % flat_every == 0
        high[flat] = low[flat] = close[flat]
    return pd.DataFrame({"high": high, "low": low, "close": close})


def reference(frame: pd.DataFrame, cfg: IndicatorConfig) -> dict[str, pd.Series]:
    h, lo, c = frame["high"], frame["low"], frame["close"]
    macd = ta.macd(c, cfg.macd_fast, cfg.macd_slow, cfg.macd_signal)
    bb = ta.bbands(c, cfg.bb_length, cfg.bb_std)
    return {
        "f_rsi_x": ta.rsi(c, cfg.rsi_length),
        "f_atr_pct_x": ta.atr(h, lo, c, cfg.atr_length) / c,
        "f_macd_hist_pct_x": macd[f"MACDh_{cfg.macd_fast}_{cfg.macd_slow}_{cfg.macd_signal}"] / c,
        "f_bb_width_x": bb[f"BBB_{cfg.bb_length}_{cfg.bb_std}"],
        "f_adx_x": ta.adx(h, lo, c, cfg.adx_length)[f"ADX_{cfg.adx_length}"],
        "f_ema_dist_x": c / ta.ema(c, cfg.ema_length) - 1.0,
    }


@pytest.mark.parametrize(
    ("cfg", "seed", "flat_every"),
    [
        # pandas-ta-classic defaults on a random walk.
        (IndicatorConfig(), 0, 0),
        # Other lengths move every seed position.
        (
            IndicatorConfig(
                rsi_length=7,
                atr_length=5,
                macd_fast=5,
                macd_slow=13,
                macd_signal=4,
                bb_length=10,
                bb_std=1.5,
                adx_length=9,
                ema_length=20,
            ),
            1,
            0,
        ),
        # Flat bars exercise the epsilon ranges of true range and bandwidth.
        (IndicatorConfig(), 2, 7),
    ],
)
def test_indicators_match_pandas_ta_classic(
    cfg: IndicatorConfig, seed: int, flat_every: int
) -> None:
    frame = ohlc_path(800, seed, flat_every)
    ours = add_indicators(pl.from_pandas(frame).lazy(), cfg, "x", "high", "low", "close").collect()
    for name, expected in reference(frame, cfg).items():
        got = ours[name].to_numpy().astype(float)
        want = expected.to_numpy(dtype=float)
        # Undefined exactly where pandas-ta's is NaN (same warm-up), equal to float precision after.
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=name)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=name)
    assert not any(c.startswith("_") for c in ours.columns)
    assert cfg.lookback() == max(
        int(np.argmax(~np.isnan(ours[c].to_numpy().astype(float))))
        for c in ours.columns
        if c.startswith("f_")
    )


def grid(n: int, bar: timedelta, start: datetime) -> pl.DataFrame:
    closes = np.arange(1.0, n + 1.0)
    return pl.DataFrame(
        {
            "ts": [start + (i + 1) * bar for i in range(n)],  # close times
            "spot_open": closes - 0.5,
            "spot_high": closes + 1.0,
            "spot_low": closes - 1.0,
            "spot_close": closes,
        }
    )


def test_higher_timeframe_bars_are_closed_bars_only() -> None:
    m15 = timedelta(minutes=15)
    # The grid starts at 00:30 (first bar opens 00:15), so the 00:00-04:00 bar is partial: dropped.
    start = datetime(2024, 1, 1, 0, 15, tzinfo=UTC)
    bars = grid(16 * 3, m15, start)
    h4 = higher_timeframe_bars(bars.lazy(), m15, timedelta(hours=4)).collect()
    # Grid bars open 00:15..12:00. The 00:00-04:00 bar holds 15 of its 16: dropped; 04:00-08:00 and
    # 08:00-12:00 are complete and stamped at their close; 12:00-16:00 holds one: dropped.
    assert h4["ts"].to_list() == [
        datetime(2024, 1, 1, 8, tzinfo=UTC),
        datetime(2024, 1, 1, 12, tzinfo=UTC),
    ]
    # The 04:00-08:00 bar: grid bars 16..31 (closes 16..31 in this synthetic grid).
    first = h4.row(0, named=True)
    assert (first["open"], first["high"], first["low"], first["close"]) == (15.5, 32.0, 15.0, 31.0)


def test_higher_timeframe_must_be_a_multiple() -> None:
    with pytest.raises(ValueError, match="whole multiple"):
        higher_timeframe_bars(
            grid(4, timedelta(hours=1), datetime(2024, 1, 1, tzinfo=UTC)).lazy(),
            timedelta(hours=1),
            timedelta(minutes=90),
        )
