"""Walking order books, and the books the sources build."""

from __future__ import annotations

import math

import numpy as np
import pytest

from carry_env.config import EnvConfig
from carry_pipeline.lib.exchanges.base import BookSummary, reduce_order_book
from carry_pipeline.lib.trading.books import (
    ModelBookSource,
    OrderBook,
    Quote,
    ladder_from_summary,
    walk_book,
)


def three_level_book() -> OrderBook:
    """Mid 100; asks 100.5 x1, 101 x2, 102 x3; bids 99.5 x1, 99 x2, 98 x3."""
    return OrderBook(
        "BTC/USDT:USDT",
        "spot",
        np.array([[99.5, 1.0], [99.0, 2.0], [98.0, 3.0]]),
        np.array([[100.5, 1.0], [101.0, 2.0], [102.0, 3.0]]),
        "test",
    )


@pytest.mark.parametrize(
    ("qty", "filled", "vwap", "levels"),
    [
        (0.5, 0.5, 100.5, 1),  # inside the touch
        (2.5, 2.5, 252.0 / 2.5, 2),  # 1 @ 100.5 + 1.5 @ 101 = 252
        (-4.0, -4.0, 395.5 / 4.0, 3),  # 1 @ 99.5 + 2 @ 99 + 1 @ 98 = 395.5
        (10.0, 6.0, 608.5 / 6.0, 3),  # exhausts the asks: 100.5 + 202 + 306 = 608.5, 4 left
        (-6.0, -6.0, 591.5 / 6.0, 3),  # exactly the whole bid side: 99.5 + 198 + 294 = 591.5
    ],
)
def test_walk_hand_computed(qty: float, filled: float, vwap: float, levels: int) -> None:
    w = walk_book(three_level_book(), qty)
    assert w.filled_qty == pytest.approx(filled, abs=1e-12)
    assert w.vwap == pytest.approx(vwap, rel=1e-12)
    assert w.levels_used == levels
    assert w.unfilled_qty == pytest.approx(qty - filled, abs=1e-12)


def test_walk_rejects_nan_quantity() -> None:
    with pytest.raises(ValueError, match="BTC/USDT:USDT spot is not finite"):
        walk_book(three_level_book(), math.nan)


@pytest.mark.parametrize(
    ("bids", "asks", "message"),
    [
        ([[99.0, 1.0], [99.5, 1.0]], [[100.5, 1.0]], "bids prices are not strictly ordered"),
        ([[101.0, 1.0]], [[100.5, 1.0]], "crossed book"),
        ([[99.0, 0.0]], [[100.5, 1.0]], "bids has non-positive"),
        ([[99.0, 1.0]], np.zeros((0, 2)), "asks must be a non-empty"),
    ],
)
def test_bad_books_are_rejected(bids: list, asks: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OrderBook("ETH/USDT:USDT", "perp", np.array(bids), np.array(asks), "test")


def test_model_book_walk_equals_the_sim_cost_on_whole_levels() -> None:
    # Linear impact: walking whole levels costs touch * x + k x^2 / depth exactly (telescoping).
    cfg = EnvConfig(slippage_k=5e-4, tick_bps=0.1)
    src = ModelBookSource(cfg, levels=100, span_depths=10.0)
    q = Quote(mid=50_000.0, spread_bps=2.0, depth_usd=1_000_000.0)
    book = src.order_book("BTC/USDT:USDT", "perp", q)
    width = src.level_width_usd(q.depth_usd)  # 100,000 USDT per level
    x = 7 * width
    w = walk_book(book, x / q.mid)
    expected = x * (1e-4 + 0.1e-4) + 5e-4 * x * x / q.depth_usd
    assert w.notional - x == pytest.approx(expected, rel=1e-9)
    sell = walk_book(book, -x / q.mid)
    assert x - sell.notional == pytest.approx(expected, rel=1e-9)


def test_ladder_reproduces_the_summary_depths() -> None:
    summary = BookSummary(99.99, 100.01, 100.0, 2.0, 1e6, 8e5, 3.6e6, 2.9e6)
    book = ladder_from_summary("BTC/USDT:USDT", "spot", summary, levels_per_band=4)
    back = reduce_order_book(book.bids, book.asks)
    assert (back.best_bid, back.best_ask) == (99.99, 100.01)
    assert back.bid_depth_10bps_usd == pytest.approx(1e6, rel=1e-9)
    assert back.ask_depth_10bps_usd == pytest.approx(8e5, rel=1e-9)
    assert back.bid_depth_50bps_usd == pytest.approx(3.6e6, rel=1e-9)
    assert back.ask_depth_50bps_usd == pytest.approx(2.9e6, rel=1e-9)


def test_simulated_exchange_books_are_its_latest_snapshot() -> None:
    from datetime import UTC, datetime

    from carry_pipeline.lib.exchanges.simulated import SimulatedExchange
    from carry_pipeline.lib.trading.books import SimulatedExchangeBooks

    now = datetime(2024, 3, 1, 5, 30, tzinfo=UTC)
    ex = SimulatedExchange(seed=2, clock=lambda: now)
    src = SimulatedExchangeBooks(ex, clock=lambda: now, levels_per_band=3)
    book = src.order_book("BTC/USDT:USDT", "perp", Quote(1.0, 1.0, 1.0))  # reference unused
    snap = ex.fetch_order_book(
        "BTC/USDT:USDT",
        "perp",
        datetime(2024, 3, 1, 4, tzinfo=UTC),
        datetime(2024, 3, 1, 6, tzinfo=UTC),
    )  # the exchange serves snapshots up to its clock: the last one is 05:00
    row = snap.row(-1, named=True)
    assert row["ts"] == datetime(2024, 3, 1, 5, tzinfo=UTC)
    assert (book.bids[0, 0], book.asks[0, 0]) == (row["best_bid"], row["best_ask"])
    back = reduce_order_book(book.bids, book.asks)
    assert back.ask_depth_50bps_usd == pytest.approx(row["ask_depth_50bps_usd"], rel=1e-9)
    assert book.source == "simulated"
