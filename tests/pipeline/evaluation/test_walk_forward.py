"""Walk-forward evaluation: no look-ahead past a fold's test end, aggregation across folds, the
spot buy-and-hold book, and bad input named by fold and policy."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from gymnasium import spaces

from carry_env import CarryTradeEnv, EnvConfig
from carry_pipeline.lib.evaluation.baselines import Flat, FundingSignRule, LongCarry, SpotBuyAndHold
from carry_pipeline.lib.evaluation.walk_forward import (
    METRICS_SCHEMA,
    FoldSpan,
    backtest_fold,
    walk_forward,
)

from .conftest import make_frame, random_frame

T0 = random_frame(seed=0, n_bars=2)["ts"][0]
BAR = timedelta(minutes=15)


def _policies() -> dict[str, object]:
    return {
        "flat": Flat(),
        "long_carry": LongCarry(),
        "funding_rule": FundingSignRule(entry_bp=0.5),
        "spot": SpotBuyAndHold(),
    }


def _spans() -> list[FoldSpan]:
    return [
        FoldSpan(0, T0 + 100 * BAR, T0 + 300 * BAR),
        FoldSpan(1, T0 + 300 * BAR, T0 + 500 * BAR),
    ]


def _perturbed_after(frame: pl.DataFrame, cut: object) -> pl.DataFrame:
    # Prices x1.3, funding sign-flipped and tripled, spread and depth changed from `cut` on.
    after = pl.col("ts") >= cut

    def moved(name: str, expr: pl.Expr) -> pl.Expr:
        return pl.when(after).then(expr).otherwise(pl.col(name)).alias(name)

    return frame.with_columns(
        moved("spot_price", pl.col("spot_price") * 1.3),
        moved("perp_price", pl.col("perp_price") * 1.31),
        moved("funding_rate", pl.col("funding_rate") * -3),
        moved("spread_bps", pl.col("spread_bps") + 5),
        moved("spot_depth_usd", pl.col("spot_depth_usd") / 10),
    )


def test_no_look_ahead_past_the_test_end() -> None:
    # Every mechanism on. Perturbing the market from fold 0's test end on leaves fold 0's metrics
    # bit for bit unchanged and changes fold 1's (so the perturbation is felt where it may be).
    frame = random_frame(seed=4, n_bars=520)
    spans = _spans()
    pol = _policies()
    base = walk_forward(CarryTradeEnv(frame, EnvConfig()), spans, {0: pol, 1: pol}, seed=9)
    moved = _perturbed_after(frame, spans[0].test_end)
    again = walk_forward(CarryTradeEnv(moved, EnvConfig()), spans, {0: pol, 1: pol}, seed=9)
    fold = pl.col("aggregate") == "fold"
    b0 = base.metrics.filter(fold & (pl.col("fold") == 0))
    a0 = again.metrics.filter(fold & (pl.col("fold") == 0))
    assert b0.equals(a0)
    assert base.equity_curves.filter(pl.col("fold") == 0).equals(
        again.equity_curves.filter(pl.col("fold") == 0)
    )
    b1 = base.metrics.filter(fold & (pl.col("fold") == 1) & (pl.col("policy") != "flat"))
    a1 = again.metrics.filter(fold & (pl.col("fold") == 1) & (pl.col("policy") != "flat"))
    assert (b1["final_equity"] != a1["final_equity"]).all()


def test_fold_rows_and_aggregates() -> None:
    frame = random_frame(seed=6, n_bars=520)
    pol = _policies()
    ev = walk_forward(CarryTradeEnv(frame, EnvConfig()), _spans(), {0: pol, 1: pol}, seed=1)
    assert ev.metrics.schema == pl.Schema(METRICS_SCHEMA)
    rows = ev.metrics.filter(pl.col("aggregate") == "fold")
    assert rows.height == 8 and rows["bars"].unique().to_list() == [199.0]  # bars 100..299
    for name in pol:
        mine = rows.filter(pl.col("policy") == name).sort("fold")
        mean = ev.metrics.filter((pl.col("aggregate") == "mean") & (pl.col("policy") == name))
        worst = ev.metrics.filter(
            (pl.col("aggregate") == "worst_fold") & (pl.col("policy") == name)
        )
        r = mine["total_return"].to_numpy()
        assert mean["total_return"][0] == pytest.approx(r.mean())
        assert mean["profitable"][0] == pytest.approx(np.mean(r > 0))  # share of folds profitable
        assert worst["total_return"][0] == r.min() and worst["fold"][0] == int(np.argmin(r))
    flat = rows.filter(pl.col("policy") == "flat")
    assert (flat["total_return"] == 0.0).all() and flat["sharpe"].is_nan().all()


def test_spot_buy_and_hold_by_hand() -> None:
    # Spot 100 -> 110 over 4 bars, depth 1e8, spread 2 bp, anomalies off. Notional x with
    # x * (1 + 10 bp fee + 1 bp half-spread + 0.1 bp tick + 5e-4 * x / 1e8) = 100,000:
    # x = 99,889.07 (to 1e-2), q = x / 100, equity at the end = 100,000 - costs + q * 10.
    spot = [100.0, 102.0, 105.0, 108.0, 110.0]
    frame = make_frame(spot, depth=1e8, spread_bps=2.0)
    env = CarryTradeEnv(frame, EnvConfig(anomalies=False))
    span = FoldSpan(0, T0, T0 + 5 * BAR)
    ev = backtest_fold(env, span, {"spot": SpotBuyAndHold()}, seed=0)
    x = 100_000.0 / (1.0 + 0.00111 + 5e-4 * 1e5 / 1e8)
    assert x == pytest.approx(99_889.07, abs=1e-2)
    costs = x * 0.00111 + x * 5e-4 * x / 1e8
    row = ev.metrics.row(0, named=True)
    assert row["fees"] == pytest.approx(x * 0.001)
    assert row["final_equity"] == pytest.approx(100_000.0 - costs - x + (x / 100.0) * 110.0)
    curve = ev.equity_curves["equity"].to_numpy()
    q = x / 100.0
    assert curve[1:] == pytest.approx(100_000.0 - costs - x + q * np.array(spot[1:]))


class _Wrong:
    # A model for another env: observation space of 5 values, actions for two assets.
    observation_space = spaces.Box(-1.0, 1.0, (5,))

    def predict(self, obs, state=None, episode_start=None, deterministic=True):  # noqa: ANN001
        return np.zeros(2), state


class _TwoActions:
    def predict(self, obs, state=None, episode_start=None, deterministic=True):  # noqa: ANN001
        return np.zeros(2), state


@pytest.fixture(scope="module")
def one_symbol_env() -> CarryTradeEnv:
    return CarryTradeEnv(make_frame([100.0] * 50), EnvConfig())


def test_empty_test_span_is_named(one_symbol_env: CarryTradeEnv) -> None:
    span = FoldSpan(3, T0 + 10 * BAR + timedelta(minutes=1), T0 + 11 * BAR)
    with pytest.raises(ValueError, match="fold 3: test span is empty: .* holds 0 bars"):
        backtest_fold(one_symbol_env, span, {"flat": Flat()}, seed=0)


def test_action_of_the_wrong_shape_is_named(one_symbol_env: CarryTradeEnv) -> None:
    span = FoldSpan(2, T0, T0 + 20 * BAR)
    with pytest.raises(ValueError, match="fold 2, policy 'meta': action has shape \\(2,\\)"):
        backtest_fold(one_symbol_env, span, {"meta": _TwoActions()}, seed=0)


def test_observation_size_mismatch_is_named(one_symbol_env: CarryTradeEnv) -> None:
    span = FoldSpan(1, T0, T0 + 20 * BAR)
    with pytest.raises(
        ValueError, match="fold 1, policy 'expert': .* shape \\(5,\\), the env gives \\(30,\\)"
    ):
        backtest_fold(one_symbol_env, span, {"expert": _Wrong()}, seed=0)


def test_missing_policies_are_named(one_symbol_env: CarryTradeEnv) -> None:
    spans = [FoldSpan(0, T0, T0 + 20 * BAR), FoldSpan(1, T0 + 20 * BAR, T0 + 40 * BAR)]
    with pytest.raises(ValueError, match="fold 1: no policies to backtest"):
        walk_forward(one_symbol_env, spans, {0: {"flat": Flat()}}, seed=0)
    with pytest.raises(ValueError, match="fold 0: policy 'meta' has no model"):
        backtest_fold(one_symbol_env, spans[0], {"flat": Flat(), "meta": None}, seed=0)
