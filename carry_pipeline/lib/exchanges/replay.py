"""`ReplayExchange`: serves user-provided files (CSV or Parquet dumps) through the exchange
interface.

The folder holds one file per table, named after the raw table without its `raw_` prefix:
`spot_ohlcv`, `perp_ohlcv`, `funding_rates`, `order_book` (`.parquet` preferred, else `.csv`). Each
file has the columns of the matching schema in `carry_pipeline.lib.schemas` except `ingested_at`
(set at fetch time); `exchange` may be omitted (the configured name is used) and `interval_hours`
may be omitted (derived from consecutive settlements). Timestamps may be ISO strings (naive = UTC),
datetimes or epoch milliseconds. Funding times are floored to the second like live Binance data.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from carry_pipeline.lib.exchanges.base import (
    Market,
    PermanentExchangeError,
    add_interval_hours,
    check_window,
    floor_funding_time,
    timeframe_delta,
    utc_now,
    with_ingested_at,
)
from carry_pipeline.lib.schemas import (
    FUNDING_SCHEMA,
    OHLCV_SCHEMA,
    ORDER_BOOK_SCHEMA,
    UTC_TS,
    conform,
)

_TIME_COLS = {"ts", "funding_time"}


class ReplayExchange:
    """Reads exchange data dumps from a folder.

    Args:
        path: folder holding `spot_ohlcv`, `perp_ohlcv`, `funding_rates`, `order_book` files (any
            subset; fetching a table without a file raises).
        name: value of the `exchange` column where the files have none.
        clock: returns the `ingested_at` time.
    """

    def __init__(
        self, path: str | Path, name: str = "replay", clock: Callable[[], datetime] = utc_now
    ) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise PermanentExchangeError(f"replay folder {self.path} does not exist")
        self.name = name
        self.clock = clock
        self._cache: dict[str, pl.DataFrame] = {}

    def exchange_name(self, market: Market) -> str:
        """The configured name."""
        return self.name

    def check_symbols(self, symbols: list[str]) -> None:
        """Check that each symbol occurs in the file of its leg (spot or perp OHLCV).

        Raises:
            PermanentExchangeError: naming the missing symbols and the file's symbols.
        """
        for market in ("spot", "perp"):
            wanted = [s for s in symbols if (":" in s) == (market == "perp")]
            if not wanted:
                continue
            listed = set(self._table(f"{market}_ohlcv")["symbol"].unique().to_list())
            missing = [s for s in wanted if s not in listed]
            if missing:
                raise PermanentExchangeError(
                    f"replay file {market}_ohlcv in {self.path} has no rows for {missing}; it "
                    f"holds {sorted(listed)}"
                )

    def fetch_ohlcv(
        self, symbol: str, market: Market, timeframe: str, start: datetime, end: datetime
    ) -> pl.DataFrame:
        """Rows of `{market}_ohlcv` for the symbol with `ts` in `[start, end)`.

        Raises:
            PermanentExchangeError: the file's bars are not `timeframe` long.
        """
        check_window(start, end)
        table = self._table(f"{market}_ohlcv")
        frame = _slice(table, "ts", symbol, start, end)
        step = timeframe_delta(timeframe)
        shortest = frame.select(pl.col("ts").diff().min()).item()
        if isinstance(shortest, timedelta) and shortest < step:
            raise PermanentExchangeError(
                f"replay {market}_ohlcv for {symbol} has bars {shortest} apart, shorter than the "
                f"configured timeframe {timeframe}"
            )
        return conform(
            with_ingested_at(frame, self.clock()), OHLCV_SCHEMA, table=f"raw_{market}_ohlcv"
        )

    def fetch_funding(self, symbol: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Rows of `funding_rates` for the symbol in `[start, end)`."""
        check_window(start, end)
        table = self._table("funding_rates")
        if "interval_hours" not in table.columns:
            table = add_interval_hours(table.with_columns(pl.lit(None).alias("interval_hours")))
        if "mark_price" not in table.columns:
            table = table.with_columns(pl.lit(None, dtype=pl.Float64).alias("mark_price"))
        frame = _slice(table, "funding_time", symbol, start, end)
        return conform(
            with_ingested_at(frame, self.clock()), FUNDING_SCHEMA, table="raw_funding_rates"
        )

    def fetch_order_book(
        self, symbol: str, market: Market, start: datetime, end: datetime
    ) -> pl.DataFrame:
        """Rows of `order_book` for the symbol and market in `[start, end)` (none without a
        file)."""
        check_window(start, end)
        if self._file("order_book") is None:
            return pl.DataFrame(schema=ORDER_BOOK_SCHEMA)
        table = self._table("order_book").filter(pl.col("market") == market)
        frame = _slice(table, "ts", symbol, start, end)
        return conform(
            with_ingested_at(frame, self.clock()), ORDER_BOOK_SCHEMA, table="raw_order_book"
        )

    # ---------------------------------------------------------------------------------------------

    def _file(self, stem: str) -> Path | None:
        for suffix in (".parquet", ".csv"):
            p = self.path / f"{stem}{suffix}"
            if p.exists():
                return p
        return None

    def _table(self, stem: str) -> pl.DataFrame:
        if stem in self._cache:
            return self._cache[stem]
        path = self._file(stem)
        if path is None:
            raise PermanentExchangeError(
                f"replay folder {self.path} has no {stem}.parquet or {stem}.csv"
            )
        frame = (
            pl.read_parquet(path)
            if path.suffix == ".parquet"
            else pl.read_csv(path, infer_schema_length=10_000)
        )
        if "symbol" not in frame.columns:
            raise PermanentExchangeError(f"{path} has no 'symbol' column (got {frame.columns})")
        frame = frame.with_columns(
            [_to_utc(frame, c, path) for c in _TIME_COLS if c in frame.columns]
        )
        if "funding_time" in frame.columns:
            frame = frame.with_columns(floor_funding_time(pl.col("funding_time")))
        if "exchange" not in frame.columns:
            frame = frame.with_columns(pl.lit(self.name).alias("exchange"))
        self._cache[stem] = frame
        return frame


def _to_utc(frame: pl.DataFrame, col: str, path: Path) -> pl.Expr:
    # Accept epoch milliseconds, ISO strings (naive = UTC) and naive or aware datetimes.
    dtype = frame.schema[col]
    c = pl.col(col)
    if dtype.is_integer():
        return (c.cast(pl.Int64) * 1000).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if dtype == pl.String:
        parsed = c.str.to_datetime(time_unit="us", time_zone="UTC", strict=True)
        return parsed.cast(UTC_TS)
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            return c.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        return c.dt.convert_time_zone("UTC").cast(UTC_TS)
    raise PermanentExchangeError(f"{path}: column {col} has type {dtype}, not a time")


def _slice(
    table: pl.DataFrame, time_col: str, symbol: str, start: datetime, end: datetime
) -> pl.DataFrame:
    return table.filter(
        (pl.col("symbol") == symbol) & (pl.col(time_col) >= start) & (pl.col(time_col) < end)
    ).sort(time_col)
