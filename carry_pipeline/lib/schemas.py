"""Column contracts of the raw tables (schema `raw` in DuckDB).

Every exchange implementation (`SimulatedExchange`, `CcxtExchange`, `ReplayExchange`) produces
exactly these columns and dtypes, so nothing downstream knows which one ran. Event time (`ts`,
`funding_time`) is kept apart from ingestion time (`ingested_at`); all timestamps are UTC with
microsecond precision.

Symbols are ccxt unified symbols: spot markets `BASE/QUOTE` (`BTC/USDT`), USD-M perpetuals
`BASE/QUOTE:SETTLE` (`BTC/USDT:USDT`). Rates are fractions per funding interval (0.0001 = 1 bp),
never percent.
"""

from __future__ import annotations

import polars as pl

UTC_TS = pl.Datetime("us", "UTC")

OHLCV_SCHEMA: dict[str, pl.DataType] = {
    # Bar open time; a bar covers [ts, ts + bar).
    "ts": UTC_TS,
    "exchange": pl.String(),
    "symbol": pl.String(),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    # Volume in base currency.
    "volume": pl.Float64(),
    "ingested_at": UTC_TS,
}
"""`raw_spot_ohlcv` and `raw_perp_ohlcv`."""

FUNDING_SCHEMA: dict[str, pl.DataType] = {
    # Settlement time, normalised: Binance's millisecond jitter floored to the second.
    "funding_time": UTC_TS,
    "exchange": pl.String(),
    "symbol": pl.String(),
    # Rate settled at funding_time, per funding interval, as a fraction.
    "funding_rate": pl.Float64(),
    # Hours since the previous settlement of this symbol (8, 4 and 1 all occur); null for the first
    # row.
    "interval_hours": pl.Float64(),
    # Mark price at settlement when the exchange publishes it; null otherwise (Binance before
    # 2023-10-31).
    "mark_price": pl.Float64(),
    "ingested_at": UTC_TS,
}
"""`raw_funding_rates`."""

ORDER_BOOK_SCHEMA: dict[str, pl.DataType] = {
    # Snapshot time.
    "ts": UTC_TS,
    "exchange": pl.String(),
    "symbol": pl.String(),
    # "spot" or "perp".
    "market": pl.String(),
    "best_bid": pl.Float64(),
    "best_ask": pl.Float64(),
    "mid": pl.Float64(),
    "spread_bps": pl.Float64(),
    # Quote-currency (USDT) notional resting within +-10 bp and +-50 bp of mid, per side.
    "bid_depth_10bps_usd": pl.Float64(),
    "ask_depth_10bps_usd": pl.Float64(),
    "bid_depth_50bps_usd": pl.Float64(),
    "ask_depth_50bps_usd": pl.Float64(),
    "ingested_at": UTC_TS,
}
"""`raw_order_book`."""

SENTIMENT_SCHEMA: dict[str, pl.DataType] = {
    # Time the score refers to.
    "ts": UTC_TS,
    # Time the source published it; a score is usable only from published_at on.
    "published_at": UTC_TS,
    "source": pl.String(),
    # Index in [-1, 1]: -1 extreme fear, +1 extreme greed.
    "score": pl.Float64(),
}
"""Sentiment as a source delivers it (simulated exchange index, user file, HTTP source)."""


def empty_frame(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """An empty frame with exactly the columns and dtypes of `schema`."""
    return pl.DataFrame(schema=schema)


def conform(frame: pl.DataFrame, schema: dict[str, pl.DataType], *, table: str) -> pl.DataFrame:
    """Select and cast `frame` to `schema`, failing with the table and column names when one is
    missing.

    Args:
        frame: the frame an exchange produced.
        schema: one of the schemas above.
        table: the raw table's name, used in the error message.

    Raises:
        ValueError: a column of the schema is absent from `frame`.
    """
    missing = [c for c in schema if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{table}: columns {missing} are missing (got {frame.columns}); expected {list(schema)}"
        )
    return frame.select([pl.col(c).cast(t, strict=True) for c, t in schema.items()])
