"""Tests of carry_pipeline/lib/features/carry.py: hand-computed basis and funding features, closed
higher-timeframe indicators, output sanity."""

from __future__ import annotations

import importlib
import math
import warnings
from datetime import timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest

from carry_pipeline.lib.features.bars import build_market_bars
from carry_pipeline.lib.features.carry import (
    CarryFeaturesConfig,
    annualised_funding,
    build_carry_features,
    check_same_grid,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pandas-ta-classic's import banner warns under pandas 3
    ta = importlib.import_module("pandas_ta_classic")

BTC = "BTC/USDT:USDT"


@pytest.fixture(scope="module")
def bars(raw: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return build_market_bars(raw["spot"], raw["perp"], raw["funding"], raw["order_book"])


@pytest.fixture(scope="module")
def features(bars: pl.DataFrame) -> pl.DataFrame:
    return build_carry_features(bars)


@pytest.mark.parametrize(
    ("rate", "interval", "expected"),
    [
        # 1 bp per 8h: 3 prints a day, 365 days: 10.95 % a year.
        (1e-4, 8.0, 0.1095),
        # The same rate every 4h pays twice as often.
        (1e-4, 4.0, 0.219),
        # Hourly funding of -0.5 bp: -0.5e-4 * 24 * 365.
        (-0.5e-4, 1.0, -0.438),
        # The 0.3 % cap per 8h: 328.5 % a year.
        (0.003, 8.0, 3.285),
    ],
)
def test_funding_annualisation(rate: float, interval: float, expected: float) -> None:
    got = pl.select(annualised_funding(pl.lit(rate), pl.lit(interval))).item()
    assert got == pytest.approx(expected, rel=1e-12)


def test_basis_hand_computed(bars: pl.DataFrame, features: pl.DataFrame) -> None:
    row = bars.row(500, named=True)
    feat = features.filter((pl.col("ts") == row["ts"]) & (pl.col("symbol") == row["symbol"]))
    spot, perp = row["spot_close"], row["perp_close"]
    assert feat["f_basis"][0] == pytest.approx(perp - spot, rel=1e-12)
    assert feat["f_basis_bps"][0] == pytest.approx((perp - spot) / spot * 1e4, rel=1e-9)
    # A hand-made bar through the code under test: perp 100.5 over spot 100 is 0.5 USDT and 50 bp.
    hand = bars.with_columns(
        pl.when(pl.int_range(pl.len()) == 500).then(pl.lit(value)).otherwise(pl.col(col)).alias(col)
        for col, value in (("spot_close", 100.0), ("perp_close", 100.5))
    )
    got = build_carry_features(hand).filter(
        (pl.col("ts") == row["ts"]) & (pl.col("symbol") == row["symbol"])
    )
    assert (got["f_basis"][0], got["f_basis_bps"][0]) == pytest.approx((0.5, 50.0), rel=1e-12)


def test_basis_zscore_over_one_day(bars: pl.DataFrame, features: pl.DataFrame) -> None:
    btc = bars.filter(pl.col("symbol") == BTC)
    bps = (btc["perp_close"] / btc["spot_close"] - 1.0).to_numpy() * 1e4
    i = 3000
    window = bps[i - 95 : i + 1]  # 96 fifteen-minute bars = 1 day, ending at the current bar
    expected = (bps[i] - window.mean()) / window.std(ddof=1)
    got = features.filter(pl.col("symbol") == BTC)["f_basis_z"][i]
    assert got == pytest.approx(expected, rel=1e-9)


def designed_funding(bars: pl.DataFrame) -> pl.DataFrame:
    # Replace the settlements of BTC with the cycle +1, +2, -1, 0, +3 bp (others untouched).
    cycle = [1e-4, 2e-4, -1e-4, 0.0, 3e-4]
    settled = pl.col("funding_rate").is_not_null() & (pl.col("symbol") == BTC)
    k = settled.cast(pl.Int64).cum_sum().over("symbol") - 1
    return bars.with_columns(
        pl.when(settled)
        .then(pl.lit(pl.Series(cycle)).gather(k % len(cycle)))
        .otherwise(pl.col("funding_rate"))
        .alias("funding_rate")
    )


def test_funding_features_hand_computed(bars: pl.DataFrame) -> None:
    frame = designed_funding(bars)
    feats = build_carry_features(frame).filter(pl.col("symbol") == BTC)
    settle = frame.filter((pl.col("symbol") == BTC) & pl.col("funding_rate").is_not_null())
    # Settlements 10..14 carry the cycle at positions 0..4: +1, +2, -1, 0, +3 bp.
    s = settle["ts"].to_list()
    at = {r["ts"]: r for r in feats.iter_rows(named=True)}
    # At the 12th settlement (-1 bp), the last three are +1, +2, -1: SMA 0.6667 bp; streak -1.
    row = at[s[12]]
    assert row["f_funding_rate"] == pytest.approx(-1e-4)
    assert row["f_funding_sma3"] == pytest.approx((1e-4 + 2e-4 - 1e-4) / 3)
    assert row["f_funding_streak"] == -1.0
    assert row["f_funding_ann"] == pytest.approx(-1e-4 * 3 * 365)
    # Settlement 11 (+2 bp) follows 10 (+1 bp) and 9 (+3 bp, the end of the previous cycle): a
    # positive streak of 3.
    assert at[s[11]]["f_funding_streak"] == 3.0
    # A zero print breaks every streak.
    assert at[s[13]]["f_funding_streak"] == 0.0
    # Between settlements the last settled rate is carried: 15 minutes later it is still -1 bp, and
    # the next settlement is 8h - 15 min = 465 minutes away.
    later = at[s[12] + timedelta(minutes=15)]
    assert later["f_funding_rate"] == pytest.approx(-1e-4)
    assert later["f_minutes_to_funding"] == 465.0
    assert row["f_minutes_to_funding"] == 480.0
    # The z-score uses the last 30 settlements only, ending at the current one (settlement 41, +2
    # bp).
    window = settle["funding_rate"].to_numpy()[12:42]
    expected = (window[-1] - window.mean()) / window.std(ddof=1)
    assert at[s[41]]["f_funding_z"] == pytest.approx(expected, rel=1e-9)
    # It needs 30 settlements: undefined at the 29th (index 28), defined from the 30th.
    assert at[s[28]]["f_funding_z"] is None and at[s[29]]["f_funding_z"] is not None


def test_funding_spread_is_versus_cross_sectional_mean(features: pl.DataFrame) -> None:
    ts = features.filter(~pl.col("warmup"))["ts"][100]
    at = features.filter(pl.col("ts") == ts)
    mean = at["f_funding_ann"].mean()
    np.testing.assert_allclose(at["f_funding_spread_ann"], at["f_funding_ann"] - mean, rtol=1e-12)


def test_returns_and_realised_vol(bars: pl.DataFrame, features: pl.DataFrame) -> None:
    spot = bars.filter(pl.col("symbol") == BTC)["spot_close"].to_numpy()
    f = features.filter(pl.col("symbol") == BTC)
    i = 4000
    assert f["f_ret_1h"][i] == pytest.approx(math.log(spot[i] / spot[i - 4]), rel=1e-9)
    assert f["f_ret_1d"][i] == pytest.approx(math.log(spot[i] / spot[i - 96]), rel=1e-9)
    r = np.diff(np.log(spot))[i - 96 : i]  # the 96 one-bar returns ending at bar i
    expected = r.std(ddof=1) * math.sqrt(365 * 96)
    assert f["f_rv"][i] == pytest.approx(expected, rel=1e-9)
    # Population (biased) moments, as polars' rolling_skew / rolling_kurtosis with bias=True.
    d = r - r.mean()
    m2, m3, m4 = (d**2).mean(), (d**3).mean(), (d**4).mean()
    assert f["f_ret_skew"][i] == pytest.approx(m3 / m2**1.5, rel=1e-6)
    assert f["f_ret_kurt"][i] == pytest.approx(m4 / m2**2 - 3.0, rel=1e-6)


def test_time_encodings(features: pl.DataFrame) -> None:
    row = features.filter(pl.col("ts").dt.hour() == 6, pl.col("ts").dt.minute() == 0).row(
        0, named=True
    )
    # 06:00 is a quarter of the day: sin = 1, cos = 0.
    assert row["f_hour_sin"] == pytest.approx(1.0) and row["f_hour_cos"] == pytest.approx(
        0.0, abs=1e-12
    )


def test_higher_timeframe_indicators_use_closed_bars_only(
    bars: pl.DataFrame, features: pl.DataFrame
) -> None:
    btc = bars.filter(pl.col("symbol") == BTC).to_pandas()
    opens = btc["ts"] - pd.Timedelta(minutes=15)
    groups = btc.groupby(opens.dt.floor("4h"))
    h4 = pd.DataFrame(
        {
            "high": groups["spot_high"].max(),
            "low": groups["spot_low"].min(),
            "close": groups["spot_close"].last(),
            "n": groups.size(),
        }
    )
    h4 = h4[h4["n"] == 16]
    h4.index = h4.index + pd.Timedelta(hours=4)  # known at the 4h bar's close
    rsi = ta.rsi(h4["close"], 14)
    expected = pd.merge_asof(
        btc[["ts"]],
        rsi.rename("rsi").rename_axis("ts").reset_index(),
        on="ts",
        direction="backward",
    )["rsi"].to_numpy()
    got = features.filter(pl.col("symbol") == BTC)["f_rsi_4h"].to_numpy().astype(float)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # Concretely: 15 minutes before a 4h close the value is still the previous bar's; at the close
    # it switches.
    ts = pd.Timestamp(rsi.dropna().index[5])
    f = features.filter(pl.col("symbol") == BTC)
    before = f.filter(pl.col("ts") == ts - pd.Timedelta(minutes=15))["f_rsi_4h"][0]
    at = f.filter(pl.col("ts") == ts)["f_rsi_4h"][0]
    assert before == pytest.approx(rsi.dropna().iloc[4]) and at == pytest.approx(
        rsi.dropna().iloc[5]
    )


def test_no_nan_or_inf_after_warmup_and_same_grid(features: pl.DataFrame) -> None:
    cols = [c for c in features.columns if c.startswith("f_")]
    assert len(cols) >= 40
    live = features.filter(~pl.col("warmup"))
    assert live.height > 0
    bad = live.select(pl.col(cols).is_finite().not_().sum()).row(0, named=True)
    assert {c: n for c, n in bad.items() if n} == {}
    assert check_same_grid(features, what="carry_features") == timedelta(minutes=15)
    # Warm-up ends at the same bar for every symbol, and it is a prefix.
    ends = features.group_by("symbol").agg(pl.col("ts").filter(~pl.col("warmup")).min())
    assert ends["ts"].n_unique() == 1
    turns_back_on = (pl.col("warmup").cast(pl.Int8).diff().over("symbol") > 0).any()
    assert features.select(turns_back_on).item() is False


def test_features_are_sorted_and_row_aligned(bars: pl.DataFrame, features: pl.DataFrame) -> None:
    assert features.select("ts", "symbol").equals(bars.select("ts", "symbol"))


def test_too_little_history_names_the_missing_features(bars: pl.DataFrame) -> None:
    short = bars.filter(pl.col("ts") < bars["ts"].min() + timedelta(days=20))
    with pytest.raises(ValueError, match=r"never has every feature defined.*f_ema_dist_1d"):
        build_carry_features(short)


def test_irregular_grid_fails(bars: pl.DataFrame) -> None:
    holed = bars.filter(~((pl.col("symbol") == BTC) & (pl.arange(0, pl.len()) == 10)))
    with pytest.raises(ValueError, match="expected .* on a regular"):
        build_carry_features(holed)


def test_bad_window_fails() -> None:
    with pytest.raises(ValueError, match="not of the form"):
        CarryFeaturesConfig(zscore_window="one day")
