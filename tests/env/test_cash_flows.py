"""Cash flows and trading rules the kernel tests leave open (setup as in `test_kernel.py`): the
maker share's half-spread and impact, borrow on the price a short spot leg was held at while prices
move, each leg's impact on its own book, execution costs leaving cash, the rebalance band as a
fraction of current equity and on closing, and held positions in the leverage budget."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from carry_env import CarryTradeEnv, EnvConfig

from .conftest import BAR_YEARS, FRICTIONLESS, make_frame


def _env(config: EnvConfig, spot=(100.0,) * 6, **frame_kw) -> CarryTradeEnv:  # noqa: ANN001
    env = CarryTradeEnv(make_frame(list(spot), **frame_kw), config)
    env.reset(seed=0)
    return env


def test_half_spread_only_on_the_taker_share() -> None:
    # maker_fraction 0.5: 75,000 of the 150,000 traded is taker; half of 2 bp on it is 7.5.
    config = dataclasses.replace(FRICTIONLESS, spread=True, maker_fraction=0.5)
    _, _, _, _, info = _env(config, spread_bps=2.0).step(np.array([1.0]))
    assert info["spread_cost"] == pytest.approx(7.5)
    assert info["equity"] == pytest.approx(100_000 - 7.5)


def test_impact_only_on_the_taker_share() -> None:
    # Per leg 37,500 of taker notional: linear impact 5e-4 * 37,500 / 1,000,000 = 1.875e-5 plus
    # the 0.1 bp tick, of 37,500: 0.703125 + 0.375 = 1.078125; two legs.
    config = dataclasses.replace(FRICTIONLESS, slippage=True, maker_fraction=0.5)
    _, _, _, _, info = _env(config, depth=1_000_000.0).step(np.array([1.0]))
    assert info["impact_cost"] == pytest.approx(2 * 1.078125)


def test_borrow_accrues_on_the_price_the_short_was_held_at() -> None:
    # Reverse carry with spot 100 -> 120 -> 90: the first bar borrows 750 coins held at 100, the
    # second the coins held from 120 (not the 90 the bar ends at).
    config = dataclasses.replace(FRICTIONLESS, borrow=True)
    env = _env(config, spot=(100.0, 120.0, 90.0, 90.0, 90.0, 90.0))
    _, _, _, _, first = env.step(np.array([-1.0]))
    assert first["borrow_cost"] == pytest.approx(750 * 100.0 * 0.05 * BAR_YEARS)
    _, _, _, _, second = env.step(np.array([-1.0]))
    held = -second["spot_qty"][0]
    assert held > 0
    assert second["borrow_cost"] == pytest.approx(held * 120.0 * 0.05 * BAR_YEARS)


def test_each_leg_pays_impact_on_its_own_book() -> None:
    # Spot book 1,000,000 deep, perp book 4,000,000: 75,000 a leg, linear impact 5e-4 * 75,000 /
    # depth plus the 0.1 bp tick, of 75,000. Spot: 3.75e-5 -> 2.8125 + 0.75 = 3.5625; perp:
    # 9.375e-6 -> 0.703125 + 0.75 = 1.453125.
    frame = make_frame([100.0] * 6).with_columns(
        pl.lit(1_000_000.0).alias("spot_depth_usd"), pl.lit(4_000_000.0).alias("perp_depth_usd")
    )
    env = CarryTradeEnv(frame, dataclasses.replace(FRICTIONLESS, slippage=True))
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["impact_cost"] == pytest.approx(3.5625 + 1.453125)


def test_every_execution_cost_leaves_cash() -> None:
    # Fees (taker: spot 75 + perp 37.5 = 112.5), half of a 2 bp spread on 150,000 (15) and linear
    # impact plus tick on a 1,000,000 book (2 * 3.5625 = 7.125): 134.625 leaves cash, which after
    # 75,000 of spot and 25,000 of collateral is -134.625; equity 100,000 - 134.625.
    config = dataclasses.replace(FRICTIONLESS, fees=True, spread=True, slippage=True)
    _, _, _, _, info = _env(config, spread_bps=2.0, depth=1_000_000.0).step(np.array([1.0]))
    assert (info["fees"], info["spread_cost"], info["impact_cost"]) == pytest.approx(
        (112.5, 15.0, 7.125)
    )
    assert info["cash"] == pytest.approx(-134.625)
    assert info["equity"] == pytest.approx(100_000 - 134.625)


def test_rebalance_band_is_a_fraction_of_current_equity() -> None:
    # The perp alone falls 100 -> 50: the short perp gains 750 * 50 = 37,500, equity 137,500.
    # Rebalancing at a = 1 targets 0.5 * 137,500 * 1.5 = 103,125 a leg (1,031.25 coins, -2,062.5
    # perps). Then a = 0.98 changes each leg by 2 % of 103,125 = 2,062.5: under the 2 % band of the
    # current equity (2,750), so nothing trades; a band of the starting cash (2,000) would trade.
    config = dataclasses.replace(FRICTIONLESS, rebalance_band=0.02)
    env = _env(config, perp=[100.0] + [50.0] * 5)
    env.step(np.array([1.0]))
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["equity"] == pytest.approx(137_500.0)
    assert info["spot_qty"][0] == pytest.approx(1_031.25)
    _, _, _, _, info = env.step(np.array([0.98]))
    assert info["turnover"] == 0.0 and info["spot_qty"][0] == pytest.approx(1_031.25)


def test_closing_a_pair_smaller_than_the_band_trades() -> None:
    # Both legs fall 100 -> 2 (hedged: equity stays 100,000): each leg is now 750 * 2 = 1,500,
    # under the 2 % band of 2,000. Flattening trades anyway: 3,000 of turnover, both legs 0.
    config = dataclasses.replace(FRICTIONLESS, rebalance_band=0.02)
    env = _env(config, spot=[100.0] + [2.0] * 5, perp=[100.0] + [2.0] * 5)
    env.step(np.array([1.0]))
    _, _, _, _, info = env.step(np.array([0.0]))
    assert info["turnover"] == pytest.approx(3_000.0)
    assert info["spot_qty"][0] == 0.0 and info["perp_qty"][0] == 0.0


def test_held_positions_use_up_the_leverage_budget() -> None:
    # Two assets, max_leverage 1.5 (limit off). a = [0.5, 0]: BTC 75,000 of gross notional uses
    # 75,000 / 1.5 = 50,000 of the 100,000 budget. Then BTC is held (NaN) and ETH asks for a = 1,
    # 150,000 / 1.5 = 100,000 of budget with 50,000 left: scaled by 1/2 -> 37,500 a leg, 375 coins.
    frame = pl.concat(
        [make_frame([100.0] * 6, symbol="BTC"), make_frame([100.0] * 6, symbol="ETH")]
    )
    env = CarryTradeEnv(frame, FRICTIONLESS)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([0.5, 0.0]))
    assert not info["clamped"] and info["spot_qty"][0] == pytest.approx(375.0)
    _, _, _, _, info = env.step(np.array([np.nan, 1.0]))
    assert info["clamped"]
    np.testing.assert_allclose(info["spot_qty"], [375.0, 375.0])
    np.testing.assert_allclose(info["perp_qty"], [-375.0, -375.0])
