"""Hand-computed cash flows of the accounting kernel, one mechanism at a time.

Common setup unless a case says otherwise: equity 100,000 USDT, leverage_cap 1.5, so `a = +1`
targets a hedged notional of 150,000: 75,000 of spot (750 coins at 100) and -75,000 of perp (-750
contracts at 100); the isolated perp posts 75,000 / 3 = 25,000 of collateral. One bar is 15 minutes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from carry_env import CarryTradeDiscreteEnv, CarryTradeEnv, EnvConfig
from carry_env.kernel import margin_buffer, uniform

from .conftest import BAR_YEARS, FRICTIONLESS, booked_flows, make_frame

FLAT = [100.0] * 6


def _env(config: EnvConfig, spot=FLAT, perp=None, funding=None, **frame_kw) -> CarryTradeEnv:
    env = CarryTradeEnv(make_frame(spot, perp, funding, **frame_kw), config)
    env.reset(seed=0)
    return env


def _cfg(**changes) -> EnvConfig:
    return dataclasses.replace(FRICTIONLESS, **changes)


@pytest.mark.parametrize(
    ("action", "rate", "expected"),
    [
        (1.0, 0.0001, 7.5),  # short 750 perps, +1 bp: shorts receive 750 * 100 * 0.0001
        (1.0, -0.0002, -15.0),  # short 750 perps, -2 bp: shorts pay 750 * 100 * 0.0002
        (-1.0, 0.0001, -7.5),  # reverse carry is long 750 perps: longs pay at +1 bp
        (-1.0, -0.0003, 22.5),  # ... and receive at -3 bp
        (0.5, 0.0001, 3.75),  # half size: 375 perps
    ],
)
def test_funding_paid_at_settlement(action: float, rate: float, expected: float) -> None:
    env = _env(FRICTIONLESS, funding=[None, rate, None, None, None, None])
    _, _, _, _, info = env.step(np.array([action]))
    assert info["funding_pnl"] == pytest.approx(expected, abs=1e-9)
    assert info["equity"] == pytest.approx(100_000 + expected, abs=1e-9)
    # No settlement at the next bar: no funding.
    _, _, _, _, info = env.step(np.array([action]))
    assert info["funding_pnl"] == 0.0


def test_funding_uses_perp_price_at_settlement() -> None:
    # Perp moves 100 -> 110 into the settlement: 750 * 110 * 0.0001 = 8.25; price P&L of the perp
    # -7,500, of spot 0 (spot stays at 100).
    env = _env(
        FRICTIONLESS,
        perp=[100, 110, 110, 110, 110, 110],
        funding=[None, 0.0001, None, None, None, None],
    )
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["funding_pnl"] == pytest.approx(8.25)
    assert info["price_pnl"] == pytest.approx(-7_500.0)


@pytest.mark.parametrize(
    ("maker_fraction", "expected"),
    [
        (0.0, 112.5),  # taker: spot 75,000 * 10 bp = 75 + perp 75,000 * 5 bp = 37.5
        (1.0, 90.0),  # maker: spot 75,000 * 10 bp = 75 + perp 75,000 * 2 bp = 15
        (0.5, 101.25),  # half each: spot 75 + perp 37,500 * 2 bp + 37,500 * 5 bp = 7.5 + 18.75
    ],
)
def test_fees(maker_fraction: float, expected: float) -> None:
    env = _env(_cfg(fees=True, maker_fraction=maker_fraction))
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["fees"] == pytest.approx(expected)
    assert info["equity"] == pytest.approx(100_000 - expected)


def test_half_spread_on_taker_notional() -> None:
    # 2 bp spread: half of it, 1 bp, on 150,000 of taker notional = 15.
    env = _env(_cfg(spread=True), spread_bps=2.0)
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["spread_cost"] == pytest.approx(15.0)
    assert info["slippage"] == pytest.approx(15.0)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # linear: 5e-4 * 75,000 / 1,000,000 = 3.75e-5 of 75,000 = 2.8125 per leg, + tick 0.1 bp =
        # 0.75 per leg
        ("linear", 2 * (2.8125 + 0.75)),
        # sqrt: 5e-4 * sqrt(0.075) = 1.369306e-4 of 75,000 = 10.269797 per leg, + tick 0.75 per leg
        ("sqrt", 2 * (75_000 * 5e-4 * np.sqrt(0.075) + 0.75)),
    ],
)
def test_depth_slippage(model: str, expected: float) -> None:
    env = _env(_cfg(slippage=True, slippage_model=model), depth=1_000_000.0)
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["impact_cost"] == pytest.approx(expected)
    assert info["slippage"] == pytest.approx(expected)


def test_thinner_book_costs_more() -> None:
    deep = _env(_cfg(slippage=True), depth=10_000_000.0).step(np.array([1.0]))[4]["impact_cost"]
    thin = _env(_cfg(slippage=True), depth=100_000.0).step(np.array([1.0]))[4]["impact_cost"]
    assert thin > 10 * deep


def test_borrow_on_short_spot_leg() -> None:
    # Reverse carry: 750 borrowed coins worth 75,000 at 5 % a year for one 15-minute bar.
    env = _env(_cfg(borrow=True))
    _, _, _, _, info = env.step(np.array([-1.0]))
    assert info["borrow_cost"] == pytest.approx(75_000 * 0.05 * BAR_YEARS)
    assert info["spot_qty"][0] == pytest.approx(-750.0)


def test_borrow_on_negative_cash() -> None:
    # leverage_cap 3: spot 150,000 + collateral 50,000 from 100,000 of cash: 100,000 of USDT
    # borrowed at 10 %.
    env = _env(_cfg(borrow=True, leverage_cap=3.0))
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["cash"] == pytest.approx(-100_000 - 100_000 * 0.10 * BAR_YEARS)
    assert info["borrow_cost"] == pytest.approx(100_000 * 0.10 * BAR_YEARS)


def test_reverse_carry_disabled_acts_as_flat() -> None:
    env = _env(_cfg(allow_reverse_carry=False))
    _, _, _, _, info = env.step(np.array([-1.0]))
    assert info["spot_qty"][0] == 0.0 and info["perp_qty"][0] == 0.0


def test_isolated_perp_liquidates_when_one_leg_runs_away() -> None:
    # Both legs +33 %: the short perp loses 750 * 33 = 24,750 of its 25,000 collateral; 250 left
    # against a maintenance of 0.5 % * 99,750 = 498.75 -> ratio 0.5 < 1 -> liquidation at bar 1.
    # Only the perp is closed: 50 bp worse plus the 1 % fee = 99,750 * 0.015 = 1,496.25, more than
    # the 250 of collateral, so the loss stops at 250 (no insurance: the collateral was positive).
    # The spot leg stays open (now unhedged): equity 100,000 -> 99,750.
    env = _env(FRICTIONLESS, spot=[100, 133, 133], perp=[100, 133, 133])
    _, reward, terminated, truncated, info = env.step(np.array([1.0]))
    assert info["liquidated"] and terminated and not truncated
    assert info["price_pnl"] == pytest.approx(0.0)
    assert info["liquidation_loss"] == pytest.approx(250.0)
    assert info["insurance_fund"] == 0.0
    assert info["equity"] == pytest.approx(99_750.0)
    assert info["perp_qty"][0] == 0.0 and info["collateral"][0] == 0.0
    assert info["spot_qty"][0] == pytest.approx(750.0)
    # The reward carries the liquidation penalty (10 % of equity, in bp of equity).
    assert reward == pytest.approx(1e4 * (-250.0 / 100_000 - 0.1))


LOW_FEES = {"liquidation_fee_rate": 0.001, "liquidation_haircut_bps": 10.0}
"""Fee 0.1 % + haircut 10 bp = 0.2 % of notional: below the 0.5 % maintenance, so the collateral
left at liquidation covers the cost and the fee shows in full in the loss."""


def test_isolated_liquidation_fee_covered_by_collateral() -> None:
    # +33 %: 250 of collateral, ratio 0.5. Cost 99,750 * (0.001 + 0.001) = 199.5 < 250: the loss
    # is 199.5 (99.75 of it the fee), 50.5 goes back to cash; equity 100,000 - 199.5.
    env = _env(_cfg(**LOW_FEES), spot=[100, 133, 133], perp=[100, 133, 133])
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["liquidated"]
    assert info["liquidation_loss"] == pytest.approx(199.5)
    assert info["insurance_fund"] == 0.0
    assert info["cash"] == pytest.approx(50.5)
    assert info["equity"] == pytest.approx(100_000 - 199.5)


def test_isolated_liquidation_leaves_other_assets_open() -> None:
    # Two assets, 0.75x carry each: BTC's legs run +33 % (its perp liquidated), ETH stays flat
    # and open; the episode continues (liquidation_ends_episode=False).
    btc = make_frame([100, 133, 133, 133], symbol="BTC/USDT:USDT")
    eth = make_frame([100] * 4, symbol="ETH/USDT:USDT")
    env = CarryTradeEnv(pl.concat([btc, eth]), _cfg(liquidation_ends_episode=False))
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(np.array([1.0, 1.0]))
    assert info["liquidated"] and not terminated
    assert info["perp_qty"][0] == 0.0 and info["spot_qty"][0] != 0.0
    assert info["perp_qty"][1] != 0.0 and info["spot_qty"][1] != 0.0
    _, _, terminated, _, info = env.step(np.array([1.0, 1.0]))
    assert not info["liquidated"] and not terminated


def test_isolated_gap_through_bankruptcy_is_insurance_not_negative_loss() -> None:
    # +40 %: the perp loses 30,000 of its 25,000 collateral (-5,000). The loss stops at the
    # collateral (0 left to lose); the insurance fund books the 5,000 gap; the reward is not
    # positive. Equity: spot 750 * 140 = 105,000 (cash 0).
    env = _env(FRICTIONLESS, spot=[100, 140, 140], perp=[100, 140, 140])
    _, reward, _, _, info = env.step(np.array([1.0]))
    assert info["liquidated"]
    assert info["liquidation_loss"] == 0.0
    assert info["insurance_fund"] == pytest.approx(5_000.0)
    assert info["equity"] == pytest.approx(105_000.0)
    assert reward <= 0.0


def test_unified_liquidates_the_whole_account_with_fee() -> None:
    # Unified, both legs x25 (100 -> 2,500): cash 25,000 - 750 * 2,400 = -1,775,000, spot
    # 1,875,000 * 0.95: margin equity 6,250 < 0.5 % * 1,875,000 = 9,375 -> liquidation. Every leg
    # closes: perp 1,875,000 * (0.5 % + 1 % fee) = 28,125, spot 1,875,000 * 0.5 % = 9,375 -> loss
    # 37,500 out of the 100,000 of equity (18,750 of it the fee).
    env = _env(_cfg(margin_mode="unified"), spot=[100, 2500, 2500], perp=[100, 2500, 2500])
    _, _, terminated, _, info = env.step(np.array([1.0]))
    assert info["liquidated"] and terminated
    assert info["liquidation_loss"] == pytest.approx(37_500.0)
    assert info["insurance_fund"] == 0.0
    assert info["equity"] == pytest.approx(62_500.0)
    assert not info["spot_qty"].any() and not info["perp_qty"].any()


def test_unified_bankruptcy_floors_equity_at_zero() -> None:
    # Unified, the perp alone x3: cash 25,000 - 750 * 200 = -125,000 + spot 75,000 = -50,000 of
    # equity. The account is liquidated, its equity floored at 0: loss 0, the insurance fund takes
    # the 50,000 gap plus the closing costs; bankruptcy ends the episode.
    env = _env(_cfg(margin_mode="unified"), spot=[100, 100, 100], perp=[100, 300, 300])
    _, reward, terminated, _, info = env.step(np.array([1.0]))
    assert info["liquidated"] and info["bankrupt"] and terminated
    assert info["equity"] == 0.0 and info["cash"] == 0.0
    assert info["liquidation_loss"] == 0.0
    assert info["insurance_fund"] == pytest.approx(50_000.0)
    assert info["price_pnl"] == pytest.approx(-150_000.0)
    assert reward < 0.0


def test_unified_funding_is_booked_to_cash() -> None:
    # Unified, short 750 perps at 100, +1 bp settles at bar 1: +7.5 to cash (no collateral posted).
    env = _env(_cfg(margin_mode="unified"), spot=[100] * 3, funding=[None, 0.0001, None])
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["funding_pnl"] == pytest.approx(7.5)
    assert info["cash"] == pytest.approx(25_000 + 7.5)
    assert info["equity"] == pytest.approx(100_000 + 7.5)


def test_isolated_perp_survives_a_smaller_move() -> None:
    # +30 %: 25,000 - 22,500 = 2,500 of collateral against 0.5 % * 97,500 = 487.5: ratio 5.13, no
    # liquidation.
    env = _env(FRICTIONLESS, spot=[100, 130, 130], perp=[100, 130, 130])
    _, _, terminated, _, info = env.step(np.array([1.0]))
    assert not info["liquidated"] and not terminated
    assert info["margin_ratio"] == pytest.approx(2_500 / 487.5)


def test_unified_margin_counts_spot() -> None:
    # Same +33 % move in unified mode: cash 25,000 - 24,750 = 250, spot 99,750 * 0.95 = 94,762.5;
    # requirement 0.5 % * 99,750 = 498.75 -> ratio 95,012.5 / 498.75 = 190.5: safe.
    env = _env(_cfg(margin_mode="unified"), spot=[100, 133, 133], perp=[100, 133, 133])
    _, _, terminated, _, info = env.step(np.array([1.0]))
    assert not terminated
    assert info["margin_ratio"] == pytest.approx(95_012.5 / 498.75)
    assert info["collateral"][0] == 0.0


def test_margin_flag_off_never_liquidates() -> None:
    env = _env(_cfg(margin=False), spot=[100, 190, 190], perp=[100, 190, 190])
    _, _, terminated, _, info = env.step(np.array([1.0]))
    assert not terminated and not info["liquidated"]


HALT_EVERY_BAR = _cfg(
    anomalies=True,
    halt_per_day=96.0,
    halt_bars=3,
    flash_crash_per_day=0.0,
    feed_outage_per_day=0.0,
    funding_spike_prob=0.0,
)
"""A halt starts at the first new bar with probability 1 (96 a day on 15-min bars) for 3 bars."""


def test_halt_blocks_fills() -> None:
    env = _env(HALT_EVERY_BAR)
    # Bar 0 trades normally (nothing to do); bar 1 is halted.
    _, _, _, _, info = env.step(np.array([0.0]))
    assert info["halted"]
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["halted"] and info["fees"] == 0.0 and info["turnover"] == 0.0
    assert info["spot_qty"][0] == 0.0


def test_no_liquidation_while_halted() -> None:
    # The +33 % move of the isolated liquidation case, but every bar from bar 1 on is halted: the
    # margin ratio sits at 0.5 and nothing is liquidated.
    env = _env(HALT_EVERY_BAR, spot=[100] + [133] * 5, perp=[100] + [133] * 5)
    for _ in range(4):
        _, _, terminated, _, info = env.step(np.array([1.0]))
        assert info["halted"] and not info["liquidated"] and not terminated
        assert info["margin_ratio"] == pytest.approx(250 / 498.75)
        assert info["perp_qty"][0] == pytest.approx(-750.0)


def test_halt_masks_every_action_but_hold() -> None:
    env = CarryTradeDiscreteEnv(make_frame(FLAT), HALT_EVERY_BAR)
    env.reset(seed=0)
    assert env.action_masks().all()  # bar 0 is not halted
    env.step(0)
    mask = env.action_masks()
    assert mask[0] and not mask[1:].any()


def test_leverage_clamp() -> None:
    # Prices alternate 100/101: realised vol ~1.86 a year, so with target_vol 0.01 the limit sits at
    # the floor min_leverage = 0.5. a = +1 asks for 150,000 of gross notional; it is clamped to 0.5
    # * 100,000 = 50,000: 25,000 of spot at 101 (episode starts at bar 5).
    cfg = _cfg(leverage_limit=True, target_vol_annual=0.01, min_leverage=0.5)
    env = CarryTradeEnv(make_frame([100.0, 101.0] * 5), cfg)
    env.reset(seed=0, options={"start": 5})
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["clamped"]
    assert info["max_leverage"] == pytest.approx(0.5)
    assert info["spot_qty"][0] == pytest.approx(25_000 / 101.0)
    assert info["perp_qty"][0] == pytest.approx(-25_000 / 101.0)


def test_leverage_budget_is_shared_across_assets() -> None:
    # Two assets at a = +1 each ask for 150,000 each; the budget (max_leverage 1.5) allows 150,000
    # in all: both are scaled by 1/2 -> 37,500 of spot each.
    import polars as pl

    frame = pl.concat([make_frame(FLAT, symbol="BTC"), make_frame(FLAT, symbol="ETH")])
    env = CarryTradeEnv(frame, FRICTIONLESS)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([1.0, 1.0]))
    assert info["clamped"]
    np.testing.assert_allclose(info["spot_qty"], [375.0, 375.0])
    assert info["leverage"] == pytest.approx(1.5)


def test_rebalance_band_skips_small_changes() -> None:
    # Band 2 % of equity = 2,000: moving from a = 1.0 to 0.98 changes each leg by 750 USDT -> not
    # traded.
    env = _env(_cfg(rebalance_band=0.02))
    env.step(np.array([1.0]))
    _, _, _, _, info = env.step(np.array([0.98]))
    assert info["turnover"] == 0.0
    # Flattening always trades, however small the position.
    _, _, _, _, info = env.step(np.array([0.0]))
    assert info["spot_qty"][0] == 0.0 and info["turnover"] == pytest.approx(150_000.0)


def test_rebalance_band_applies_to_the_hedged_pair() -> None:
    # a = 1 at 100/100: 750 coins, -750 perps. The perp alone moves to 102: equity 100,000 - 750 * 2
    # = 98,500, so a = 1 targets 73,875 a leg: spot 738.75 coins (a change of 1,125 USDT, under the
    # 2 % band of 1,970) and perp -73,875 / 102 = -724.2647 (a change of 25.735 * 102 = 2,625, over
    # it). The pair is rebalanced as one: both legs trade (v0 traded the perp leg only).
    env = _env(_cfg(rebalance_band=0.02), perp=[100.0, 102.0, 102.0, 102.0, 102.0, 102.0])
    env.step(np.array([1.0]))
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["spot_qty"][0] == pytest.approx(738.75)
    assert info["perp_qty"][0] == pytest.approx(-73_875 / 102)
    assert info["turnover"] == pytest.approx(1_125.0 + 2_625.0)
    # The minimum order applies to the pair too: a 1,500 USDT floor with no band stops neither leg
    # (the larger change is 2,625) ...
    env = _env(_cfg(min_order_usd=1_500.0), perp=[100.0, 102.0, 102.0, 102.0, 102.0, 102.0])
    env.step(np.array([1.0]))
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["turnover"] == pytest.approx(3_750.0)
    # ... and a 3,000 USDT floor stops both.
    env = _env(_cfg(min_order_usd=3_000.0), perp=[100.0, 102.0, 102.0, 102.0, 102.0, 102.0])
    env.step(np.array([1.0]))
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["turnover"] == 0.0 and info["spot_qty"][0] == pytest.approx(750.0)


def test_nan_action_holds() -> None:
    env = _env(FRICTIONLESS)
    env.step(np.array([1.0]))
    _, _, _, _, info = env.step(np.array([np.nan]))
    assert info["turnover"] == 0.0 and info["spot_qty"][0] == pytest.approx(750.0)


def test_actions_are_clipped() -> None:
    env = _env(FRICTIONLESS)
    _, _, _, _, info = env.step(np.array([7.0]))
    assert info["spot_qty"][0] == pytest.approx(750.0)


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        (np.inf, 1.0),  # flat: as safe as it gets
        (1.0, 0.0),  # on the liquidation line
        (2.0, 0.5),
        (0.25, -1.0),  # deep below: clipped
    ],
)
def test_margin_buffer(ratio: float, expected: float) -> None:
    assert margin_buffer(ratio) == pytest.approx(expected)


def test_anomaly_rng_is_uniform_and_stateless() -> None:
    draws = np.array([uniform(12345, t, 0) for t in range(20_000)])
    assert draws.min() >= 0.0 and draws.max() < 1.0
    assert abs(draws.mean() - 0.5) < 0.01
    assert uniform(12345, 7, 3) == uniform(12345, 7, 3)
    assert uniform(12345, 7, 3) != uniform(12346, 7, 3)


def test_reward_terms_by_hand() -> None:
    # Taker fees of 112.5 on opening (see test_fees), nothing else moves. With drawdown_threshold 0
    # the drawdown penalty is 0.03 per day * (1/96 day) * drawdown 0.001125 = 3.515625e-7 of equity;
    # reward = 1e4 * (-112.5 / 100,000 - 3.515625e-7) = -11.253515625 bp of equity.
    cfg = _cfg(fees=True, drawdown_threshold=0.0)
    env = _env(cfg)
    _, reward, _, _, info = env.step(np.array([1.0]))
    assert info["drawdown"] == pytest.approx(0.001125)
    assert info["reward_costs"] == pytest.approx(11.25)
    assert info["risk_penalty"] == pytest.approx(1e4 * 3.515625e-7)
    assert reward == pytest.approx(-11.253515625)
    assert reward == pytest.approx(
        info["reward_carry"] + info["reward_basis"] - info["reward_costs"] - info["risk_penalty"]
    )


def test_drawdown_breach_terminates() -> None:
    # Fees take 0.1125 % of equity: over a 0.1 % drawdown limit.
    env = _env(_cfg(fees=True, drawdown_limit=0.001))
    _, _, terminated, _, info = env.step(np.array([1.0]))
    assert terminated and info["drawdown_breach"] and not info["liquidated"]


@pytest.mark.parametrize(
    ("mode", "config"),
    [
        ("isolated", _cfg(margin=False, leverage_cap=4.0)),  # margin checks off
        ("unified", _cfg(margin=False, leverage_cap=4.0, margin_mode="unified")),
        ("unified", dataclasses.replace(HALT_EVERY_BAR, leverage_cap=4.0, margin_mode="unified")),
    ],
)
def test_bankruptcy_floors_equity_at_zero(mode: str, config: EnvConfig) -> None:
    # Unhedged by construction: spot collapses 99 % with nothing to liquidate first (margin off,
    # or the venue halted from bar 1). leverage_cap 4: 2,000 coins (200,000) of spot against
    # -2,000 perps at 100. At bar 1 spot is 1: price P&L 2,000 * -99 = -198,000 on 100,000 of
    # equity, 98,000 more than the account holds (isolated: cash -166,666.67 + spot 2,000 +
    # collateral 66,666.67; unified: cash -100,000 + spot 2,000). The venue closes the account,
    # equity ends at 0 and the insurance fund takes the 98,000; the trader's loss is the 100,000.
    assert config.margin_mode == mode
    env = _env(config, spot=[100, 1, 1], perp=[100, 100, 100])
    _, reward, terminated, _, info = env.step(np.array([1.0]))
    assert terminated and info["bankrupt"] and not info["liquidated"]
    assert info["equity"] == 0.0 and info["cash"] == 0.0
    assert not info["spot_qty"].any() and not info["perp_qty"].any()
    assert not info["collateral"].any()
    assert info["price_pnl"] == pytest.approx(-198_000.0)
    assert info["liquidation_loss"] == 0.0
    assert info["insurance_fund"] == pytest.approx(98_000.0)
    assert info["equity"] - 100_000 == pytest.approx(booked_flows(info), abs=1e-6)
    assert reward <= 1e4 * -198_000 / 100_000  # the insurance fund's share is not paid for


def test_funding_settles_at_the_mark_price() -> None:
    # Short 750 perps; at the settlement the last price is 100 but the mark is 102:
    # 750 * 102 * 0.0001 = 7.65 (7.5 at the last price). No mark on other bars: nothing else moves.
    env = _env(
        FRICTIONLESS,
        funding=[None, 0.0001, None, None, None, None],
        mark=[None, 102.0, None, None, None, None],
    )
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["funding_pnl"] == pytest.approx(7.65, abs=1e-9)
    assert info["price_pnl"] == 0.0
    assert info["equity"] == pytest.approx(100_007.65, abs=1e-9)


def test_a_mark_move_through_maintenance_liquidates_at_the_mark() -> None:
    # The last price stays at 100, the mark goes to 133. At the mark the short's 25,000 of
    # collateral is 25,000 - 750 * 33 = 250 against 0.5 % * 750 * 133 = 498.75: ratio 0.5 ->
    # liquidated at the mark. Variation margin is re-booked from 100 to 133 (price P&L -24,750);
    # the haircut and fee (750 * 133 * 1.5 % = 1,496.25) exceed the 250 left, so the loss is 250:
    # the whole 25,000 of collateral is gone, as on an exchange. Spot stays: equity 75,000.
    env = _env(FRICTIONLESS, mark=[100.0, 133.0, 133.0, 133.0, 133.0, 133.0])
    _, _, terminated, _, info = env.step(np.array([1.0]))
    assert info["liquidated"] and terminated
    assert info["price_pnl"] == pytest.approx(-24_750.0)
    assert info["liquidation_loss"] == pytest.approx(250.0)
    assert info["insurance_fund"] == 0.0
    assert info["equity"] == pytest.approx(75_000.0)
    assert info["perp_qty"][0] == 0.0 and info["spot_qty"][0] == pytest.approx(750.0)


FLASH_ON_BAR_1 = _cfg(
    anomalies=True,
    flash_crash_per_day=96.0,
    halt_per_day=0.0,
    feed_outage_per_day=0.0,
    funding_spike_prob=0.0,
    flash_size=0.01,
    flash_basis_overshoot=100.0,
    flash_deepen_bars_max=1,
    flash_basis_widen_bars_max=0,
    perp_leverage=10.0,
)
"""A flash event starts at bar 1 with its trough there: spot gaps 0.5-1.5 %, the perp up to 100x
more (capped at 95 %): a blow-out of the last price only."""


def test_a_flash_spike_of_the_last_price_does_not_liquidate() -> None:
    # Reverse carry at 10x perp leverage (long 750 perps, 7,500 of collateral). Seed 3 draws a
    # crash at bar 1 whose perp gap takes the last price past bankruptcy (the collateral booked at
    # the last price goes negative) while the mark moves with spot only (about -1 %): the margin
    # ratio at the mark stays far above 1 and nothing is liquidated, through the whole event.
    env = CarryTradeEnv(make_frame([100.0] * 8), FLASH_ON_BAR_1)
    env.reset(seed=3)
    _, _, _, _, info = env.step(np.array([-1.0]))
    assert info["flash_event"]
    assert info["collateral"][0] < 0.0  # at the last price the long perp is past bankruptcy
    assert info["margin_ratio"] > 10.0 and not info["liquidated"]
    for _ in range(5):
        _, _, terminated, _, info = env.step(np.array([np.nan]))
        assert not info["liquidated"] and not terminated


def test_intrabar_high_liquidates_a_short_at_its_liquidation_price() -> None:
    # Short 750 perps at 10x: 7,500 of collateral. Bar 1 closes at 105 (collateral 3,750 against
    # 0.5 % * 78,750 = 393.75: ratio 9.5, safe at the close) but trades up to 111 inside the bar:
    # at 111 the collateral is -750, a breach. The liquidation price (ratio exactly 1) is
    # (750 * 105 + 3,750) / (750 * 1.005) = 109.4527; the position fills there: variation margin
    # re-booked from 105 to it (-3,339.55), leaving the maintenance margin 410.45, which the
    # haircut and fee (1.5 % of 82,089.55) exceed: loss 410.45. Spot +3,750 stays open: equity
    # 100,000 - 7,500 + 3,750 = 96,250. Without the high the bar does not liquidate.
    cfg = _cfg(perp_leverage=10.0)
    spot = [100.0, 105.0, 105.0]
    x = (750 * 105 + 3_750) / (750 * 1.005)
    env = _env(cfg, spot=spot, perp_high=[None, 111.0, None])
    _, _, terminated, _, info = env.step(np.array([1.0]))
    assert info["liquidated"] and terminated
    assert info["price_pnl"] == pytest.approx(750 * 5 - 750 * (x - 100))
    assert info["liquidation_loss"] == pytest.approx(0.005 * 750 * x)
    assert info["insurance_fund"] == 0.0
    assert info["equity"] == pytest.approx(96_250.0)
    assert info["equity"] - 100_000 == pytest.approx(booked_flows(info), abs=1e-6)
    _, _, _, _, info = _env(cfg, spot=spot).step(np.array([1.0]))
    assert not info["liquidated"] and info["margin_ratio"] == pytest.approx(3_750 / 393.75)


def test_intrabar_low_liquidates_a_long_perp_but_not_a_short() -> None:
    # The same 10x legs, bar 1 closing at 95 with a low of 89: the long perp of a reverse carry
    # (a = -1) breaches at the low; the short perp of a long carry (a = +1) is checked at the high
    # (none given: the close) and gains.
    cfg = _cfg(perp_leverage=10.0)
    frame = {"spot": [100.0, 95.0, 95.0], "perp_low": [None, 89.0, None]}
    _, _, _, _, info = _env(cfg, **frame).step(np.array([-1.0]))
    assert info["liquidated"]
    _, _, _, _, info = _env(cfg, **frame).step(np.array([1.0]))
    assert not info["liquidated"]


def test_intrabar_spot_high_liquidates_the_spot_account_of_a_reverse_carry() -> None:
    # Reverse carry (a = -1): -750 coins borrowed at 100 and +750 perps (collateral 25,000), cash
    # 100,000 + 75,000 - 25,000 = 150,000. Bar 1 closes at 100: the spot account holds 150,000 -
    # 75,000 = 75,000 against 10 % of the 75,000 borrowed (ratio 10, safe), but both legs trade up
    # to 190 inside the bar. At 190 it holds 7,500 against 14,250: a breach. It crosses the line
    # where 150,000 - 750 s = 10 % * 750 s: s = 150,000 / 825 = 181.82 (lam = 67,500 / 74,250 of
    # the way to the high). The coins are bought back there: price P&L -750 * (s - 100) =
    # -61,363.64 re-booked, the haircut 0.5 % * 750 * s = 681.82 out of the 13,636.36 left, cash
    # 12,954.55. The long perp (checked at its low: none, so the close) stays open with its 25,000
    # (isolated: its gain at the high does not help the spot account). Equity 37,954.55.
    spot = [100.0, 100.0, 100.0]
    high = [None, 190.0, None]
    env = _env(FRICTIONLESS, spot=spot, spot_high=high, perp_high=high)
    _, _, terminated, _, info = env.step(np.array([-1.0]))
    s = 150_000 / 825
    assert info["liquidated"] and terminated
    assert info["spot_qty"][0] == 0.0
    assert info["perp_qty"][0] == pytest.approx(750.0)
    assert info["collateral"][0] == pytest.approx(25_000.0)
    assert info["price_pnl"] == pytest.approx(-750 * (s - 100))
    assert info["liquidation_loss"] == pytest.approx(0.005 * 750 * s)
    assert info["insurance_fund"] == 0.0
    assert info["cash"] == pytest.approx(0.1 * 750 * s - 0.005 * 750 * s)
    assert info["equity"] == pytest.approx(25_000 + 0.095 * 750 * s)
    assert info["equity"] - 100_000 == pytest.approx(booked_flows(info), abs=1e-6)
    # Without the spot high the close alone decides: nothing is liquidated (and the same high
    # without reverse carry's borrowed coins is no risk to the spot account).
    _, _, _, _, info = _env(FRICTIONLESS, spot=spot, perp_high=high).step(np.array([-1.0]))
    assert not info["liquidated"] and info["margin_ratio"] == pytest.approx(10.0)
    _, _, _, _, info = _env(FRICTIONLESS, spot=spot, spot_high=high).step(np.array([1.0]))
    assert not info["liquidated"]


def test_intrabar_spot_low_liquidates_a_spot_account_on_borrowed_usdt() -> None:
    # Long carry at leverage_cap 3: 1,500 coins (150,000) and -1,500 perps (collateral 50,000),
    # cash 100,000 - 150,000 - 50,000 = -100,000 (borrowed USDT). Bar 1 closes at 100 (the spot
    # account holds 50,000 against 10 % of the 100,000 owed: ratio 5) with both legs' low at 60:
    # there it holds -10,000, a breach. Cash stays -100,000 on the way down, so the owed USDT and
    # its maintenance are constant: the line is crossed where 1,500 s - 100,000 = 10,000, s =
    # 73.33. The coins are sold there: price P&L -40,000, the haircut 0.5 % * 110,000 = 550 out of
    # the 10,000 left, cash 9,450. The short perp (checked at its high: none) stays open with its
    # 50,000: equity 59,450. Without the low nothing is liquidated.
    cfg = _cfg(leverage_cap=3.0)
    low = [None, 60.0, None]
    env = _env(cfg, spot=[100.0] * 3, spot_low=low, perp_low=low)
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["liquidated"]
    assert info["spot_qty"][0] == 0.0 and info["perp_qty"][0] == pytest.approx(-1_500.0)
    assert info["price_pnl"] == pytest.approx(-40_000.0)
    assert info["liquidation_loss"] == pytest.approx(550.0)
    assert info["cash"] == pytest.approx(9_450.0)
    assert info["equity"] == pytest.approx(59_450.0)
    assert info["equity"] - 100_000 == pytest.approx(booked_flows(info), abs=1e-6)
    _, _, _, _, info = _env(cfg, spot=[100.0] * 3, perp_low=low).step(np.array([1.0]))
    assert not info["liquidated"] and info["margin_ratio"] == pytest.approx(5.0)


def test_volatility_penalty_grows_with_unhedged_risk() -> None:
    # Same prices, perp pinned: a hedged book barely moves, an unhedged spot leg does.
    spot = [100, 103, 98, 104, 97, 105]
    hedged = _env(_cfg(volatility_penalty=1.0), spot=spot, perp=spot)
    unhedged = _env(_cfg(volatility_penalty=1.0), spot=spot, perp=[100] * 6)
    for _ in range(4):
        _, _, _, _, h = hedged.step(np.array([1.0]))
        _, _, _, _, u = unhedged.step(np.array([1.0]))
    assert h["risk_penalty"] < 1e-9 < u["risk_penalty"]


def test_funding_anomalies_spike_or_flip_the_print() -> None:
    # Every settlement is an anomaly: the rate the short perp (about 750 contracts at 100) is paid
    # on is either the +1 bp print flipped to -1 bp or a spike of 15..30 bp of either sign.
    cfg = _cfg(anomalies=True, funding_spike_prob=1.0, halt_per_day=0.0, flash_crash_per_day=0.0,
               feed_outage_per_day=0.0)  # fmt: skip
    n = 200
    env = _env(cfg, spot=[100.0] * n, funding=[None] + [0.0001] * (n - 1))
    flips = spikes = 0
    for _ in range(n - 1):
        _, _, _, _, info = env.step(np.array([1.0]))
        # funding = -perp_qty * perp_price * rate, on the position held after this step's trade
        rate = info["funding_pnl"] / (-info["perp_qty"][0] * 100.0)
        assert info["funding_spike"]
        if rate == pytest.approx(-1e-4):
            flips += 1
        else:
            assert 15e-4 - 1e-12 <= abs(rate) <= 30e-4 + 1e-12
            spikes += 1
    assert flips > 50 and spikes > 50


AUTO_ADD = _cfg(perp_leverage=10.0, isolated_auto_add_margin=True)
"""Isolated auto-add margin at its defaults (top up below a margin ratio of 2, back to 10), perps at
10x so moderate moves reach the trigger."""


def test_auto_add_margin_tops_up_the_perp_of_a_hedged_pair() -> None:
    # a = 0.5: 375 coins and -375 perps at 100, collateral 37,500 / 10 = 3,750, cash 100,000 -
    # 37,500 - 3,750 = 58,750. Both legs +10 %: the short perp loses 3,750, its collateral is 0
    # (ratio 0: liquidated without the option). Auto-add restores a ratio of 10 at the mark:
    # 10 * 0.5 % * 375 * 110 = 2,062.5 moves from cash to collateral. The spot leg gained what
    # the perp lost: equity stays 100,000, nothing is liquidated.
    env = _env(AUTO_ADD, spot=[100.0, 110.0, 110.0])
    _, reward, terminated, _, info = env.step(np.array([0.5]))
    assert not info["liquidated"] and not terminated
    assert info["margin_added"] == pytest.approx(2_062.5)
    assert info["collateral"][0] == pytest.approx(2_062.5)
    assert info["cash"] == pytest.approx(58_750.0 - 2_062.5)
    assert info["margin_ratio"] == pytest.approx(10.0)
    assert info["equity"] == pytest.approx(100_000.0)
    assert info["equity"] - 100_000 == pytest.approx(booked_flows(info), abs=1e-9)
    assert reward == pytest.approx(0.0, abs=1e-9)  # a transfer: no term of the reward moves
    _, _, _, _, info = env.step(np.array([0.5]))  # ratio 10 >= 2: nothing more is added
    assert info["margin_added"] == 0.0
    off = _env(dataclasses.replace(AUTO_ADD, isolated_auto_add_margin=False), spot=[100.0, 110.0])
    _, _, _, _, info = off.step(np.array([0.5]))
    assert info["liquidated"] and info["margin_added"] == 0.0


def test_auto_add_margin_restores_the_target_at_the_intrabar_extreme() -> None:
    # The same pair (collateral 3,750 at 100) closing bar 1 at 105 with a high of 110: at the close
    # the collateral is 1,875 (ratio 1,875 / 196.875 = 9.5, above the trigger), at the high 0. The
    # top-up restores a ratio of 10 where it is lowest, at the high's mark: 10 * 0.5 % * 375 * 110
    # = 2,062.5 (at the close's mark it would be 1,968.75, leaving the high at 9.5).
    env = _env(AUTO_ADD, spot=[100.0, 105.0, 105.0], perp_high=[None, 110.0, None])
    _, _, _, _, info = env.step(np.array([0.5]))
    assert info["margin_added"] == pytest.approx(2_062.5)
    assert info["collateral"][0] == pytest.approx(1_875.0 + 2_062.5)
    assert not info["liquidated"]
    assert info["margin_ratio"] == pytest.approx(3_937.5 / 196.875)  # the close's ratio


def test_auto_add_margin_never_borrows() -> None:
    # The +33 % case of test_isolated_perp_liquidates_when_one_leg_runs_away: a = 1 at perp
    # leverage 3 leaves cash at 0 (75,000 of spot, 25,000 of collateral), so there is no free cash
    # and the perp is liquidated exactly as without the option.
    env = _env(_cfg(isolated_auto_add_margin=True), spot=[100, 133, 133], perp=[100, 133, 133])
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["margin_added"] == 0.0 and info["liquidated"]
    assert info["liquidation_loss"] == pytest.approx(250.0)
    assert info["equity"] == pytest.approx(99_750.0) and info["cash"] == 0.0


def test_auto_add_margin_too_little_cash_then_intrabar_liquidation() -> None:
    # a = 1 at 10x: 750 coins, -750 perps, collateral 7,500, cash 17,500. Bar 1 closes at 130
    # (collateral 7,500 - 22,500 = -15,000) with a high of 136, where the ratio is lowest:
    # (-15,000 - 750 * 6) / (0.5 % * 750 * 136) = -19,500 / 510. Restoring 10 there needs
    # 5,100 + 19,500 = 24,600; the 17,500 of cash all goes in (collateral 2,500, cash 0). The close
    # is now safe (2,500 / 487.5 = 5.1) but the high still breaches, so the perp is liquidated at
    # its liquidation price with the topped-up collateral: (750 * 130 + 2,500) / (750 * 1.005) =
    # 132.67. There the collateral left is the maintenance margin 0.5 % * 750 * x, which the haircut
    # and fee exceed: that is the loss. Spot stays open: equity 750 * 130 = 97,500.
    env = _env(AUTO_ADD, spot=[100.0, 130.0, 130.0], perp_high=[None, 136.0, None])
    _, _, terminated, _, info = env.step(np.array([1.0]))
    x = (750 * 130 + 2_500) / (750 * 1.005)
    assert info["margin_added"] == pytest.approx(17_500.0)
    assert info["liquidated"] and terminated
    assert info["price_pnl"] == pytest.approx(-750 * (x - 130))
    assert info["liquidation_loss"] == pytest.approx(0.005 * 750 * x)
    assert info["insurance_fund"] == 0.0
    assert info["cash"] == pytest.approx(0.0, abs=1e-9) and info["collateral"][0] == 0.0
    assert info["equity"] == pytest.approx(97_500.0)
    assert info["equity"] - 100_000 == pytest.approx(booked_flows(info), abs=1e-6)


def test_auto_add_margin_leaves_the_spot_account_at_twice_maintenance() -> None:
    # Reverse carry at leverage_cap 4: -2,000 coins (borrowed) and +2,000 perps at 100, collateral
    # 20,000, cash 100,000 + 200,000 - 20,000 = 280,000. Bar 1: spot 115, perp 89.8 (both legs
    # lose): collateral 20,000 - 20,400 = -400, ratio -400 / 898. The spot account holds 280,000 -
    # 230,000 = 50,000 against a maintenance of 10 % * 230,000 = 23,000; it may give up only what
    # keeps it at twice that: 50,000 - 46,000 = 4,000 of the 9,380 the perp would take. Collateral
    # 3,600 (ratio 4.0), the spot account at a margin ratio of 2.0; nothing is liquidated.
    cfg = dataclasses.replace(AUTO_ADD, leverage_cap=4.0)
    env = _env(cfg, spot=[100.0, 115.0, 115.0], perp=[100.0, 89.8, 89.8])
    _, _, _, _, info = env.step(np.array([-1.0]))
    assert info["margin_added"] == pytest.approx(4_000.0)
    assert info["cash"] == pytest.approx(276_000.0)
    assert info["collateral"][0] == pytest.approx(3_600.0)
    assert info["margin_ratio"] == pytest.approx(2.0)
    assert not info["liquidated"]
    assert info["equity"] == pytest.approx(49_600.0)


def test_no_auto_add_while_halted() -> None:
    # The hedged pair of the first auto-add case, every bar from bar 1 on halted: the venue's
    # engine is down, so neither top-ups nor liquidations happen (collateral 0, ratio 0).
    cfg = dataclasses.replace(HALT_EVERY_BAR, perp_leverage=10.0, isolated_auto_add_margin=True)
    env = _env(cfg, spot=[100.0] + [110.0] * 5)
    for _ in range(3):
        _, _, _, _, info = env.step(np.array([0.5]))
        assert info["halted"] and info["margin_added"] == 0.0 and not info["liquidated"]


def test_unified_intrabar_low_liquidates_the_account_where_it_crosses_the_line() -> None:
    # Unified, leverage_cap 4: 2,000 coins (200,000) and -2,000 perps at 100, cash -100,000. Bar 1
    # closes at 100 (margin 190,000 - 100,000 = 90,000 against 10 % of the 100,000 borrowed +
    # 0.5 % of 200,000 = 11,000: ratio 8.2) but spot trades down to 55 inside it, the long spot's
    # adverse extreme (the short perp's is its high: none, so its close). At 55 the margin is
    # 104,500 - 100,000 = 4,500 < 11,000: a breach. On the way down the account crosses the line
    # where 2,000 * s * 0.95 - 100,000 = 11,000: s = 111,000 / 1,900 = 58.42. Every leg closes
    # there: price P&L 2,000 * (s - 100), spot haircut 0.5 % of 2,000 * s, perp haircut + fee
    # 1.5 % of 200,000. v0 and the close-only check liquidate nothing.
    cfg = _cfg(margin_mode="unified", leverage_cap=4.0)
    env = _env(cfg, spot=[100.0] * 3, spot_low=[None, 55.0, None])
    _, _, terminated, _, info = env.step(np.array([1.0]))
    s = 111_000 / 1_900
    assert info["liquidated"] and terminated
    assert not info["spot_qty"].any() and not info["perp_qty"].any()
    assert info["price_pnl"] == pytest.approx(2_000 * (s - 100))
    assert info["liquidation_loss"] == pytest.approx(0.005 * 2_000 * s + 0.015 * 200_000)
    assert info["insurance_fund"] == 0.0
    assert info["equity"] - 100_000 == pytest.approx(booked_flows(info), abs=1e-6)
    _, _, _, _, info = _env(cfg, spot=[100.0] * 3).step(np.array([1.0]))
    assert not info["liquidated"] and info["margin_ratio"] == pytest.approx(90_000 / 11_000)


def test_unified_intrabar_crossing_after_cash_turns_borrowed() -> None:
    # Unified, leverage_cap 1.8: 900 coins and -900 perps at 100, cash 10,000. Bar 1 closes at 100
    # with a perp high of 200. Along the way to it (perp 100 + u * 100) cash is 10,000 - 90,000 u,
    # borrowed once u > 1/9, so the requirement 0.5 % * 900 * perp + 10 % * max(-cash, 0) bends
    # there. Margin 95,500 - 90,000 u meets it at u = 96,050 / 99,450 = 0.9658, past the bend;
    # a straight line through both ends would give 95,050 / 98,450 = 0.9655. The account closes
    # with the perp at 100 + 100 u.
    cfg = _cfg(margin_mode="unified", leverage_cap=1.8)
    env = _env(cfg, perp_high=[None, 200.0, None, None, None, None])
    _, _, _, _, info = env.step(np.array([1.0]))
    assert info["liquidated"]
    x = 100.0 - info["price_pnl"] / 900.0  # the perp price the account was closed at
    assert x == pytest.approx(100.0 * (1.0 + 96_050 / 99_450), rel=1e-12)
    margin = 10_000 - 900 * (x - 100) + 900 * 100 * 0.95
    requirement = 0.005 * 900 * x + 0.1 * max(900 * (x - 100) - 10_000, 0.0)
    assert margin == pytest.approx(requirement, rel=1e-9)
    assert info["liquidation_loss"] == pytest.approx(0.015 * 900 * x + 0.005 * 90_000)
    assert info["equity"] - 100_000 == pytest.approx(booked_flows(info), abs=1e-6)
