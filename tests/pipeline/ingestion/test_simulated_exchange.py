"""`SimulatedExchange`: exact raw schemas, consistency with `carry_env.synthetic`, no future
data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from carry_env.synthetic import simulate_market
from carry_pipeline.lib.exchanges import PermanentExchangeError, SimulatedExchange
from carry_pipeline.lib.schemas import (
    FUNDING_SCHEMA,
    OHLCV_SCHEMA,
    ORDER_BOOK_SCHEMA,
    SENTIMENT_SCHEMA,
)

DAY = datetime(2024, 2, 1, tzinfo=UTC)
NEXT = DAY + timedelta(days=1)
NOW = datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture
def ex() -> SimulatedExchange:
    return SimulatedExchange(seed=4, clock=lambda: NOW)


def test_frames_have_exactly_the_raw_schemas(ex: SimulatedExchange) -> None:
    assert ex.fetch_ohlcv("BTC/USDT", "spot", "15m", DAY, NEXT).schema == pl.Schema(OHLCV_SCHEMA)
    assert ex.fetch_funding("BTC/USDT:USDT", DAY, NEXT).schema == pl.Schema(FUNDING_SCHEMA)
    book = ex.fetch_order_book("BTC/USDT:USDT", "perp", DAY, NEXT)
    assert book.schema == pl.Schema(ORDER_BOOK_SCHEMA)
    assert ex.fetch_sentiment(DAY, NEXT).schema == pl.Schema(SENTIMENT_SCHEMA)


def test_ohlcv_closes_match_the_env_market_frame(ex: SimulatedExchange) -> None:
    # The env and the pipeline see one market: perp bar closes equal the market frame's perp prices.
    bars = ex.fetch_ohlcv("ETH/USDT:USDT", "perp", "15m", DAY, NEXT)
    frame = simulate_market(("ETH/USDT:USDT",), DAY, NEXT, "15m", seed=4)
    assert bars.height == 96
    assert bars["close"].to_list() == frame["perp_price"].to_list()


def test_funding_and_sentiment_match_the_market_frame(ex: SimulatedExchange) -> None:
    funding = ex.fetch_funding("BTC/USDT:USDT", DAY, NEXT)
    assert funding["funding_time"].dt.hour().to_list() == [0, 8, 16]
    frame = simulate_market(("BTC/USDT:USDT",), DAY, NEXT, "1h", seed=4)
    settled = frame.filter(pl.col("funding_rate").is_not_null())
    # The market frame's rows are bar closes: 08:00 and 16:00 are inside, 00:00 is the window start.
    assert funding["funding_rate"].to_list()[1:] == settled["funding_rate"].to_list()[:2]
    sentiment = ex.fetch_sentiment(DAY, NEXT)
    assert sentiment.height == 24 and (sentiment["published_at"] <= NOW).all()
    assert sentiment["source"].unique().to_list() == ["simulated"]
    joined = frame.join(sentiment, on="ts")
    assert joined["sentiment"].to_list() == joined["score"].to_list()


def test_no_data_from_the_future() -> None:
    now = DAY + timedelta(hours=6, minutes=20)
    ex = SimulatedExchange(clock=lambda: now)
    bars = ex.fetch_ohlcv("BTC/USDT", "spot", "15m", DAY, NEXT)
    assert bars["ts"].max() == DAY + timedelta(hours=6)  # the 06:15 bar closes at 06:30
    assert ex.fetch_funding("BTC/USDT:USDT", DAY, NEXT).height == 1
    assert ex.fetch_order_book("BTC/USDT:USDT", "spot", DAY, NEXT).height == 7


def test_symbols_outside_usdt_are_rejected(ex: SimulatedExchange) -> None:
    with pytest.raises(PermanentExchangeError, match=r"not \['BTC/EUR'\]"):
        ex.fetch_ohlcv("BTC/EUR", "spot", "15m", DAY, NEXT)
    ex.check_symbols(["SOL/USDT", "SOL/USDT:USDT"])  # any base works


def test_same_seed_same_data_across_instances() -> None:
    a = SimulatedExchange(seed=9, clock=lambda: NOW).fetch_ohlcv(
        "BTC/USDT", "spot", "1h", DAY, NEXT
    )
    b = SimulatedExchange(seed=9, clock=lambda: NOW).fetch_ohlcv(
        "BTC/USDT", "spot", "1h", DAY, NEXT
    )
    assert a.equals(b)
