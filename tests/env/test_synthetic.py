"""Tests of `carry_env/synthetic.py`: schema, determinism, window/bar consistency and calibration
bands.

The bands below are the simulator's contract with the real data (`../shared/data/README.md`, printed
side by side by `bench/calibration.py`). Real Binance/Bybit BTC and ETH funding, per 8h print: mean
0.93-1.69 bp (2020-25), median and mode exactly 1 bp, 7-15 % negative, extremes at the +-30/37.5 bp
caps. Real 8h basis (2023-25): mean -1.3 bp, std 4.7-5.0 bp, 70 % below zero, corr(basis, funding)
0.68, bimodal (-6..-2 bp and +4..+8 bp, dip at 0..+2 bp). The simulated long run (2018-2031) must
fall in bands around those.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from carry_env.synthetic import (
    bar_minutes,
    minute_paths,
    simulate_funding,
    simulate_market,
    simulate_ohlcv,
    simulate_order_book,
    simulate_sentiment,
    symbol_profile,
)

PAIR = ("BTC/USDT:USDT", "ETH/USDT:USDT")
SIX = tuple(f"{b}/USDT:USDT" for b in ("BTC", "ETH", "SOL", "BNB", "XRP", "DOGE"))
MARKET_SCHEMA = {
    "ts": pl.Datetime("us", "UTC"),
    "symbol": pl.String(),
    "spot_price": pl.Float64(),
    "perp_price": pl.Float64(),
    "funding_rate": pl.Float64(),
    "spot_depth_usd": pl.Float64(),
    "perp_depth_usd": pl.Float64(),
    "spread_bps": pl.Float64(),
    "sentiment": pl.Float64(),
}


@pytest.fixture(scope="module")
def long_run() -> pl.DataFrame:
    # 14 years of 8h bars: every bar close is a funding settlement.
    return simulate_market(PAIR, "2018-01-01", "2031-12-31", "8h", seed=0)


def _stats(frame: pl.DataFrame, symbol: str) -> dict[str, float]:
    f = frame.filter(pl.col("symbol") == symbol)
    rate = f["funding_rate"].to_numpy() * 1e4
    basis = ((f["perp_price"] / f["spot_price"] - 1.0) * 1e4).to_numpy()
    neg = rate < 0
    # Longest run of consecutive negative prints.
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], neg.astype(int), [0]]))))[::2]
    return {
        "mean": rate.mean(),
        "median": float(np.median(rate)),
        "share_neg": neg.mean(),
        "share_floor": (f["funding_rate"] == 0.0001).mean(),
        "min": rate.min(),
        "max": rate.max(),
        "longest_neg_run": int(runs.max()),
        "basis_mean": basis.mean(),
        "basis_std": basis.std(),
        "basis_neg": (basis < 0).mean(),
        "corr": float(np.corrcoef(basis, rate)[0, 1]),
        # Mass per bp of width in the two real clusters and in the dip between them.
        "low_cluster": ((basis > -6) & (basis < -2)).mean() / 4,
        "dip": ((basis > 0) & (basis < 2)).mean() / 2,
        "high_cluster": ((basis > 4) & (basis < 8)).mean() / 4,
    }


# ---- schema and determinism


def test_market_frame_schema_and_grid() -> None:
    f = simulate_market(PAIR, "2024-01-01", "2024-01-03", "15m", seed=7)
    assert f.schema == pl.Schema(MARKET_SCHEMA)
    # 2 days of 15-minute bars, stamped at bar CLOSE: first at 00:15, last at the window end.
    assert f.height == 2 * 96 * 2
    assert f["ts"][0] == datetime(2024, 1, 1, 0, 15, tzinfo=UTC)
    assert f["ts"][-1] == datetime(2024, 1, 3, tzinfo=UTC)
    assert f["symbol"].head(2).to_list() == list(PAIR)
    for c in ("spot_price", "perp_price", "spot_depth_usd", "perp_depth_usd", "spread_bps"):
        assert f[c].null_count() == 0 and (f[c] > 0).all(), c
    assert f["sentiment"].is_between(-1, 1).all()
    # Funding settles exactly at 00/08/16 UTC and is null elsewhere (never filled with 0).
    settled = f.filter(pl.col("funding_rate").is_not_null())
    assert set(settled["ts"].dt.hour().unique()) == {0, 8, 16}
    assert (settled["ts"].dt.minute() == 0).all()
    assert settled.height == 2 * 6  # 00:00 of day 1 is a bar open, not a close: 08,16,00,08,16,00
    assert f.filter(pl.col("funding_rate").is_null()).height == f.height - settled.height


def test_same_seed_same_frame_other_seed_differs() -> None:
    a = simulate_market(PAIR, "2024-02-01", "2024-02-05", "5m", seed=11)
    b = simulate_market(PAIR, "2024-02-01", "2024-02-05", "5m", seed=11)
    c = simulate_market(PAIR, "2024-02-01", "2024-02-05", "5m", seed=12)
    assert a.equals(b)
    assert not a["spot_price"].equals(c["spot_price"])


def test_coarse_bar_equals_fine_path_at_closes() -> None:
    fine = simulate_market(PAIR, "2024-03-01", "2024-03-03", "1m", seed=3)
    for bar, minutes in (("15m", 15), ("1h", 60), ("4h", 240)):
        coarse = simulate_market(PAIR, "2024-03-01", "2024-03-03", bar, seed=3)
        sampled = fine.filter((pl.col("ts").dt.epoch("s") // 60) % minutes == 0)
        assert coarse.equals(sampled), bar


def test_window_is_a_slice_of_one_path() -> None:
    # A day fetched alone equals the same day inside a longer fetch (daily partitions stitch
    # together).
    long = simulate_market(PAIR, "2024-01-01", "2024-01-10", "15m", seed=5)
    day = simulate_market(PAIR, "2024-01-04", "2024-01-05", "15m", seed=5)
    lo, hi = datetime(2024, 1, 4, tzinfo=UTC), datetime(2024, 1, 5, tzinfo=UTC)
    assert day.equals(long.filter((pl.col("ts") > lo) & (pl.col("ts") <= hi)))
    # An asset's path does not depend on which other assets are requested.
    alone = simulate_market(("ETH/USDT:USDT",), "2024-01-04", "2024-01-05", "15m", seed=5)
    assert alone.equals(day.filter(pl.col("symbol") == "ETH/USDT:USDT"))


def test_per_symbol_funding_intervals() -> None:
    f = simulate_market(PAIR, "2024-01-01", "2024-01-02", "1h", funding_interval_hours=[8, 4])
    eth = f.filter((pl.col("symbol") == "ETH/USDT:USDT") & pl.col("funding_rate").is_not_null())
    assert eth["ts"].dt.hour().to_list() == [4, 8, 12, 16, 20, 0]
    # 4h interest is half the 8h one, so the 4h floor value is 0.5 bp.
    assert 0.00005 in eth["funding_rate"].to_list() or eth["funding_rate"].abs().max() > 0.0001


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bar": "7x"}, "cannot parse bar"),  # unknown unit
        ({"bar": "7m"}, "does not divide"),  # 7 minutes do not divide 8 h
        ({"start": "2024-01-01T00:05"}, "multiples of the 15-minute bar"),  # misaligned start
        ({"start": "2010-01-01"}, "epoch"),  # before the simulator's epoch
        ({"start": "2024-02-01", "end": "2024-01-01"}, "start < end"),  # reversed window
        ({"symbols": ("BTC/USDT:USDT", "BTC/USDT")}, "repeat the base"),  # one asset twice
        ({"symbols": "BTC/USDT:USDT"}, "sequence of symbols"),  # a bare string
        ({"funding_interval_hours": 5}, "dividing 24"),  # 5 h does not divide a day
        ({"funding_interval_hours": [8, 8, 8]}, "3 entries for 2 symbols"),  # length mismatch
    ],
)
def test_bad_arguments_fail_clearly(kwargs: dict, message: str) -> None:
    args = {"symbols": PAIR, "start": "2024-01-01", "end": "2024-01-02", "bar": "15m"} | kwargs
    with pytest.raises((ValueError, TypeError), match=message):
        simulate_market(**args)


@pytest.mark.parametrize(
    ("bar", "minutes"),
    [("1m", 1), ("15m", 15), ("1h", 60), ("4h", 240), ("1d", 1440), (timedelta(minutes=30), 30)],
)
def test_bar_minutes(bar: str | timedelta, minutes: int) -> None:
    assert bar_minutes(bar) == minutes


# ---- the other frames agree with the market frame


def test_ohlcv_is_consistent_with_market_frame() -> None:
    m = simulate_market(PAIR, "2024-01-01", "2024-01-02", "1h", seed=2)
    for market, col in (("spot", "spot_price"), ("perp", "perp_price")):
        o = simulate_ohlcv(PAIR, "2024-01-01", "2024-01-02", "1h", seed=2, market=market)
        assert o.height == 48
        ok = o.select(
            (pl.col("low") <= pl.min_horizontal("open", "close")).all(),
            (pl.col("high") >= pl.max_horizontal("open", "close")).all(),
        )
        assert ok.row(0) == (True, True)
        assert (o["volume"] > 0).all()
        # The bar opening at t closes at t + 1h, where the market frame observes the same price.
        joined = o.with_columns(pl.col("ts") + pl.duration(hours=1)).join(m, on=["ts", "symbol"])
        assert joined.height == 48
        np.testing.assert_array_equal(joined["close"].to_numpy(), joined[col].to_numpy())
        # Each bar opens where the previous one closed.
        for sym in PAIR:
            s = o.filter(pl.col("symbol") == sym)
            np.testing.assert_array_equal(s["open"][1:].to_numpy(), s["close"][:-1].to_numpy())


def test_ohlcv_aggregates_across_bar_sizes() -> None:
    fine = simulate_ohlcv(PAIR, "2024-01-01", "2024-01-02", "15m", seed=4)
    coarse = simulate_ohlcv(PAIR, "2024-01-01", "2024-01-02", "1h", seed=4)
    agg = (
        fine.group_by("symbol", pl.col("ts").dt.truncate("1h"), maintain_order=True)
        .agg(
            pl.col("open").first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").last(),
            pl.col("volume").sum(),
        )
        .sort("symbol", "ts")
    )
    c = coarse.sort("symbol", "ts")
    for col in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(agg[col].to_numpy(), c[col].to_numpy())
    np.testing.assert_allclose(agg["volume"].to_numpy(), c["volume"].to_numpy(), rtol=1e-9)


def test_funding_frame_matches_market_frame() -> None:
    m = simulate_market(PAIR, "2024-01-01", "2024-01-05", "1h", seed=9)
    f = simulate_funding(PAIR, "2024-01-01", "2024-01-05", seed=9)
    # [start, end): 00:00 of the first day is included, 00:00 of the end day is not.
    assert f.height == 2 * 4 * 3
    joined = f.join(m, left_on=["funding_time", "symbol"], right_on=["ts", "symbol"])
    assert joined.height == f.height - 2  # the market frame has no row at the window start
    np.testing.assert_array_equal(joined["funding_rate"].to_numpy(), joined["funding_rate_right"])
    # Mark prices are published with 8 decimals.
    np.testing.assert_allclose(joined["mark_price"], joined["perp_price"], rtol=0, atol=5e-9)
    assert (f["interval_hours"] == 8.0).all()


def test_order_book_and_sentiment_frames() -> None:
    ob = simulate_order_book(PAIR, "2024-01-01", "2024-01-02", "1h", seed=1)
    assert ob.height == 2 * 2 * 24
    assert (ob["best_bid"] < ob["best_ask"]).all()
    assert (ob["bid_depth_50bps_usd"] > ob["bid_depth_10bps_usd"]).all()
    spread = (ob["best_ask"] - ob["best_bid"]) / ob["mid"] * 1e4
    np.testing.assert_allclose(spread.to_numpy(), ob["spread_bps"].to_numpy(), rtol=1e-9)
    s = simulate_sentiment("2024-01-01", "2024-01-02", seed=1)
    assert s.height == 24 and s["score"].is_between(-1, 1).all()
    m = simulate_market(PAIR, "2024-01-01", "2024-01-02", "1h", seed=1)
    joined = m.join(s, on="ts")
    np.testing.assert_array_equal(joined["sentiment"].to_numpy(), joined["score"].to_numpy())


def test_minute_paths_perp_is_spot_times_basis() -> None:
    p = minute_paths("BTC/USDT:USDT", 3_000_000, 3_001_440, seed=0)
    np.testing.assert_allclose(p.perp, p.spot * (1 + p.basis), rtol=1e-12)
    assert p.minutes.shape == p.spot.shape == (1441,)


def test_unknown_symbol_gets_a_deterministic_profile() -> None:
    a, b = symbol_profile("PEPE/USDT:USDT"), symbol_profile("PEPE/USDT")
    assert a == b and a.base == "PEPE" and a.funding_cap > 0


# ---- calibration bands against the real statistics


@pytest.mark.parametrize("symbol", PAIR)
def test_funding_statistics_within_real_bands(long_run: pl.DataFrame, symbol: str) -> None:
    s = _stats(long_run, symbol)
    cap = symbol_profile(symbol).funding_cap * 1e4
    assert 0.6 <= s["mean"] <= 1.8, s  # real 0.93 (2023-25) .. 1.69 (ETH 2020-23) bp/8h
    assert s["median"] == pytest.approx(1.0), s  # the 1 bp floor is the median ...
    assert s["share_floor"] >= 0.40, s  # ... and the exact modal value 0.0001
    assert 0.07 <= s["share_neg"] <= 0.20, s  # real 7.0 .. 15.4 %
    assert s["longest_neg_run"] >= 6, (
        s
    )  # negative streaks in sell-offs (real: 24 prints in Mar 2020)
    assert -cap - 1e-9 <= s["min"] <= -20.0, s  # rare deep negatives, never beyond the cap
    assert 20.0 <= s["max"] <= cap + 1e-9, s  # rare bull extremes, never beyond the cap


@pytest.mark.parametrize("symbol", PAIR)
def test_basis_statistics_within_real_bands(long_run: pl.DataFrame, symbol: str) -> None:
    s = _stats(long_run, symbol)
    assert -2.5 <= s["basis_mean"] <= -0.5, s  # real -1.37 (BTC) / -1.25 (ETH) bp
    assert 3.5 <= s["basis_std"] <= 6.5, s  # real 4.73 / 4.99 bp
    assert 0.60 <= s["basis_neg"] <= 0.82, s  # real 70.9 % / 69.6 %
    assert 0.55 <= s["corr"] <= 0.80, s  # real 0.68 (BTC 8h)
    # Bimodal: both clusters carry at least three times the per-bp mass of the dip between them.
    assert s["low_cluster"] > 3 * s["dip"] and s["high_cluster"] > 3 * s["dip"], s


def test_cross_asset_correlation_and_volatility() -> None:
    f = simulate_market(PAIR, "2020-01-01", "2024-01-01", "1h", seed=0)
    w = f.pivot(on="symbol", index="ts", values="spot_price").drop("ts").to_numpy()
    r = np.diff(np.log(w), axis=0)
    assert 0.6 <= np.corrcoef(r.T)[0, 1] <= 0.9  # real BTC-ETH hourly return correlation ~0.8
    ann_vol = r.std(axis=0) * np.sqrt(24 * 365.25)
    assert 0.4 <= ann_vol[0] <= 0.75 and 0.5 <= ann_vol[1] <= 0.95, ann_vol
    # Fat tails from jumps and stochastic volatility: excess kurtosis of hourly BTC returns.
    x = r[:, 0] - r[:, 0].mean()
    assert (x**4).mean() / (x**2).mean() ** 2 > 6.0


def test_stress_thins_depth_widens_spread_and_moves_sentiment(long_run: pl.DataFrame) -> None:
    btc = long_run.filter(pl.col("symbol") == "BTC/USDT:USDT")
    stressed = btc.filter(pl.col("funding_rate") < -0.0003)  # deep sell-off prints
    calm = btc.filter(pl.col("funding_rate") == 0.0001)
    assert stressed.height >= 10
    assert stressed["spot_depth_usd"].median() < 0.6 * calm["spot_depth_usd"].median()
    assert stressed["spread_bps"].median() > 1.5 * calm["spread_bps"].median()
    assert stressed["sentiment"].median() < -0.3 < calm["sentiment"].median() + 0.3
    corr = np.corrcoef(btc["sentiment"].to_numpy(), btc["funding_rate"].to_numpy())[0, 1]
    assert corr > 0.3


@pytest.mark.slow
def test_two_years_of_minutes_for_six_symbols_in_seconds() -> None:
    t0 = time.perf_counter()
    f = simulate_market(SIX, "2022-01-01", "2024-01-01", "1m", seed=1)
    elapsed = time.perf_counter() - t0
    assert f.height == 6 * 730 * 1440
    assert elapsed < 30.0, f"{elapsed:.1f} s"  # ~5 s on one core here; generous for a shared CI box
