"""Performance metrics of one backtest: returns, risk, carry, costs, trades and exposure.

Definitions (used everywhere in `reports.backtest_metrics`; the README repeats them):

- Equity `E_0..E_n`: `E_0` is the equity at the first bar of the span (before any trade), `E_j`
  the equity after step j. Bar returns `r_j = E_j / E_{j-1} - 1`, j = 1..n (simple returns).
- Annualisation from the bar length: `P = 365 * 86_400 / bar_seconds` periods a year (crypto trades
  every day: 8,760 for 1 h bars, 35,040 for 15 m). Risk-free rate 0.
- `total_return = E_n / E_0 - 1`; `annual_return = (E_n / E_0) ** (P / n) - 1` (CAGR over the
  span's clock time; -1 when `E_n <= 0`).
- `volatility = std(r, ddof=1) * sqrt(P)` (sample std). `sharpe = mean(r) / std(r, ddof=1) *
  sqrt(P)`; NaN when the std is 0 (a flat book: 0 / 0 is undefined, not 0).
- `sortino = mean(r) * sqrt(P) / sqrt(mean(min(r, 0) ** 2))`: the downside deviation is the root
  mean square of the negative returns over all n returns (target 0); NaN when no return is
  negative.
- Drawdown at j: `1 - E_j / max(E_0..E_j)`. `max_drawdown` is its maximum (a positive fraction).
  `max_drawdown_days`: the longest run of consecutive underwater points (drawdown > 1e-12),
  in days (`bars / bars_per_day`): the time spent below a previous peak before regaining it or
  reaching the end. `time_in_drawdown`: share of the n points after `E_0` that are underwater.
  `calmar = annual_return / max_drawdown`; NaN when there is no drawdown.
- Cash flows summed over the span (quote currency): `funding` (the env's `funding_pnl`, the gross
  carry), `fees`, `slippage` (half-spread + impact + tick), `borrow` (interest on borrowed coins and
  USDT), `liquidation_loss`, `insurance_fund`. `cost_ratio = (fees + slippage + borrow) / funding`;
  liquidation losses are reported apart. When `funding <= 0` it is `inf` if costs were paid and NaN
  if not (a flat book).
- `turnover`: traded notional of both legs over the mean equity, per year (`sum(turnover_j) /
  mean(E_0..E_{n-1}) * P / n`).
- `avg_leverage`, `max_leverage`: the env's `leverage` (gross notional of both legs / equity)
  after each step. `time_in_market`: share of steps during which any leg is open.
  `exposure_time`: exposure-weighted time in market, the mean over steps of `leverage /
  leverage_cap` (1 = the full size `|a| = 1` held all the time).
- Trades: per asset, a trade runs from the first step during which a leg is open, out of flat, to
  the step after which both legs are flat again (closed by an order or by a liquidation). Its P&L
  is the sum of the asset's step P&L over those steps (`carry_pipeline.lib.evaluation.backtest`:
  price and funding P&L of its legs less its fees and slippage, plus its share of borrow,
  liquidation and insurance flows). A step that reverses the sign (long carry to reverse carry)
  closes the old trade at the step before and opens a new one, which takes that step's P&L.
  Positions still open at the end are `open_trades`, not counted. `win_rate = wins / closed
  trades` (a win has P&L > 0); `profit_factor = sum(P&L of wins) / -sum(P&L of losses)`, `inf`
  with no losing trade; both NaN with no closed trade. `liquidations`: steps with a
  liquidation.

Where empyrical-reloaded defines the same quantity it agrees (the tests check it, passing `P`
explicitly): `annual_return`, `annual_volatility`, `sharpe_ratio`, `sortino_ratio`,
`max_drawdown` (empyrical signs it negative) and `calmar_ratio`. They differ on degenerate inputs
only: empyrical's `sortino_ratio` is `inf` with no negative return and its `calmar_ratio` NaN with
no drawdown, where these give NaN. The drawdown duration, time in drawdown, cost ratio, turnover,
exposure and trade statistics have no empyrical counterpart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from carry_env import kernel as k

if TYPE_CHECKING:
    from carry_pipeline.lib.evaluation.backtest import BacktestResult

SECONDS_PER_YEAR = 365.0 * 86_400.0
UNDERWATER_TOLERANCE = 1e-12
"""A point is underwater when its drawdown exceeds this (float noise on a flat book is not a
drawdown)."""


def periods_per_year(bar_seconds: float) -> float:
    """Bars a year at `bar_seconds` per bar, on a 365-day year."""
    if not bar_seconds > 0:
        raise ValueError(f"bar_seconds must be > 0, got {bar_seconds}")
    return SECONDS_PER_YEAR / bar_seconds


def _equity(equity: np.ndarray) -> np.ndarray:
    e = np.asarray(equity, dtype=np.float64)
    if e.ndim != 1 or e.shape[0] < 2:
        raise ValueError(f"equity must be a 1-D series of at least 2 points, got shape {e.shape}")
    if not np.isfinite(e).all():
        bad = np.flatnonzero(~np.isfinite(e))
        raise ValueError(f"equity has non-finite values at points {bad[:10].tolist()}")
    if e[0] <= 0:
        raise ValueError(f"equity must start positive, got {e[0]}")
    return e


def simple_returns(equity: np.ndarray) -> np.ndarray:
    """`r_j = E_j / E_{j-1} - 1` for j = 1..n (a point after a zero equity returns -1 or 0)."""
    e = _equity(equity)
    prev = e[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(prev > 0, e[1:] / np.where(prev > 0, prev, 1.0) - 1.0, 0.0)
    return r


def total_return(equity: np.ndarray) -> float:
    """`E_n / E_0 - 1`."""
    e = _equity(equity)
    return float(e[-1] / e[0] - 1.0)


def annual_return(equity: np.ndarray, ppy: float) -> float:
    """Compound annual growth over the n bars of the series: `(E_n / E_0) ** (P / n) - 1`."""
    e = _equity(equity)
    growth = e[-1] / e[0]
    if growth <= 0:
        return -1.0
    with np.errstate(over="ignore"):  # a short span of a growing book compounds to inf
        return float(np.float64(growth) ** (ppy / (e.shape[0] - 1)) - 1.0)


def annual_volatility(returns: np.ndarray, ppy: float) -> float:
    """`std(r, ddof=1) * sqrt(P)`; NaN with fewer than two returns."""
    r = np.asarray(returns, dtype=np.float64)
    if r.shape[0] < 2:
        return math.nan
    return float(np.std(r, ddof=1) * math.sqrt(ppy))


def sharpe_ratio(returns: np.ndarray, ppy: float) -> float:
    """`mean(r) / std(r, ddof=1) * sqrt(P)`, risk-free 0; NaN when the std is 0 or undefined."""
    r = np.asarray(returns, dtype=np.float64)
    if r.shape[0] < 2:
        return math.nan
    sd = float(np.std(r, ddof=1))
    if sd == 0.0:
        return math.nan
    return float(np.mean(r) / sd * math.sqrt(ppy))


def sortino_ratio(returns: np.ndarray, ppy: float) -> float:
    """`mean(r) * sqrt(P) / sqrt(mean(min(r, 0)^2))`; NaN when no return is negative."""
    r = np.asarray(returns, dtype=np.float64)
    if r.shape[0] == 0:
        return math.nan
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    if downside == 0.0:
        return math.nan
    return float(np.mean(r) * math.sqrt(ppy) / downside)


def drawdown(equity: np.ndarray) -> np.ndarray:
    """`1 - E_j / max(E_0..E_j)` at every point."""
    e = _equity(equity)
    return 1.0 - e / np.maximum.accumulate(e)


def max_drawdown(equity: np.ndarray) -> float:
    """Largest drawdown of the series, a fraction in [0, 1]."""
    return float(drawdown(equity).max())


def longest_underwater_bars(equity: np.ndarray) -> int:
    """Length of the longest run of consecutive underwater points (bars below a previous peak)."""
    under = drawdown(equity) > UNDERWATER_TOLERANCE
    best = run = 0
    for u in under:
        run = run + 1 if u else 0
        best = max(best, run)
    return best


def time_in_drawdown(equity: np.ndarray) -> float:
    """Share of the points after `E_0` that are underwater."""
    return float(np.mean(drawdown(equity)[1:] > UNDERWATER_TOLERANCE))


def calmar_ratio(equity: np.ndarray, ppy: float) -> float:
    """`annual_return / max_drawdown`; NaN when the series never draws down."""
    mdd = max_drawdown(equity)
    if mdd <= UNDERWATER_TOLERANCE:
        return math.nan
    return annual_return(equity, ppy) / mdd


def cost_ratio(costs: float, funding: float) -> float:
    """`costs / funding`; `inf` when costs were paid without positive carry, NaN when neither."""
    if funding > 0:
        return costs / funding
    return math.inf if costs > 0 else math.nan


@dataclass(frozen=True)
class Trade:
    """One closed trade of one asset: steps `first..last` (0-based step indices) and its P&L."""

    asset: int
    first: int
    last: int
    pnl: float


def closed_trades(
    held: np.ndarray, after: np.ndarray, side: np.ndarray, asset_pnl: np.ndarray
) -> tuple[list[Trade], int]:
    """Flat-to-flat trades per asset and the number still open at the end.

    Args:
        held: `[n, N]` bool, whether the asset has a leg open during step j (after its fills).
        after: `[n, N]` bool, whether a leg is still open after step j (a liquidation at the end
            of the step closes it).
        side: `[n, N]` sign of the position held during step j (+1 long carry, -1 reverse).
        asset_pnl: `[n, N]` the asset's P&L of step j.

    Returns:
        The closed trades (ordered by asset, then time) and the count of open ones.
    """
    n, n_assets = held.shape
    trades: list[Trade] = []
    still_open = 0
    for i in range(n_assets):
        start, cur = -1, 0.0
        for j in range(n):
            if start >= 0 and held[j, i] and side[j, i] != cur:
                # A reversal: the old trade ends at the step before; this step opens the new one.
                trades.append(Trade(i, start, j - 1, float(asset_pnl[start:j, i].sum())))
                start, cur = j, side[j, i]
            if start < 0 and held[j, i]:
                start, cur = j, side[j, i]
            if start >= 0 and not after[j, i]:
                trades.append(Trade(i, start, j, float(asset_pnl[start : j + 1, i].sum())))
                start = -1
        still_open += start >= 0
    return trades, still_open


def win_rate(pnls: list[float]) -> float:
    """Share of trades with P&L > 0; NaN with no trade."""
    if not pnls:
        return math.nan
    return sum(p > 0 for p in pnls) / len(pnls)


def profit_factor(pnls: list[float]) -> float:
    """Gross profit over gross loss of the trades; `inf` with no loss, NaN with no trade."""
    if not pnls:
        return math.nan
    gains = sum(p for p in pnls if p > 0)
    losses = -sum(p for p in pnls if p < 0)
    if losses == 0:
        return math.inf if gains > 0 else math.nan
    return gains / losses


METRIC_COLUMNS = (
    "bars",
    "days",
    "initial_equity",
    "final_equity",
    "total_return",
    "annual_return",
    "volatility",
    "sharpe",
    "sortino",
    "calmar",
    "max_drawdown",
    "max_drawdown_days",
    "time_in_drawdown",
    "funding",
    "fees",
    "slippage",
    "borrow",
    "liquidation_loss",
    "insurance_fund",
    "cost_ratio",
    "turnover",
    "fills",
    "closed_trades",
    "open_trades",
    "win_rate",
    "profit_factor",
    "liquidations",
    "avg_leverage",
    "max_leverage",
    "time_in_market",
    "exposure_time",
    "profitable",
)
"""Numeric columns of one metrics row, in order (`profitable` is 1.0 when total_return > 0, so the
mean over folds is the share of folds profitable)."""


def summarise(result: BacktestResult) -> dict[str, Any]:
    """Every metric of one backtest (module docstring), as a dict in `METRIC_COLUMNS` order."""
    e = result.equity
    ppy = periods_per_year(result.bar_seconds)
    r = simple_returns(e)
    n = r.shape[0]
    info = result.info
    flows = {
        "funding": float(info[:, k.K_FUNDING].sum()),
        "fees": float(info[:, k.K_FEES].sum()),
        "slippage": float(info[:, k.K_SLIPPAGE].sum()),
        "borrow": float(info[:, k.K_BORROW].sum()),
        "liquidation_loss": float(info[:, k.K_LIQ_LOSS].sum()),
        "insurance_fund": float(info[:, k.K_INSURANCE].sum()),
    }
    costs = flows["fees"] + flows["slippage"] + flows["borrow"]
    held = (result.held_spot != 0) | (result.held_perp != 0)
    after = (result.spot_qty != 0) | (result.perp_qty != 0)
    side = np.where(result.held_spot != 0, np.sign(result.held_spot), -np.sign(result.held_perp))
    trades, still_open = closed_trades(held, after, side, result.asset_pnl)
    pnls = [t.pnl for t in trades]
    leverage = info[:, k.K_LEVERAGE]
    traded = (result.fills[:, :, 0] != 0) | (result.fills[:, :, 1] != 0)
    tot = total_return(e)
    out: dict[str, Any] = {
        "bars": n,
        "days": n / ppy * 365.0,
        "initial_equity": float(e[0]),
        "final_equity": float(e[-1]),
        "total_return": tot,
        "annual_return": annual_return(e, ppy),
        "volatility": annual_volatility(r, ppy),
        "sharpe": sharpe_ratio(r, ppy),
        "sortino": sortino_ratio(r, ppy),
        "calmar": calmar_ratio(e, ppy),
        "max_drawdown": max_drawdown(e),
        "max_drawdown_days": longest_underwater_bars(e) / ppy * 365.0,
        "time_in_drawdown": time_in_drawdown(e),
        **flows,
        "cost_ratio": cost_ratio(costs, flows["funding"]),
        "turnover": float(info[:, k.K_TURNOVER].sum() / np.mean(e[:-1]) * ppy / n),
        "fills": int(traded.sum()),
        "closed_trades": len(trades),
        "open_trades": still_open,
        "win_rate": win_rate(pnls),
        "profit_factor": profit_factor(pnls),
        "liquidations": int(result.flags[:, k.G_LIQUIDATED].sum()),
        "avg_leverage": float(leverage.mean()),
        "max_leverage": float(leverage.max()),
        "time_in_market": float(held.any(axis=1).mean()),
        "exposure_time": float(np.mean(leverage / result.leverage_cap)),
        "profitable": 1.0 if tot > 0 else 0.0,
    }
    assert tuple(out) == METRIC_COLUMNS
    return out
