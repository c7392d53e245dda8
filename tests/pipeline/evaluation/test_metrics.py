"""Metrics against hand-computed values on a 5-bar series and against empyrical-reloaded."""

from __future__ import annotations

import math

import empyrical
import numpy as np
import pytest

from carry_pipeline.lib.evaluation import metrics as m

# E = 100, 120, 108, 108, 129.6, 123.12: returns 0.2, -0.1, 0, 0.2, -0.05. With bars of 73 days
# (P = 5 a year) the five returns are exactly one year, so the CAGR is the total return.
EQUITY = np.array([100.0, 120.0, 108.0, 108.0, 129.6, 123.12])
P = 5.0


def test_hand_computed_return_and_risk() -> None:
    r = m.simple_returns(EQUITY)
    assert r == pytest.approx([0.2, -0.1, 0.0, 0.2, -0.05])
    assert m.periods_per_year(73 * 86_400.0) == pytest.approx(P)
    assert m.total_return(EQUITY) == pytest.approx(0.2312)
    assert m.annual_return(EQUITY, P) == pytest.approx(0.2312)
    # mean 0.05; squared deviations .0225 .0225 .0025 .0225 .01 sum .08, / 4 = .02, std .1414214
    assert m.annual_volatility(r, P) == pytest.approx(math.sqrt(0.02) * math.sqrt(5))  # 0.316228
    assert m.sharpe_ratio(r, P) == pytest.approx(0.05 / math.sqrt(0.02) * math.sqrt(5))  # 0.790569
    # downside: (0.1^2 + 0.05^2) / 5 = 0.0025, root 0.05: sortino = 0.05 / 0.05 * sqrt(5)
    assert m.sortino_ratio(r, P) == pytest.approx(math.sqrt(5))


def test_hand_computed_drawdowns() -> None:
    # Peaks 100 120 120 120 129.6 129.6: drawdowns 0 0 .1 .1 0 .05.
    assert m.drawdown(EQUITY) == pytest.approx([0, 0, 0.1, 0.1, 0, 0.05])
    assert m.max_drawdown(EQUITY) == pytest.approx(0.1)
    assert m.longest_underwater_bars(EQUITY) == 2  # bars 2 and 3 below the 120 peak
    assert m.time_in_drawdown(EQUITY) == pytest.approx(3 / 5)
    assert m.calmar_ratio(EQUITY, P) == pytest.approx(2.312)


def test_degenerate_series_are_nan_not_zero() -> None:
    flat = np.full(6, 100.0)
    r = m.simple_returns(flat)
    assert math.isnan(m.sharpe_ratio(r, P)) and math.isnan(m.sortino_ratio(r, P))
    assert math.isnan(m.calmar_ratio(flat, P)) and m.max_drawdown(flat) == 0.0
    assert m.annual_return(np.array([100.0, 0.0]), P) == -1.0


@pytest.mark.parametrize(
    ("costs", "funding", "expected"),
    [
        (10.0, 40.0, 0.25),  # a quarter of the carry paid away
        (10.0, 0.0, math.inf),  # costs with no carry
        (10.0, -5.0, math.inf),  # costs and negative carry
    ],
)
def test_cost_ratio(costs: float, funding: float, expected: float) -> None:
    assert m.cost_ratio(costs, funding) == expected


def test_cost_ratio_of_a_flat_book_is_undefined() -> None:
    assert math.isnan(m.cost_ratio(0.0, 0.0))


def test_closed_trades_flat_to_flat_with_liquidation_and_reversal() -> None:
    # Asset 0: opens at step 1, liquidated at the end of step 3 (held, not after); opens at 5 long,
    # reverses at 6 (the old trade ends at 5) and is still open at the end.
    # Asset 1: opens at 1, an order closes it at bar 3 (flat during step 3, whose P&L is the cost).
    held = np.array([[0, 0], [1, 1], [1, 1], [1, 0], [0, 0], [1, 0], [1, 0], [1, 0]], dtype=bool)
    after = np.array([[0, 0], [1, 1], [1, 1], [0, 0], [0, 0], [1, 0], [1, 0], [1, 0]], dtype=bool)
    side = np.array([[0, 0], [1, 1], [1, 1], [1, 0], [0, 0], [1, 0], [-1, 0], [-1, 0]], float)
    pnl = np.array(
        [[0, 0], [-2, -3], [5, 1], [-1, -0.5], [0, 0], [3, 0], [1, 0], [4, 0]], dtype=float
    )
    trades, still_open = m.closed_trades(held, after, side, pnl)
    assert [(t.asset, t.first, t.last, t.pnl) for t in trades] == [
        (0, 1, 3, 2.0),  # -2 + 5 - 1
        (0, 5, 5, 3.0),
        (1, 1, 3, -2.5),  # -3 + 1 - 0.5
    ]
    assert still_open == 1
    pnls = [t.pnl for t in trades]
    assert m.win_rate(pnls) == pytest.approx(2 / 3)
    assert m.profit_factor(pnls) == pytest.approx(5.0 / 2.5)
    assert m.profit_factor([1.0, 2.0]) == math.inf and math.isnan(m.win_rate([]))


def test_bad_equity_is_named() -> None:
    with pytest.raises(ValueError, match="non-finite values at points \\[2\\]"):
        m.simple_returns(np.array([1.0, 2.0, np.nan]))
    with pytest.raises(ValueError, match="at least 2 points"):
        m.total_return(np.array([1.0]))


@pytest.fixture(scope="module")
def long_series() -> tuple[np.ndarray, np.ndarray]:
    # 3,000 hourly bars of a drifting, fat-tailed equity curve.
    rng = np.random.default_rng(7)
    r = 2e-5 + 1e-3 * rng.standard_t(4, 3_000)
    return np.concatenate([[1e5], 1e5 * np.cumprod(1 + r)]), r


HOURLY = 365.0 * 24.0


def test_agrees_with_empyrical_on_a_long_series(long_series: tuple[np.ndarray, np.ndarray]) -> None:
    equity, r = long_series
    assert m.simple_returns(equity) == pytest.approx(r, rel=1e-9)
    kw = {"annualization": HOURLY}
    assert m.annual_return(equity, HOURLY) == pytest.approx(empyrical.annual_return(r, **kw))
    assert m.annual_volatility(r, HOURLY) == pytest.approx(empyrical.annual_volatility(r, **kw))
    assert m.sharpe_ratio(r, HOURLY) == pytest.approx(empyrical.sharpe_ratio(r, **kw))
    assert m.sortino_ratio(r, HOURLY) == pytest.approx(empyrical.sortino_ratio(r, **kw))
    assert m.max_drawdown(equity) == pytest.approx(-empyrical.max_drawdown(r))
    assert m.calmar_ratio(equity, HOURLY) == pytest.approx(empyrical.calmar_ratio(r, **kw))
