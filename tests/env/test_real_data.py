"""The env on real Binance BTCUSDT data, 2023-06 .. 2025-03: 1 h spot/perp closes, 8 h prints.

The files live in `../shared/data/real/gobbles404_perp_arb/raw_fe434800` (no licence: read at test
time, never copied into the repository); the tests skip when `../shared` is not beside the
repository.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from carry_env import CarryTradeEnv, EnvConfig, MarketData

from .conftest import FRICTIONLESS, booked_flows

RAW = Path(__file__).resolve().parents[3] / "shared/data/real/gobbles404_perp_arb/raw_fe434800"
pytestmark = pytest.mark.skipif(not RAW.exists(), reason="../shared/data is not beside the repo")


def _closes(name: str, column: str) -> pl.DataFrame:
    # 1 h klines stamped with their open time: the close is known at open + 1 h.
    return pl.read_csv(RAW / name, try_parse_dates=True).select(
        ts=(pl.col("Timestamp") + timedelta(hours=1)).dt.replace_time_zone("UTC"),
        **{column: pl.col("Close")},
    )


@pytest.fixture(scope="module")
def funding() -> pl.DataFrame:
    """The settlement prints, as published (UTC)."""
    return pl.read_csv(RAW / "BTCUSDT_8h_funding_rates.csv", try_parse_dates=True).select(
        ts=pl.col("Timestamp").dt.replace_time_zone("UTC"), funding_rate=pl.col("Rate")
    )


@pytest.fixture(scope="module")
def frame(funding: pl.DataFrame) -> pl.DataFrame:
    """The market frame: bar-close ts, both closes, the print settled at each bar, else null."""
    bars = _closes("BTCUSDT_1h_spot.csv", "spot_price").join(
        _closes("BTCUSDT_1h_perps.csv", "perp_price"), on="ts", how="inner"
    )
    bars = bars.head(bars.height - 1)  # the last kline was still open when the files were fetched
    return bars.join(funding, on="ts", how="left").with_columns(symbol=pl.lit("BTC/USDT:USDT"))


def test_real_frame_is_a_valid_market(frame: pl.DataFrame) -> None:
    market = MarketData.from_frame(frame)
    assert market.n_bars == 15_591 and market.bar_seconds == 3_600.0
    settled = ~np.isnan(market.funding[:, 0])
    assert np.all(np.diff(market.ts[settled]) == 8 * 3_600 * 10**9)  # an 8 h cadence throughout


def test_funding_cash_flow_equals_the_prints(frame: pl.DataFrame, funding: pl.DataFrame) -> None:
    # Open a = 1 on the first bar, then hold: the env's funding over 21 months must equal -perp_qty
    # * perp close at each settlement * print, summed independently from the raw files. Margin is
    # off so that the untouched short survives BTC's rally (27k -> 100k).
    env = CarryTradeEnv(frame, dataclasses.replace(FRICTIONLESS, margin=False))
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([1.0]))
    perp_qty = info["perp_qty"][0]
    total = info["funding_pnl"]
    while True:
        _, _, terminated, truncated, info = env.step(np.array([np.nan]))
        total += info["funding_pnl"]
        if terminated or truncated:
            break
    first_close = frame.get_column("ts").min()
    prints = frame.filter(pl.col("funding_rate").is_not_null() & (pl.col("ts") > first_close))
    expected = float((-perp_qty * prints["perp_price"] * prints["funding_rate"]).sum())
    assert perp_qty == pytest.approx(-75_000 / frame["perp_price"][0])
    assert total == pytest.approx(expected, rel=1e-12)
    assert prints.height == 1_944  # 1,945 prints, less the one settled before the first bar closed


def test_every_mechanism_on_real_data_keeps_the_identity(frame: pl.DataFrame) -> None:
    # Rebalanced long carry with fees, spread, slippage, borrow, margin and anomalies on: the
    # identity holds at every hour, the hedge never liquidates (the collateral is reset at each perp
    # trade), and the book earns the carry (the data's mean print is 0.925 bp per 8 h, ~10 % a year,
    # on 75 % of equity in perp notional) net of what rebalancing through a 3.6x rally costs.
    config = dataclasses.replace(EnvConfig(), drawdown_limit=0.0)
    env = CarryTradeEnv(frame, config)
    _, info = env.reset(seed=3)
    equity, funding, costs = info["equity"], 0.0, 0.0
    while True:
        _, _, terminated, truncated, info = env.step(np.array([1.0]))
        flows = booked_flows(info)
        assert info["equity"] - equity == pytest.approx(flows, abs=1e-6)
        equity = info["equity"]
        funding += info["funding_pnl"]
        costs += info["fees"] + info["slippage"] + info["borrow_cost"]
        if terminated or truncated:
            break
    assert truncated and not info["liquidated"]
    years = frame.height / (24 * 365)
    carry = funding / config.initial_cash / years
    assert 0.05 < carry < 0.15  # annual funding income as a share of starting equity
    assert funding > costs


def test_rebalances_on_real_data_trade_both_legs_or_neither(frame: pl.DataFrame) -> None:
    # Long carry at a = 1 through 21 months of 1 h bars: the band sends each leg past it at
    # different bars when the basis moves (v0: 26 of 905 rebalances traded one leg only, leaving the
    # book unhedged until the other leg crossed the band too). Now the pair moves as one.
    env = CarryTradeEnv(frame, dataclasses.replace(EnvConfig(), drawdown_limit=0.0))
    _, info = env.reset(seed=3)
    spot, perp = info["spot_qty"][0], info["perp_qty"][0]
    rebalances = one_leg = 0
    while True:
        _, _, terminated, truncated, info = env.step(np.array([1.0]))
        moved_s, moved_p = info["spot_qty"][0] != spot, info["perp_qty"][0] != perp
        rebalances += moved_s or moved_p
        one_leg += moved_s != moved_p
        spot, perp = info["spot_qty"][0], info["perp_qty"][0]
        if terminated or truncated:
            break
    assert rebalances > 500 and one_leg == 0


EIGHT_HOURS = RAW.parent / "BTCUSDT_8h.csv"
BREACHING_LOWS = (
    "2023-08-17 16:00",
    "2024-01-03 08:00",
    "2024-03-05 16:00",
    "2024-04-13 16:00",
    "2024-08-05 00:00",
    "2024-12-05 16:00",
)
"""Opens (UTC) of the 8 h candles whose perp low is more than 9.55 % below the open: where a long
perp at 10x (liquidated below `0.9 / 0.995` of its entry) breaches maintenance inside the bar.
None of them closes that far down."""


@pytest.fixture(scope="module")
def frame_8h() -> pl.DataFrame:
    """8 h bars stamped at their close: both legs' close, high and low, the print settled at the
    close and the mark published with it (null where the file has none)."""
    raw = pl.read_csv(EIGHT_HOURS, try_parse_dates=True)
    prints = raw.select(
        ts=pl.col("Timestamp").dt.replace_time_zone("UTC"),
        funding_rate=pl.col("funding_rate"),
        mark_price=pl.col("funding_markPrice").cast(pl.Float64),  # read as text: leading nulls
    )
    bars = raw.head(raw.height - 1).select(  # the last candle was still open
        ts=(pl.col("Timestamp") + timedelta(hours=8)).dt.replace_time_zone("UTC"),
        spot_price=pl.col("spot_close"),
        perp_price=pl.col("perp_close"),
        perp_high=pl.col("perp_high"),
        perp_low=pl.col("perp_low"),
        spot_high=pl.col("spot_high"),
        spot_low=pl.col("spot_low"),
    )
    return bars.join(prints, on="ts", how="left").with_columns(symbol=pl.lit("BTC/USDT:USDT"))


@pytest.mark.parametrize("with_mark", [False, True])
def test_intrabar_lows_liquidate_a_10x_long_perp_on_real_8h_bars(
    frame_8h: pl.DataFrame, with_mark: bool
) -> None:
    # Reverse carry (long perp) re-opened every bar at perp_leverage 10 (no band: the perp trades
    # and its collateral is reset at each bar's close), liquidations not ending the episode. The
    # perp is liquidated in exactly the six candles whose low breaches maintenance; at the closes
    # alone (v0, or a frame without high/low) none is. With the published marks the same six.
    frame = frame_8h if with_mark else frame_8h.drop("mark_price")
    config = dataclasses.replace(FRICTIONLESS, perp_leverage=10.0, liquidation_ends_episode=False)

    def liquidated_candles(frame: pl.DataFrame) -> list[str]:
        env = CarryTradeEnv(frame, config)
        _, info = env.reset(seed=0)
        equity, opens = info["equity"], []
        while True:
            _, _, terminated, truncated, info = env.step(np.array([-1.0]))
            assert info["equity"] - equity == pytest.approx(booked_flows(info), abs=1e-6)
            equity = info["equity"]
            if info["liquidated"]:  # the bar just closed: its candle opened 8 h earlier
                close = np.datetime64(int(env.market.ts[env.engine.is_[0, 0]]), "ns")
                opens.append(str(close - np.timedelta64(8, "h"))[:16].replace("T", " "))
            if terminated or truncated:
                break
        assert truncated
        return opens

    assert liquidated_candles(frame) == list(BREACHING_LOWS)
    assert liquidated_candles(frame.drop("perp_high", "perp_low")) == []


@pytest.mark.parametrize(("weight", "at_10x"), [(1.0, 39), (-1.0, 12)])
def test_unified_intrabar_margin_on_real_8h_bars_is_a_bound(
    frame_8h: pl.DataFrame, weight: float, at_10x: int
) -> None:
    # A hedged unified carry re-opened every bar (long carry, then reverse), liquidations not
    # ending the episode: every leg at its adverse extreme of the bar liquidates none at 4x (the
    # default is 1.5x) and some at 10x, where the closes alone liquidate none. The extremes of the
    # two legs need not coincide, so at 10x those candles are the bound's, charged both legs'
    # ranges at once (39 long, 12 reverse on 2023-06..2025-03, funding and marks as published).
    def liquidations(frame: pl.DataFrame, leverage_cap: float) -> int:
        config = dataclasses.replace(
            FRICTIONLESS,
            margin_mode="unified",
            leverage_cap=leverage_cap,
            liquidation_ends_episode=False,
        )
        return count_liquidations(frame, config, weight)

    closes = frame_8h.drop("perp_high", "perp_low", "spot_high", "spot_low")
    assert liquidations(frame_8h, 4.0) == 0
    assert liquidations(closes, 10.0) == 0
    assert liquidations(frame_8h, 10.0) == at_10x


@pytest.mark.parametrize(("weight", "with_range", "at_closes"), [(-1.0, 14, 4), (1.0, 6, 1)])
def test_spot_extremes_liquidate_the_isolated_spot_account_on_real_8h_bars(
    frame_8h: pl.DataFrame, weight: float, with_range: int, at_closes: int
) -> None:
    # Isolated carry at leverage_cap 4 re-opened every bar, liquidations not ending the episode.
    # Reverse: 2 coins borrowed per unit of equity against 2.33 of cash, so the spot account
    # breaches once spot is 6.1 % above the entry; long: 1.67 of USDT borrowed against 2 coins,
    # breaching 8.3 % below it. The spot legs' highs (lows) breach in 14 (6) bars, the closes in
    # 4 (1); every one closes the spot legs only (the 3x perps stay open).
    def spot_only(info: dict) -> bool:
        return info["spot_qty"][0] == 0.0 and info["perp_qty"][0] != 0.0

    def liquidations(frame: pl.DataFrame) -> int:
        config = dataclasses.replace(FRICTIONLESS, leverage_cap=4.0, liquidation_ends_episode=False)
        return count_liquidations(frame, config, weight, spot_only)

    assert liquidations(frame_8h) == with_range
    assert liquidations(frame_8h.drop("spot_high", "spot_low")) == at_closes


def test_funding_on_real_8h_bars_settles_at_the_published_mark(frame_8h: pl.DataFrame) -> None:
    # Long carry opened on the first bar and held (margin off, so the short survives the rally):
    # each print pays -perp_qty * mark * rate, with the mark published with the print where the
    # file has one (1,503 of the 1,958 prints after the first bar) and the perp close where not.
    env = CarryTradeEnv(frame_8h, dataclasses.replace(FRICTIONLESS, margin=False))
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([1.0]))
    perp_qty, total = info["perp_qty"][0], info["funding_pnl"]
    while True:
        _, _, terminated, truncated, info = env.step(np.array([np.nan]))
        total += info["funding_pnl"]
        if terminated or truncated:
            break
    prints = frame_8h.slice(1).filter(pl.col("funding_rate").is_not_null())
    mark = prints["mark_price"].fill_null(prints["perp_price"])
    assert prints["mark_price"].is_not_null().sum() == 1_503 and prints.height == 1_958
    assert total == pytest.approx(
        float((-perp_qty * mark * prints["funding_rate"]).sum()), rel=1e-12
    )
    at_last = float((-perp_qty * prints["perp_price"] * prints["funding_rate"]).sum())
    assert abs(total - at_last) > 1e-6 * abs(total)  # the marks differ from the closes


def count_liquidations(
    frame: pl.DataFrame, config: EnvConfig, weight: float, check: Any = None
) -> int:
    """Liquidations of a carry of `weight` re-opened every bar over the whole frame (the config
    must not end the episode at one); each step keeps the cash-flow identity, and each
    liquidating step's info passes `check` when given."""
    env = CarryTradeEnv(frame, config)
    _, info = env.reset(seed=0)
    equity, count = info["equity"], 0
    while True:
        _, _, terminated, truncated, info = env.step(np.array([weight]))
        assert info["equity"] - equity == pytest.approx(booked_flows(info), abs=1e-6)
        if info["liquidated"] and check is not None:
            assert check(info)
        equity, count = info["equity"], count + bool(info["liquidated"])
        if terminated or truncated:
            return count
