"""The exchange interface every market-data source implements, and helpers they share.

An exchange client fetches one symbol over one half-open window `[start, end)` and returns a polars
frame with exactly the columns of `carry_pipeline.lib.schemas` (`ingested_at` included), so the raw
assets never know which implementation ran. Errors are split in two: `PermanentExchangeError` (bad
symbol, bad credentials, bad configuration; retrying cannot help) and `TransientExchangeError` (the
exchange kept failing with network-level errors after the client's own bounded retries; a later run
may succeed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import polars as pl

from carry_pipeline.lib.schemas import UTC_TS

Market = Literal["spot", "perp"]


class PermanentExchangeError(Exception):
    """A failure that retrying cannot fix: unknown symbol, rejected credentials, invalid request."""


class TransientExchangeError(Exception):
    """Network-level failures (rate limits, timeouts, 5xx, maintenance, corrupt bodies) persisted
    through every retry the client was allowed."""


@dataclass(frozen=True)
class Pair:
    """The spot and perpetual legs of one asset, as ccxt unified symbols.

    Attributes:
        base: base asset ("BTC"); also the symbol partition key of the raw assets.
        quote: quote and settlement currency ("USDT").
    """

    base: str
    quote: str = "USDT"

    @property
    def spot(self) -> str:
        """Spot symbol, e.g. `BTC/USDT`."""
        return f"{self.base}/{self.quote}"

    @property
    def perp(self) -> str:
        """Linear perpetual symbol, e.g. `BTC/USDT:USDT`."""
        return f"{self.base}/{self.quote}:{self.quote}"

    def symbol(self, market: Market) -> str:
        """The symbol of one leg."""
        return self.spot if market == "spot" else self.perp


@runtime_checkable
class ExchangeClient(Protocol):
    """What the raw assets need from a market-data source.

    Windows are half-open `[start, end)` in UTC. OHLCV rows are bars whose OPEN time lies in the
    window and that are complete (closed) when fetched; funding rows are settlements in the window;
    order-book rows are snapshots taken in the window (a live exchange can only serve "now").
    """

    def exchange_name(self, market: Market) -> str:
        """Value of the `exchange` column for rows of this market leg."""
        ...

    def check_symbols(self, symbols: list[str]) -> None:
        """Raise `PermanentExchangeError` naming every symbol the source does not list."""
        ...

    def fetch_ohlcv(
        self, symbol: str, market: Market, timeframe: str, start: datetime, end: datetime
    ) -> pl.DataFrame:
        """Bars in `OHLCV_SCHEMA`."""
        ...

    def fetch_funding(self, symbol: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Funding settlements in `FUNDING_SCHEMA`."""
        ...

    def fetch_order_book(
        self, symbol: str, market: Market, start: datetime, end: datetime
    ) -> pl.DataFrame:
        """Order-book snapshots in `ORDER_BOOK_SCHEMA`."""
        ...


def utc_now() -> datetime:
    """The current time, UTC, truncated to microseconds (the raw tables' precision)."""
    return datetime.now(UTC)


def check_window(start: datetime, end: datetime) -> None:
    """Raise ValueError unless `start < end` and both are timezone-aware.

    Args:
        start: window start.
        end: window end (exclusive).
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError(f"window {start} .. {end} must be timezone-aware (UTC)")
    if not start < end:
        raise ValueError(f"window start {start.isoformat()} must be before end {end.isoformat()}")


def timeframe_delta(timeframe: str) -> timedelta:
    """The length of a ccxt timeframe ("1m", "15m", "1h", "4h", "1d").

    Raises:
        ValueError: an unknown timeframe.
    """
    units = {"m": 60, "h": 3600, "d": 86400, "w": 604800}
    num, unit = timeframe[:-1], timeframe[-1:]
    if not num.isdigit() or unit not in units or int(num) <= 0:
        raise ValueError(f"timeframe {timeframe!r} is not one of the forms '1m', '15m', '1h', '1d'")
    return timedelta(seconds=int(num) * units[unit])


def ms_to_ts(ms: pl.Series | list[int]) -> pl.Series:
    """Epoch milliseconds to Datetime(us, UTC)."""
    s = pl.Series(ms, dtype=pl.Int64) if not isinstance(ms, pl.Series) else ms.cast(pl.Int64)
    return (s * 1000).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def with_ingested_at(frame: pl.DataFrame, ingested_at: datetime) -> pl.DataFrame:
    """Add the `ingested_at` column (one fetch time for every row of the fetch)."""
    return frame.with_columns(pl.lit(ingested_at).cast(UTC_TS).alias("ingested_at"))


def floor_funding_time(ts: pl.Expr) -> pl.Expr:
    """Floor settlement times to the second: Binance stamps `fundingTime` with millisecond jitter
    (`00:00:00.019`), which would otherwise miss the bar grid and break uniqueness across pages."""
    return ts.dt.truncate("1s")


def add_interval_hours(frame: pl.DataFrame) -> pl.DataFrame:
    """Fill `interval_hours` = hours since the symbol's previous settlement (null for its first
    row).

    Args:
        frame: funding rows with `symbol` and `funding_time`, any order.
    """
    return frame.sort("symbol", "funding_time").with_columns(
        (pl.col("funding_time").diff().over("symbol").dt.total_seconds() / 3600.0)
        .cast(pl.Float64)
        .alias("interval_hours")
    )


@dataclass(frozen=True)
class BookSummary:
    """An order book reduced to the figures the raw table keeps (quote currency per side).

    Attributes:
        best_bid: highest bid price.
        best_ask: lowest ask price.
        mid: (best_bid + best_ask) / 2.
        spread_bps: (best_ask - best_bid) / mid in bp.
        bid_depth_10bps_usd: quote notional of bids priced at or above mid * (1 - 10 bp).
        ask_depth_10bps_usd: quote notional of asks priced at or below mid * (1 + 10 bp).
        bid_depth_50bps_usd: as above within 50 bp.
        ask_depth_50bps_usd: as above within 50 bp.
    """

    best_bid: float
    best_ask: float
    mid: float
    spread_bps: float
    bid_depth_10bps_usd: float
    ask_depth_10bps_usd: float
    bid_depth_50bps_usd: float
    ask_depth_50bps_usd: float


def reduce_order_book(
    bids: list[list[float]] | np.ndarray,
    asks: list[list[float]] | np.ndarray,
    contract_size: float = 1.0,
    *,
    where: str = "order book",
) -> BookSummary:
    """Reduce price levels to top of book and depth within +-10/+-50 bp of mid, per side.

    Args:
        bids: `[price, amount]` levels, best first (extra columns are ignored).
        asks: `[price, amount]` levels, best first.
        contract_size: base units per amount unit: 1 for spot and Binance/Bybit linear perps, the
            contract value (OKX `ctVal`, e.g. 0.01 BTC) where amounts are contracts.
        where: names the book in error messages.

    Returns:
        The summary; depths are price * amount * contract_size summed over qualifying levels.

    Raises:
        ValueError: an empty side, non-positive prices or amounts, or a crossed book.
    """
    b = np.asarray([lv[:2] for lv in bids], dtype=float).reshape(-1, 2)
    a = np.asarray([lv[:2] for lv in asks], dtype=float).reshape(-1, 2)
    if b.shape[0] == 0 or a.shape[0] == 0:
        raise ValueError(f"{where}: empty side (bids {b.shape[0]} levels, asks {a.shape[0]})")
    if (b <= 0).any() or (a <= 0).any() or not np.isfinite(b).all() or not np.isfinite(a).all():
        raise ValueError(f"{where}: non-positive or non-finite price/amount levels")
    best_bid, best_ask = float(b[:, 0].max()), float(a[:, 0].min())
    if best_bid >= best_ask:
        raise ValueError(f"{where}: crossed book, best bid {best_bid} >= best ask {best_ask}")
    mid = (best_bid + best_ask) / 2.0
    notional_b = b[:, 0] * b[:, 1] * contract_size
    notional_a = a[:, 0] * a[:, 1] * contract_size

    def depth(bps: float) -> tuple[float, float]:
        # A relative tolerance keeps a level sitting exactly on the band edge inside it.
        lo, hi = mid * (1.0 - bps * 1e-4) * (1 - 1e-12), mid * (1.0 + bps * 1e-4) * (1 + 1e-12)
        return float(notional_b[b[:, 0] >= lo].sum()), float(notional_a[a[:, 0] <= hi].sum())

    b10, a10 = depth(10.0)
    b50, a50 = depth(50.0)
    return BookSummary(
        best_bid, best_ask, mid, (best_ask - best_bid) / mid * 1e4, b10, a10, b50, a50
    )
