"""The simulated exchange's order book follows its seed: the same seed serves the same book, from
any instance and any window; a different seed serves a different one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from carry_pipeline.lib.exchanges import SimulatedExchange

DAY = datetime(2024, 2, 1, tzinfo=UTC)
NOW = datetime(2024, 3, 1, tzinfo=UTC)
VALUES = ["best_bid", "best_ask", "spread_bps", "bid_depth_10bps_usd", "ask_depth_50bps_usd"]


def _book(seed: int, start: datetime, end: datetime) -> pl.DataFrame:
    ex = SimulatedExchange(seed=seed, clock=lambda: NOW)
    return ex.fetch_order_book("BTC/USDT:USDT", "perp", start, end).select("ts", *VALUES)


def test_order_book_follows_the_seed() -> None:
    a = _book(3, DAY, DAY + timedelta(days=1))
    assert a.height == 24
    assert a.equals(_book(3, DAY, DAY + timedelta(days=1)))
    # A narrower window of the same seed serves the same snapshots.
    part = _book(3, DAY + timedelta(hours=6), DAY + timedelta(hours=12))
    assert part.equals(a.filter(pl.col("ts").is_in(part["ts"].implode())))
    assert part.height == 6
    # Another seed: every value column differs somewhere, on the same timestamps.
    b = _book(4, DAY, DAY + timedelta(days=1))
    assert b["ts"].equals(a["ts"])
    for col in VALUES:
        assert (a[col] != b[col]).any(), col
