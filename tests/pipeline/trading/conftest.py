"""Shared fixtures of the paper-trading tests: a small simulated market and a fixed-book source."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from carry_env.market import MarketData
from carry_env.synthetic import simulate_market
from carry_pipeline.lib.trading.books import Leg, OrderBook, Quote

SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT")


@pytest.fixture(scope="session")
def market_frame() -> pl.DataFrame:
    """Four simulated days of hourly bars for BTC and ETH (seed 3)."""
    return simulate_market(SYMBOLS, "2024-02-01", "2024-02-05", "1h", seed=3)


@pytest.fixture(scope="session")
def market(market_frame: pl.DataFrame) -> MarketData:
    """`market_frame` as `MarketData`."""
    return MarketData.from_frame(market_frame)


class FixedBooks:
    """Returns the same book for every request of a leg (the planning quote is ignored)."""

    def __init__(self, books: dict[tuple[str, str], OrderBook]) -> None:
        self.books = books
        self.requests: list[tuple[str, str, Quote]] = []

    def order_book(self, symbol: str, leg: Leg, reference: Quote) -> OrderBook:
        self.requests.append((symbol, leg, reference))
        return self.books[(symbol, leg)]


def book(symbol: str, leg: Leg, bids: list[list[float]], asks: list[list[float]]) -> OrderBook:
    """An `OrderBook` from level lists."""
    return OrderBook(symbol, leg, np.array(bids), np.array(asks), "test")
