"""`SimulatedExchange`: the embedded, offline default, built on `carry_env.synthetic`.

Seeded and deterministic: the same seed serves the same market to every fetch, whatever the window,
so daily partitions fetched one by one stitch into exactly the path a single long fetch would
return. Like a live exchange it serves nothing that has not happened yet: bars must have closed,
settlements and snapshots must be in the past of the fetch time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import polars as pl

from carry_env import synthetic
from carry_pipeline.lib.exchanges.base import (
    Market,
    PermanentExchangeError,
    check_window,
    timeframe_delta,
    utc_now,
    with_ingested_at,
)
from carry_pipeline.lib.schemas import (
    FUNDING_SCHEMA,
    OHLCV_SCHEMA,
    ORDER_BOOK_SCHEMA,
    SENTIMENT_SCHEMA,
    conform,
)

EXCHANGE_NAME = "simulated"


class SimulatedExchange:
    """Synthetic spot, perp, funding, order-book and sentiment history for any `BASE/USDT` asset.

    Args:
        seed: simulation seed; the same seed always serves the same market.
        funding_interval_hours: hours between funding settlements (dividing 24), for every perp.
        order_book_interval: time between synthetic order-book snapshots ("1h", "15m", ...).
        clock: returns "now" (UTC); data after it is not served. Tests pass a fixed clock.
    """

    def __init__(
        self,
        seed: int = 0,
        funding_interval_hours: float = 8.0,
        order_book_interval: str = "1h",
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.seed = seed
        self.funding_interval_hours = funding_interval_hours
        self.order_book_interval = order_book_interval
        self.clock = clock

    def exchange_name(self, market: Market) -> str:
        """Always "simulated"."""
        return EXCHANGE_NAME

    def check_symbols(self, symbols: list[str]) -> None:
        """Accept `BASE/USDT` spot and `BASE/USDT:USDT` perp symbols; the simulator prices in USDT.

        Raises:
            PermanentExchangeError: naming every symbol of another form.
        """
        bad = [s for s in symbols if not _is_usdt_symbol(s)]
        if bad:
            raise PermanentExchangeError(
                "the simulated exchange lists only BASE/USDT spot and BASE/USDT:USDT perp "
                f"symbols; not {bad}"
            )

    def fetch_ohlcv(
        self, symbol: str, market: Market, timeframe: str, start: datetime, end: datetime
    ) -> pl.DataFrame:
        """Closed bars opening in `[start, end)`, in `OHLCV_SCHEMA`."""
        check_window(start, end)
        self.check_symbols([symbol])
        now = self.clock()
        bar = timeframe_delta(timeframe)
        frame = synthetic.simulate_ohlcv(
            [symbol], start, end, timeframe, seed=self.seed, market=market
        ).filter(pl.col("ts") + bar <= now)
        frame = frame.with_columns(pl.lit(EXCHANGE_NAME).alias("exchange"))
        return conform(with_ingested_at(frame, now), OHLCV_SCHEMA, table=f"raw_{market}_ohlcv")

    def fetch_funding(self, symbol: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Settlements in `[start, end)` up to now, in `FUNDING_SCHEMA`."""
        check_window(start, end)
        self.check_symbols([symbol])
        now = self.clock()
        frame = synthetic.simulate_funding(
            [symbol], start, end, seed=self.seed, funding_interval_hours=self.funding_interval_hours
        ).filter(pl.col("funding_time") <= now)
        frame = frame.with_columns(pl.lit(EXCHANGE_NAME).alias("exchange"))
        return conform(with_ingested_at(frame, now), FUNDING_SCHEMA, table="raw_funding_rates")

    def fetch_order_book(
        self, symbol: str, market: Market, start: datetime, end: datetime
    ) -> pl.DataFrame:
        """Synthetic snapshots every `order_book_interval` in `[start, end)` up to now."""
        check_window(start, end)
        self.check_symbols([symbol])
        now = self.clock()
        frame = (
            synthetic.simulate_order_book(
                [symbol], start, end, self.order_book_interval, seed=self.seed
            )
            .filter((pl.col("market") == market) & (pl.col("ts") <= now))
            .with_columns(pl.lit(EXCHANGE_NAME).alias("exchange"))
        )
        return conform(with_ingested_at(frame, now), ORDER_BOOK_SCHEMA, table="raw_order_book")

    def fetch_sentiment(self, start: datetime, end: datetime) -> pl.DataFrame:
        """The market-wide hourly sentiment index in `[start, end)`, in `SENTIMENT_SCHEMA`.

        `ts` is the hour the score describes and `published_at` when it became known (the same hour:
        the index uses information up to `ts`); source "simulated". Scores published after now are
        not served.
        """
        check_window(start, end)
        now = self.clock()
        frame = synthetic.simulate_sentiment(start, end, seed=self.seed).filter(
            pl.col("published_at") <= now
        )
        frame = frame.with_columns(pl.lit(EXCHANGE_NAME).alias("source"))
        return conform(frame, SENTIMENT_SCHEMA, table="sentiment")


def _is_usdt_symbol(symbol: str) -> bool:
    base, sep, rest = symbol.partition("/")
    return bool(base) and sep == "/" and rest in ("USDT", "USDT:USDT")
