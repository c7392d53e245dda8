"""`BookExecutor`: hand-computed fills from a tiny book, and parity with the env's own backtest."""

from __future__ import annotations

import numpy as np
import pytest

from carry_env.config import EnvConfig
from carry_env.env import CarryTradeEnv
from carry_env.feeds import Executor, Orders
from carry_env.market import MarketData
from carry_pipeline.lib.trading.books import ModelBookSource
from carry_pipeline.lib.trading.executor import BookExecutor, TakerFees
from tests.pipeline.trading.conftest import SYMBOLS, FixedBooks, book

ASKS = [[100.5, 1.0], [101.0, 2.0], [102.0, 3.0]]
BIDS = [[99.5, 1.0], [99.0, 2.0], [98.0, 3.0]]


def tiny_books() -> FixedBooks:
    """BTC spot and perp share one 3-level book around mid 100; ETH is never traded."""
    return FixedBooks(
        {(SYMBOLS[0], leg): book(SYMBOLS[0], leg, BIDS, ASKS) for leg in ("spot", "perp")}
    )


def orders(spot: float, perp: float) -> Orders:
    """One env, two assets: BTC orders at planning mid 100 (ETH zero)."""
    z = np.zeros((1, 2))
    q = lambda v: np.array([[v, 0.0]])  # noqa: E731
    return Orders(q(spot), q(perp), z + 100.0, z + 100.0, z + 1e6, z + 1e6, z + 1.0)


def test_long_carry_entry_both_legs_hand_computed() -> None:
    # Buy 2.5 spot: 1 @ 100.5 + 1.5 @ 101 = 252.0 (vwap 100.8); spread 2.5 * 0.5 = 1.25, impact
    # 2.5 * 0.3 = 0.75; fee 10 bp of 252 = 0.252.
    # Sell 4 perp: 1 @ 99.5 + 2 @ 99 + 1 @ 98 = 395.5 (vwap 98.875); spread 4 * 0.5 = 2.0, impact
    # 4 * 0.625 = 2.5; fee 5 bp of 395.5 = 0.19775.
    ex = BookExecutor(SYMBOLS, tiny_books(), TakerFees(spot=10e-4, perp=5e-4))
    fills = ex.execute(orders(2.5, -4.0))
    assert fills.spot_qty.tolist() == [[2.5, 0.0]]
    assert fills.perp_qty.tolist() == [[-4.0, 0.0]]
    assert fills.fees[0, 0] == pytest.approx(0.252 + 0.19775, rel=1e-12)
    assert fills.spread_cost[0, 0] == pytest.approx(1.25 + 2.0, rel=1e-12)
    assert fills.impact_cost[0, 0] == pytest.approx(0.75 + 2.5, rel=1e-12)
    spot, perp = ex.last_legs
    assert (spot.vwap, perp.vwap) == (pytest.approx(100.8), pytest.approx(98.875))
    # Booked at mid plus the costs = cash actually exchanged at the vwap.
    assert 2.5 * 100 + spot.spread_cost + spot.impact_cost == pytest.approx(252.0)
    assert 4 * 100 - perp.spread_cost - perp.impact_cost == pytest.approx(395.5)
    assert spot.book.asks.tolist() == ASKS  # the book it filled against is kept


def test_reverse_carry_sells_spot_and_buys_perp() -> None:
    # Sell 1.5 spot: 1 @ 99.5 + 0.5 @ 99 = 149.0; buy 1 perp @ 100.5. Fees 10 bp and 5 bp.
    ex = BookExecutor(SYMBOLS, tiny_books(), TakerFees(spot=10e-4, perp=5e-4))
    fills = ex.execute(orders(-1.5, 1.0))
    assert fills.fees[0, 0] == pytest.approx(0.149 + 0.05025, rel=1e-12)
    assert fills.spread_cost[0, 0] + fills.impact_cost[0, 0] == pytest.approx(
        (150.0 - 149.0) + (100.5 - 100.0), rel=1e-12
    )


def test_exhausted_book_fills_partly_and_reports_the_rest() -> None:
    # Buy 10 perp against 6 coins of asks: 608.5 USDT for 6, 4 unfilled; fee on 608.5.
    ex = BookExecutor(SYMBOLS, tiny_books(), TakerFees(spot=10e-4, perp=5e-4))
    fills = ex.execute(orders(0.0, 10.0))
    assert fills.perp_qty[0, 0] == pytest.approx(6.0)
    (leg,) = ex.last_legs
    assert leg.unfilled_qty == pytest.approx(4.0)
    assert fills.fees[0, 0] == pytest.approx(5e-4 * 608.5, rel=1e-12)
    assert 6 * 100 + fills.spread_cost[0, 0] + fills.impact_cost[0, 0] == pytest.approx(608.5)


def test_mid_fee_basis_charges_the_planning_mid() -> None:
    ex = BookExecutor(SYMBOLS, tiny_books(), TakerFees(spot=10e-4, perp=5e-4), fee_basis="mid")
    assert ex.execute(orders(2.5, 0.0)).fees[0, 0] == pytest.approx(10e-4 * 250.0, rel=1e-12)


def test_zero_orders_fetch_no_book() -> None:
    books = tiny_books()
    BookExecutor(SYMBOLS, books, TakerFees(1e-3, 5e-4)).execute(orders(0.0, 0.0))
    assert books.requests == []


def test_maker_fraction_is_refused_for_market_orders() -> None:
    with pytest.raises(ValueError, match="maker_fraction=0.3"):
        TakerFees.from_env_config(EnvConfig(maker_fraction=0.3))


def actions(n_bars: int) -> np.ndarray:
    """A deterministic action path that enters, resizes, reverses and closes both assets."""
    pattern = np.array([[1.0, 0.0], [1.0, 0.5], [0.4, 0.5], [-0.6, 1.0], [0.0, -0.3], [0.0, 0.0]])
    return np.repeat(pattern, 6, axis=0)[np.arange(n_bars) % 36]


def run(market: MarketData, config: EnvConfig, executor: Executor | None, n: int) -> list[dict]:
    env = CarryTradeEnv(market, config, executor=executor)
    env.reset(seed=11)
    out = []
    for a in actions(n):
        _, _, term, trunc, info = env.step(a)
        out.append(info)
        assert not (term or trunc)
    return out


def test_paper_session_equals_the_backtest_with_a_book_of_the_sim_model(market: MarketData) -> None:
    # Impact off (slippage_k = 0): the model book is one level at mid +- (half spread + tick), so
    # walking it costs exactly what SimExecutor charges; anomalies on, so flash-widened spreads
    # and halts are in the quotes too.
    cfg = EnvConfig(slippage_k=0.0)
    paper = BookExecutor(
        market.symbols, ModelBookSource(cfg), TakerFees.from_env_config(cfg), "mid"
    )
    n = market.n_bars - 2
    sim, pap = run(market, cfg, None, n), run(market, cfg, paper, n)
    assert sum(i["fees"] > 0 for i in sim) > 10  # the path trades
    for name in ("equity", "cash", "fees", "slippage", "funding_pnl", "borrow_cost"):
        np.testing.assert_allclose(
            [i[name] for i in pap], [i[name] for i in sim], rtol=1e-10, atol=1e-7, err_msg=name
        )
    np.testing.assert_allclose(pap[-1]["spot_qty"], sim[-1]["spot_qty"], rtol=1e-12)
    np.testing.assert_allclose(pap[-1]["perp_qty"], sim[-1]["perp_qty"], rtol=1e-12)


def test_with_linear_impact_paper_is_within_the_ladder_discretisation_bound(
    market: MarketData,
) -> None:
    # A partly used last level of width dx costs at most k dx^2 / (4 depth) more than the sim's
    # continuous impact; the equity gap stays below the sum of that bound over every filled leg.
    cfg = EnvConfig()
    src = ModelBookSource(cfg, levels=4_000, span_depths=4.0)
    paper = BookExecutor(market.symbols, src, TakerFees.from_env_config(cfg), "mid")
    n = 48
    sim = run(market, cfg, None, n)
    env = CarryTradeEnv(market, cfg, executor=paper)
    env.reset(seed=11)
    bound = 0.0
    for a in actions(n):
        _, _, _, _, info = env.step(a)
        for leg in paper.last_legs:
            depth = leg.book.asks[:, 1].sum() * leg.mid / src.span_depths
            bound += cfg.slippage_k * src.level_width_usd(depth) ** 2 / (4 * depth)
    gap = abs(info["equity"] - sim[-1]["equity"])
    assert bound > 0.0
    assert gap <= bound * (1 + 1e-6) + 1e-6
    assert sum(i["impact_cost"] for i in sim) > 100 * bound  # the bound is tight against impact
