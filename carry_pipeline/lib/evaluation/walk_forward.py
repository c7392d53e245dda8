"""Walk-forward evaluation: named policies on each fold's test span, one metrics row per (fold,
policy), and the rows aggregated across folds.

A fold's test span is half-open on bar close times, `test_start <= ts < test_end`
(`carry_pipeline.lib.features.folds`); the backtest starts flat at its first bar and ends at its
last, so nothing after `test_end` enters a fold's figures (the env's observation at a bar uses only
data stamped at or before it). Every policy of a fold runs with the same seed, so all meet the same
anomaly path.

`reports.backtest_metrics` (`METRICS_SCHEMA`): `aggregate = "fold"` rows, one per fold and policy;
then per policy `aggregate = "mean"` (the mean of each metric over the folds; `profitable` becomes
the share of folds profitable; NaN and inf propagate, never hidden) and `aggregate = "worst_fold"`
(the row of the fold with the lowest total return, its `fold` kept).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from carry_env import kernel as k
from carry_env.env import CarryTradeEnv
from carry_pipeline.lib.evaluation.backtest import (
    BacktestResult,
    Policy,
    equity_curve_frame,
    positions_frame,
    run_backtest,
    span_bars,
    trades_frame,
)
from carry_pipeline.lib.evaluation.baselines import SpotBuyAndHold
from carry_pipeline.lib.evaluation.metrics import METRIC_COLUMNS, drawdown, summarise

METRICS_SCHEMA: dict[str, pl.DataType] = {
    "fold": pl.Int64(),
    "aggregate": pl.String(),
    "policy": pl.String(),
    **{name: pl.Float64() for name in METRIC_COLUMNS},
}
"""`reports.backtest_metrics`; the metric columns are defined in
`carry_pipeline.lib.evaluation.metrics`."""


@dataclass(frozen=True)
class FoldSpan:
    """The test span of one walk-forward fold, `[test_start, test_end)`."""

    fold: int
    test_start: datetime
    test_end: datetime


def fold_spans(folds: pl.DataFrame) -> list[FoldSpan]:
    """The test spans of a `walk_forward_folds` frame (the latest window has none and is skipped).

    Raises:
        ValueError: a fold that is not the latest window lacks a test span.
    """
    spans = []
    for row in folds.filter(~pl.col("is_latest")).sort("fold").iter_rows(named=True):
        if row["test_start"] is None or row["test_end"] is None:
            raise ValueError(f"fold {row['fold']}: no test span (test_start/test_end are null)")
        spans.append(FoldSpan(row["fold"], row["test_start"], row["test_end"]))
    return spans


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Backtests of named policies: the metrics rows, the three recorded tables and the results."""

    metrics: pl.DataFrame
    equity_curves: pl.DataFrame
    positions: pl.DataFrame
    trades: pl.DataFrame
    results: dict[tuple[int, str], BacktestResult]


def backtest_fold(
    env: CarryTradeEnv,
    span: FoldSpan,
    policies: Mapping[str, Policy | None],
    *,
    seed: int,
) -> Evaluation:
    """Run every named policy on the fold's test span only.

    Raises:
        ValueError: no policy for the fold, a policy that is None (no trained model), an empty test
            span, or a policy that does not fit the env; the message names the fold (and policy).
    """
    if not policies:
        raise ValueError(f"fold {span.fold}: no policies to backtest")
    try:
        start, end = span_bars(env, span.test_start, span.test_end)
    except ValueError as exc:
        raise ValueError(f"fold {span.fold}: test span is empty: {exc}") from exc
    results: dict[tuple[int, str], BacktestResult] = {}
    for name, policy in policies.items():
        if policy is None:
            raise ValueError(f"fold {span.fold}: policy {name!r} has no model (got None)")
        result = run_backtest(
            env, policy, name=name, start=start, end=end, seed=seed, fold=span.fold
        )
        if isinstance(policy, SpotBuyAndHold):
            result = spot_buy_and_hold(env, result)
        results[(span.fold, name)] = result
    return _evaluation(results)


def walk_forward(
    env: CarryTradeEnv,
    spans: Sequence[FoldSpan],
    policies: Mapping[int, Mapping[str, Policy | None]],
    *,
    seed: int,
) -> Evaluation:
    """`backtest_fold` for every span, with the aggregated rows appended to the metrics.

    Args:
        policies: per fold id, the named policies of that fold (experts differ by fold; the
            baselines may be the same objects in every fold).

    Raises:
        ValueError: as `backtest_fold`; a fold with no entry in `policies` counts as no policy.
    """
    if not spans:
        raise ValueError("walk_forward: no folds to backtest")
    results: dict[tuple[int, str], BacktestResult] = {}
    for span in spans:
        results.update(backtest_fold(env, span, policies.get(span.fold, {}), seed=seed).results)
    ev = _evaluation(results)
    return dataclasses.replace(ev, metrics=pl.concat([ev.metrics, aggregate_folds(ev.metrics)]))


def aggregate_folds(metrics: pl.DataFrame) -> pl.DataFrame:
    """Per policy, the mean over its fold rows and its worst fold (lowest total return)."""
    folds = metrics.filter(pl.col("aggregate") == "fold")
    metric_cols = list(METRIC_COLUMNS)
    mean = (
        folds.group_by("policy", maintain_order=True)
        .agg([pl.col(c).mean() for c in metric_cols])
        .with_columns(fold=pl.lit(None, dtype=pl.Int64), aggregate=pl.lit("mean"))
    )
    worst = (
        folds.sort("total_return")
        .group_by("policy", maintain_order=True)
        .first()
        .with_columns(aggregate=pl.lit("worst_fold"))
    )
    order = folds.get_column("policy").unique(maintain_order=True).to_list()
    out = pl.concat([mean.select(list(METRICS_SCHEMA)), worst.select(list(METRICS_SCHEMA))])
    rank = {p: i for i, p in enumerate(order)}
    return (
        out.with_columns(_o=pl.col("policy").replace_strict(rank, return_dtype=pl.Int64))
        .sort("_o", "aggregate", maintain_order=True)
        .drop("_o")
    )


def _evaluation(results: dict[tuple[int, str], BacktestResult]) -> Evaluation:
    rows = [
        {"fold": fold, "aggregate": "fold", "policy": name, **summarise(r)}
        for (fold, name), r in results.items()
    ]
    return Evaluation(
        metrics=pl.DataFrame(rows, schema=METRICS_SCHEMA),
        equity_curves=pl.concat([equity_curve_frame(r) for r in results.values()]),
        positions=pl.concat([positions_frame(r) for r in results.values()]),
        trades=pl.concat([trades_frame(r) for r in results.values()]),
        results=results,
    )


def spot_buy_and_hold(env: CarryTradeEnv, flat: BacktestResult) -> BacktestResult:
    """The spot buy-and-hold book over the bars and effective marks of a flat run.

    Equity `E_0 / N` per asset buys spot at the first bar's mark, paying the env's spot cost model
    (`carry_env.kernel.leg_costs`: taker/maker fee, half the spread, depth impact and tick, at the
    bar's depth and spread in the data); the coins are then held and marked at the env's effective
    spot prices. The leftover of the cost estimate stays as cash.
    """
    eng = env.engine
    cfg, mkt, t0 = eng.cfg, eng.tensor.mkt, flat.start
    s0 = flat.fills[0, :, 5]
    n_sym = s0.shape[0]
    budget = flat.equity[0] / n_sym
    costs = np.zeros((n_sym, 3))
    qty = np.zeros(n_sym)
    for i in range(n_sym):
        depth, spread = mkt[t0, i, k.M_SDEPTH], mkt[t0, i, k.M_SPREAD]
        per_unit = cfg[k.C_SPOT_TAKER] + 0.5e-4 * spread + cfg[k.C_TICK_BPS]
        notional = budget / (1.0 + per_unit + cfg[k.C_SLIP_K] * budget / depth)
        maker, taker = cfg[k.C_SPOT_MAKER], cfg[k.C_SPOT_TAKER]
        costs[i] = k.leg_costs(notional, depth, spread, maker, taker, cfg)
        qty[i] = notional / s0[i]
    cash = flat.equity[0] - float(np.sum(qty * s0 + costs.sum(axis=1)))
    marks = flat.mark_spot
    prev = np.vstack([s0[None, :], marks[:-1]])
    step_price = qty * (marks - prev)
    equity_after = cash + marks @ qty
    info = np.zeros_like(flat.info)
    info[:, k.K_EQUITY] = equity_after
    info[:, k.K_CASH] = cash
    info[:, k.K_PRICE] = step_price.sum(axis=1)
    info[0, k.K_FEES] = costs[:, 0].sum()
    info[0, k.K_SPREAD_COST] = costs[:, 1].sum()
    info[0, k.K_IMPACT] = costs[:, 2].sum()
    info[0, k.K_SLIPPAGE] = costs[:, 1:].sum()
    info[0, k.K_TURNOVER] = float(np.sum(qty * s0))
    info[:, k.K_LEVERAGE] = (marks @ qty) / equity_after
    info[:, k.K_MAX_LEVERAGE] = flat.info[:, k.K_MAX_LEVERAGE]
    equity = np.concatenate([[flat.equity[0]], equity_after])
    info[:, k.K_DRAWDOWN] = drawdown(equity)[1:]
    fills = np.zeros_like(flat.fills)
    fills[:, :, 5:] = flat.fills[:, :, 5:]
    fills[0, :, 0] = qty
    fills[0, :, 2:5] = costs
    held = np.broadcast_to(qty, marks.shape).copy()
    pnl = step_price.copy()
    pnl[0] -= costs.sum(axis=1)
    actions = np.full_like(flat.actions, np.nan)
    actions[0] = 1.0
    zeros = np.zeros_like(held)
    return dataclasses.replace(
        flat,
        equity=equity,
        info=info,
        reward=np.zeros_like(flat.reward),
        actions=actions,
        spot_qty=held,
        perp_qty=zeros,
        collateral=zeros,
        held_spot=held,
        held_perp=zeros,
        fills=fills,
        settled_rate=flat.settled_rate,
        asset_pnl=pnl,
    )
