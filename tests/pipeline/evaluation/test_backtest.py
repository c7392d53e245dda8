"""The backtest runner: an independent ledger of funding and costs, equality with `env.step`, the
per-asset P&L identity, and the recorded tables."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from carry_env import CarryTradeEnv, EnvConfig
from carry_env import kernel as k
from carry_pipeline.lib.evaluation.backtest import (
    EQUITY_CURVE_SCHEMA,
    POSITIONS_SCHEMA,
    TRADES_SCHEMA,
    equity_curve_frame,
    positions_frame,
    run_backtest,
    trades_frame,
)
from carry_pipeline.lib.evaluation.baselines import FundingSignRule, LongCarry

from .conftest import random_frame

# Anomalies off: funding spikes and flash prices would put rates and marks in the env that the
# frame does not hold, and the ledger below reads only the frame and the config.
LEDGER_CONFIG = dataclasses.replace(EnvConfig(), anomalies=False)


def _columns(frame: pl.DataFrame, symbol: str) -> dict[str, np.ndarray]:
    part = frame.filter(pl.col("symbol") == symbol).sort("ts")
    return {c: part.get_column(c).to_numpy().astype(float) for c in part.columns if c != "symbol"
            and c != "ts"}  # fmt: skip


def test_long_carry_funding_and_costs_match_an_independent_ledger() -> None:
    # Two symbols, 15 m bars, funding every 8 h with both signs, random depth and spread; fees,
    # spread, impact, funding, borrow, margin and the leverage limit on.
    frame = random_frame(seed=11, n_bars=400)
    env = CarryTradeEnv(frame, LEDGER_CONFIG)
    r = run_backtest(env, LongCarry(), name="lc", start=0, end=399, seed=0)
    fills = trades_frame(r)
    assert r.n_steps == 399 and not r.terminated and (fills["kind"] == "order").all()
    assert fills.height >= 4  # the entry of both assets and some rebalances
    cfg = LEDGER_CONFIG
    funding = fees = spread = impact = 0.0
    for symbol in r.symbols:
        col = _columns(frame, symbol)
        mine = fills.filter(pl.col("symbol") == symbol)
        bar = {ts: i for i, ts in enumerate(frame.filter(pl.col("symbol") == symbol)["ts"])}
        perp_at = np.zeros(400)  # perp quantity held over (t, t + 1], from the fills alone
        for row in mine.iter_rows(named=True):
            t = bar[row["ts"]]
            perp_at[t:] += row["perp_qty"]
            s, p = col["spot_price"][t], col["perp_price"][t]
            assert (row["spot_price"], row["perp_price"]) == (s, p)  # filled at the bar's mid
            ns, np_ = abs(row["spot_qty"]) * s, abs(row["perp_qty"]) * p
            fees += ns * cfg.spot_taker_fee_bps * 1e-4 + np_ * cfg.perp_taker_fee_bps * 1e-4
            spread += (ns + np_) * col["spread_bps"][t] * 0.5e-4
            for x, depth in ((ns, col["spot_depth_usd"][t]), (np_, col["perp_depth_usd"][t])):
                impact += x * (cfg.slippage_k * x / depth + cfg.tick_bps * 1e-4)
        rate = col["funding_rate"]
        for t1 in np.flatnonzero(~np.isnan(rate)):
            if t1 >= 1:  # a print at the first bar settles before the backtest holds anything
                funding += -perp_at[t1 - 1] * col["perp_price"][t1] * rate[t1]
    curve = equity_curve_frame(r)
    assert curve["funding_pnl"].sum() == pytest.approx(funding, rel=1e-9)
    assert curve["fees"].sum() == pytest.approx(fees, rel=1e-9)
    assert curve["spread_cost"].sum() == pytest.approx(spread, rel=1e-9)
    assert curve["impact_cost"].sum() == pytest.approx(impact, rel=1e-9)
    assert curve["slippage"].sum() == pytest.approx(spread + impact, rel=1e-9)
    assert fills["fee"].sum() == pytest.approx(fees, rel=1e-9)
    assert abs(funding) > 10.0  # the ledger is not vacuous: funding of both signs was settled


def test_runner_records_what_env_step_returns() -> None:
    # Same seed, same actions through env.step: every info term and position equal at every step,
    # with every mechanism on (anomalies included).
    frame = random_frame(seed=5, n_bars=300)
    env = CarryTradeEnv(frame, dataclasses.replace(EnvConfig(), flash_crash_per_day=2.0))
    r = run_backtest(env, FundingSignRule(entry_bp=0.5), name="rule", start=10, end=290, seed=3)
    env.reset(seed=3, options={"start": 10, "end": 290})
    for j in range(r.n_steps):
        _, reward, _, _, info = env.step(r.actions[j])
        assert [info[name] for name in k.INFO_NAMES] == r.info[j].tolist()
        assert [info[name] for name in k.FLAG_NAMES] == r.flags[j].tolist()
        assert reward == r.reward[j]
        assert (info["spot_qty"] == r.spot_qty[j]).all() and (
            info["perp_qty"] == r.perp_qty[j]
        ).all()
    assert r.flags[:, k.G_FLASH].any()  # the anomalies did run


def test_asset_pnl_adds_up_to_the_equity_change() -> None:
    # Every mechanism on, flash events frequent: the per-asset step P&L sums to the env's equity
    # change at every step (marks, spiked funding, costs and the shared account flows).
    frame = random_frame(seed=8, n_bars=400)
    config = dataclasses.replace(EnvConfig(), flash_crash_per_day=2.0, funding_spike_prob=0.3)
    env = CarryTradeEnv(frame, config)
    r = run_backtest(env, FundingSignRule(entry_bp=0.3), name="rule", start=0, end=399, seed=1)
    assert np.diff(r.equity) == pytest.approx(r.asset_pnl.sum(axis=1), abs=1e-6)
    assert r.flags[:, k.G_FLASH].any() and r.flags[:, k.G_SPIKE].any()


def test_tables_follow_their_schemas() -> None:
    frame = random_frame(seed=2, n_bars=120)
    env = CarryTradeEnv(frame, EnvConfig())
    r = run_backtest(env, LongCarry(), name="lc", start=0, end=119, seed=0, fold=3)
    curve, pos, fills = equity_curve_frame(r), positions_frame(r), trades_frame(r)
    assert curve.schema == pl.Schema(EQUITY_CURVE_SCHEMA) and curve.height == r.n_steps + 1
    assert pos.schema == pl.Schema(POSITIONS_SCHEMA) and pos.height == 2 * r.n_steps
    assert fills.schema == pl.Schema(TRADES_SCHEMA)
    assert curve["equity"][0] == 100_000.0 and curve["fold"].unique().to_list() == [3]
    assert curve["ts"][0] == frame["ts"][0] and curve["ts"][-1] == frame["ts"][-1]
    assert fills.filter(pl.col("step") == 1)["ts"].to_list() == [frame["ts"][0]] * 2
