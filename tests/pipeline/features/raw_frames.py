"""Small seeded raw frames in the raw schemas, for the feature and dataset tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from carry_pipeline.lib.schemas import (
    FUNDING_SCHEMA,
    OHLCV_SCHEMA,
    ORDER_BOOK_SCHEMA,
    SENTIMENT_SCHEMA,
)

START = datetime(2024, 1, 1, tzinfo=UTC)
INGESTED = datetime(2025, 1, 1, tzinfo=UTC)


def ohlcv(
    symbol: str,
    closes: np.ndarray,
    *,
    start: datetime = START,
    bar: timedelta = timedelta(minutes=15),
    rng: np.random.Generator | None = None,
) -> pl.DataFrame:
    """Bars opening at `start + i * bar` with the given closes; opens at the previous close."""
    rng = rng or np.random.default_rng(0)
    n = len(closes)
    opens = np.concatenate([[closes[0]], closes[:-1]])
    wick = np.abs(rng.normal(0.0, 0.001, (2, n)))
    return pl.DataFrame(
        {
            "ts": [start + i * bar for i in range(n)],
            "exchange": "sim",
            "symbol": symbol,
            "open": opens,
            "high": np.maximum(opens, closes) * (1 + wick[0]),
            "low": np.minimum(opens, closes) * (1 - wick[1]),
            "close": closes,
            "volume": rng.uniform(1.0, 10.0, n),
            "ingested_at": INGESTED,
        },
        schema=OHLCV_SCHEMA,
    )


def make_raw(
    symbols: tuple[str, ...] = ("BTC/USDT:USDT", "ETH/USDT:USDT"),
    *,
    days: int = 60,
    bar: timedelta = timedelta(minutes=15),
    seed: int = 7,
    book: bool = True,
) -> dict[str, pl.DataFrame]:
    """Raw spot, perp, funding, order book and sentiment tables over `days` days."""
    rng = np.random.default_rng(seed)
    n = int(timedelta(days=days) / bar)
    spot, perp, funding, books = [], [], [], []
    for k, symbol in enumerate(symbols):
        base = symbol.split(":")[0]
        spot_close = (30_000.0 / (k + 1)) * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
        basis = 0.0002 * np.sin(np.arange(n) / 50.0) + rng.normal(0, 0.0001, n)
        spot.append(ohlcv(base, spot_close, bar=bar, rng=rng))
        perp.append(ohlcv(symbol, spot_close * (1 + basis), bar=bar, rng=rng))
        settle = [START + timedelta(hours=8 * i) for i in range(1, days * 3)]
        rates = np.round(rng.normal(1e-4, 1.5e-4, len(settle)), 6)
        funding.append(
            pl.DataFrame(
                {
                    "funding_time": settle,
                    "exchange": "sim",
                    "symbol": symbol,
                    "funding_rate": rates,
                    "interval_hours": [None] + [8.0] * (len(settle) - 1),
                    "mark_price": None,
                    "ingested_at": INGESTED,
                },
                schema=FUNDING_SCHEMA,
            )
        )
        if book:
            snaps = [START + timedelta(minutes=30 * i + 7) for i in range(days * 48)]
            for market, sym in (("spot", base), ("perp", symbol)):
                m = len(snaps)
                books.append(
                    pl.DataFrame(
                        {
                            "ts": snaps,
                            "exchange": "sim",
                            "symbol": sym,
                            "market": market,
                            "best_bid": 1.0,
                            "best_ask": 1.0001,
                            "mid": 1.00005,
                            "spread_bps": rng.uniform(0.1, 2.0, m),
                            "bid_depth_10bps_usd": rng.uniform(1e5, 1e6, m),
                            "ask_depth_10bps_usd": rng.uniform(1e5, 1e6, m),
                            "bid_depth_50bps_usd": rng.uniform(1e6, 1e7, m),
                            "ask_depth_50bps_usd": rng.uniform(1e6, 1e7, m),
                            "ingested_at": INGESTED,
                        },
                        schema=ORDER_BOOK_SCHEMA,
                    )
                )
    days_ts = [START + timedelta(days=i) for i in range(days)]
    sentiment = pl.DataFrame(
        {
            "ts": days_ts,
            "published_at": [t + timedelta(hours=1) for t in days_ts],
            "source": "sim",
            "score": np.clip(rng.normal(0, 0.5, days), -1, 1),
        },
        schema=SENTIMENT_SCHEMA,
    )
    return {
        "spot": pl.concat(spot),
        "perp": pl.concat(perp),
        "funding": pl.concat(funding),
        "order_book": pl.concat(books) if books else pl.DataFrame(schema=ORDER_BOOK_SCHEMA),
        "sentiment": sentiment,
    }
