"""Rule baselines: the hysteresis state machine on a hand-made signal, the funding rule and long
carry through the env, and their trade counts on a year of real BTC."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from carry_env import CarryTradeEnv, EnvConfig, demo
from carry_pipeline.lib.evaluation.backtest import run_backtest, span_bars
from carry_pipeline.lib.evaluation.baselines import (
    Flat,
    FundingSignRule,
    LongCarry,
    hysteresis_states,
)
from carry_pipeline.lib.evaluation.metrics import summarise

from .conftest import make_frame


def test_hysteresis_states_follow_entry_and_exit_thresholds() -> None:
    # entry 1 bp, exit 0.2 bp. Each signal with the side it must leave:
    signal = [0.5, 1.2, 0.8, 0.3, 0.1, -0.5, -1.5, -0.5, -0.1, 0.5, 2.0, -2.0]
    expected = [
        0,  # 0.5: inside the band, stays flat
        1,  # 1.2 > entry: long carry
        1,  # 0.8: below entry but above exit: hysteresis keeps the long
        1,  # 0.3: still above exit
        0,  # 0.1 < exit: flat
        0,  # -0.5: inside the band
        -1,  # -1.5 < -entry: reverse carry
        -1,  # -0.5: below -exit, kept
        0,  # -0.1 > -exit: flat
        0,  # 0.5: inside
        1,  # 2.0: long
        -1,  # -2.0: straight from long to reverse
    ]
    states = hysteresis_states(np.array(signal)[:, None], entry_bp=1.0, exit_bp=0.2)
    assert states[:, 0].tolist() == expected


def test_funding_rule_requires_an_exit_below_its_entry() -> None:
    with pytest.raises(ValueError, match="exit_bp=1.0 must be below entry_bp=1.0"):
        FundingSignRule(entry_bp=1.0, exit_bp=1.0)


def _funding_path() -> pl.DataFrame:
    # Constant prices; prints (bp) at bars 4, 10, 16, 22, 28 crossing the rule's thresholds.
    funding: list[float | None] = [None] * 40
    for bar, bp in ((4, 2.0), (10, 0.5), (16, 0.1), (22, -2.0), (28, 2.0)):
        funding[bar] = bp * 1e-4
    return make_frame([100.0] * 40, funding=funding, depth=1e8, spread_bps=1.0)


def test_funding_rule_holds_through_the_band_and_trades_at_crossings() -> None:
    # Rule: entry 1 bp, exit 0.2 bp, on the last print. The decision at bar t sees the print
    # settled at t and fills there, so the side after step t is the rule's state after print t.
    env = CarryTradeEnv(_funding_path(), dataclasses.replace(EnvConfig(), anomalies=False))
    rule = FundingSignRule(entry_bp=1.0, exit_bp=0.2, signal="funding_bp")
    r = run_backtest(env, rule, name="rule", start=0, end=39, seed=0)
    side = np.sign(r.spot_qty[:, 0])
    expected = np.zeros(39)
    expected[4:16] = 1  # long from the 2 bp print; the 0.5 bp print at bar 10 keeps it
    expected[16:22] = 0  # 0.1 bp < exit
    expected[22:28] = -1  # -2 bp: reverse carry
    expected[28:] = 1  # 2 bp: long again, straight from reverse
    assert side.tolist() == expected.tolist()
    fills = np.flatnonzero(r.fills[:, 0, 0] != 0)
    assert fills.tolist() == [4, 16, 22, 28]  # no trade at bar 10 and none while holding


def test_long_carry_enters_once_on_a_calm_market() -> None:
    # Constant prices, no anomalies: one entry, then NaN (hold) every bar: one fill in 39 bars.
    env = CarryTradeEnv(_funding_path(), dataclasses.replace(EnvConfig(), anomalies=False))
    r = run_backtest(env, LongCarry(), name="lc", start=0, end=39, seed=0)
    assert np.flatnonzero(r.fills[:, 0, 0] != 0).tolist() == [0]
    assert np.isnan(r.actions[1:, 0]).all()
    # Fully funded: spot 0.75 + collateral 0.25 of equity at a = 1, cash only the entry costs.
    assert r.spot_qty[0, 0] * 100.0 == pytest.approx(75_000.0)


def test_long_carry_rebalances_when_price_drift_leaves_the_band() -> None:
    # Spot (and perp) rise 1 % a bar: the held weight 2 * spot_exposure / 1.5 passes 1.2 (band
    # 0.2) after enough bars, and the rule re-targets once each time, never every bar.
    prices = [100.0 * 1.01**i for i in range(60)]
    env = CarryTradeEnv(
        make_frame(prices, depth=1e8, spread_bps=1.0),
        dataclasses.replace(EnvConfig(), anomalies=False, leverage_limit=False),
    )
    r = run_backtest(env, LongCarry(), name="lc", start=0, end=59, seed=0)
    fills = np.flatnonzero(r.fills[:, 0, 0] != 0)
    assert 2 <= fills.shape[0] <= 4 and fills[0] == 0
    assert not r.flags[:, 1].any() and r.info[:, 9].sum() == 0.0  # no halt, no liquidation


def test_flat_never_trades() -> None:
    env = CarryTradeEnv(_funding_path(), EnvConfig())
    r = run_backtest(env, Flat(), name="flat", start=0, end=39, seed=0)
    assert (r.fills[:, :, :5] == 0).all() and (r.equity == 100_000.0).all()


class _DemoLongCarry:
    # carry_env.demo's always-long-carry (a = 1 every bar) behind the predict interface.
    def reset(self, env: CarryTradeEnv) -> None:
        self.names = env.observation_names

    def predict(self, obs, state=None, episode_start=None, deterministic=True):  # noqa: ANN001
        return demo.always_long_carry(obs, self.names), state


def _year(env: CarryTradeEnv) -> tuple[int, int]:
    return span_bars(env, datetime(2023, 7, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC))


def test_long_carry_on_real_btc_trades_far_less_than_the_demo(real_btc: pl.DataFrame) -> None:
    # A year of real BTC 1 h, every mechanism on. The demo re-targets every bar and the env trades
    # it whenever a leg drifts by 2 % of equity: 412 fills, fees 3.25 % of equity against 9.3 %
    # funding (the 3.6 % / 8.8 % are the same book on another seed and span). LongCarry
    # earns the same funding for 57 fills, most of them forced by the leverage limit (24 h
    # realised vol above 60 % shrinks max_leverage below the held 1.5).
    env = CarryTradeEnv(real_btc, EnvConfig())
    start, end = _year(env)
    dm = summarise(run_backtest(env, _DemoLongCarry(), name="demo", start=start, end=end, seed=0))
    lc = summarise(run_backtest(env, LongCarry(), name="lc", start=start, end=end, seed=0))
    assert dm["fills"] > 400 and 0.030 < dm["fees"] / 1e5 < 0.036
    assert 0.085 < dm["funding"] / 1e5 < 0.095
    assert lc["fills"] < dm["fills"] / 5 and lc["fees"] < 0.5 * dm["fees"]
    assert lc["funding"] > 0.95 * dm["funding"] and lc["liquidations"] == 0
    assert lc["total_return"] > dm["total_return"]


def test_long_carry_on_real_btc_without_the_leverage_limit_trades_a_handful(
    real_btc: pl.DataFrame,
) -> None:
    # With the leverage limit off, only the 20 % band and the margin floor force trades: the entry
    # and four rebalances through BTC's 30k -> 70k year.
    env = CarryTradeEnv(real_btc, dataclasses.replace(EnvConfig(), leverage_limit=False))
    start, end = _year(env)
    m = summarise(run_backtest(env, LongCarry(), name="lc", start=start, end=end, seed=0))
    assert 2 <= m["fills"] <= 8 and m["liquidations"] == 0
