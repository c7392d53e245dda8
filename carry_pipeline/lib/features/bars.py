"""`market_bars`: the raw tables aligned on one bar grid, in the env's market-frame contract.

One row per bar per symbol. `ts` is the bar's CLOSE time (open + bar): the time at which every value
of the row is known. `symbol` is the perpetual's unified symbol (`BTC/USDT:USDT`); its spot leg is
the symbol before the colon (`BTC/USDT`).

Point in time:
- a raw bar that opens at `o` is known at `o + raw bar`; the aligned bar closing at `ts` aggregates
  the raw bars that close at or before `ts`;
- a funding rate settled at `funding_time` lands on the first bar that closes at or after it (a
  settlement at 08:00:00 lands on the bar closing at 08:00, one at 08:00:01 on the next), and so
  does the mark price published with it (`raw_funding_rates.mark_price`).
  `funding_time` is floored to the second first, as the raw schema promises (Binance stamps
  settlements with up to ~30 ms of jitter);
- an order-book snapshot at `s` is used by the bars closing at or after `s`, for at most
  `max_book_age`.

Depth and spread come from `raw_order_book` where a fresh snapshot exists. Exchanges serve no
history of the book, so where none exists the documented proxies are used (`book_proxy` is true on
those rows):
- depth per leg = `proxy_depth_fraction` x the leg's mean traded notional per hour over the trailing
  `proxy_window` (resting depth within +-50 bp scales with turnover; ~0.2 of an hour's notional
  matches Binance's BTC and ETH books);
- spread per leg = `proxy_spread_bps` (a constant: high-low estimators on 15-minute crypto bars
  measure intrabar volatility, tens of bp, not the quoted spread of ~0.1-1 bp).

Missing bars (exchange outages) are forward-filled from the previous close for at most
`max_fill_bars` bars: open = high = low = close = previous close, volume 0, and the leg's `*_stale`
flag set. A longer gap is an error that names the symbol and the gap, never a silent fill.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from carry_pipeline.lib.features.timeframes import bars_in, infer_bar, parse_duration
from carry_pipeline.lib.schemas import (
    FUNDING_SCHEMA,
    OHLCV_SCHEMA,
    ORDER_BOOK_SCHEMA,
    UTC_TS,
    conform,
)

OHLC = ("open", "high", "low", "close")
BOOK_LEGS = ("spot", "perp")


@dataclass(frozen=True)
class MarketBarsConfig:
    """How `build_market_bars` aligns the raw tables."""

    bar: str = "15m"
    """Bar of the aligned grid (`15m`, `1h`, `4h`, ...); a whole multiple of the raw bars'
    length."""
    symbols: tuple[str, ...] | None = None
    """Perpetual symbols to keep (`BTC/USDT:USDT`); None keeps every perp of `raw_perp_ohlcv`. Each
    needs its spot leg (`BTC/USDT`) in `raw_spot_ohlcv`."""
    max_fill_bars: int = 4
    """Longest run of missing bars per leg that is forward-filled (and flagged stale); a longer gap
    fails."""
    max_book_age: str = "1h"
    """Oldest order-book snapshot still used for a bar's depth and spread; older ones give way to
    the proxies."""
    depth_band_bps: int = 50
    """Band around mid whose resting notional is the depth: 10 or 50 (the raw book's two bands). The
    depth of a leg is the thinner of its two sides."""
    proxy_depth_fraction: float = 0.2
    """Depth proxy: this fraction of the leg's mean traded USDT notional per hour over
    `proxy_window`."""
    proxy_window: str = "1d"
    """Trailing window of the depth proxy."""
    proxy_spread_bps: float = 1.0
    """Spread proxy per leg, in basis points, where no fresh snapshot exists."""

    def __post_init__(self) -> None:
        parse_duration(self.bar)
        parse_duration(self.max_book_age)
        bars_in(self.proxy_window, parse_duration(self.bar), what="proxy_window")
        if self.max_fill_bars < 0:
            raise ValueError(f"max_fill_bars must be >= 0, got {self.max_fill_bars}")
        if self.depth_band_bps not in (10, 50):
            raise ValueError(f"depth_band_bps must be 10 or 50, got {self.depth_band_bps}")
        if self.proxy_depth_fraction <= 0 or self.proxy_spread_bps < 0:
            raise ValueError("proxy_depth_fraction must be > 0 and proxy_spread_bps >= 0")


def spot_symbol_of(perp_symbol: str) -> str:
    """The spot leg of a perpetual's unified symbol: `BTC/USDT:USDT` -> `BTC/USDT`.

    Raises:
        ValueError: the symbol is not of the form `BASE/QUOTE:SETTLE`.
    """
    base, sep, settle = perp_symbol.partition(":")
    if not sep or "/" not in base or not settle:
        raise ValueError(
            f"{perp_symbol!r} is not a perpetual's unified symbol of the form BASE/QUOTE:SETTLE "
            "(e.g. 'BTC/USDT:USDT')"
        )
    return base


def build_market_bars(
    spot: pl.DataFrame,
    perp: pl.DataFrame,
    funding: pl.DataFrame,
    order_book: pl.DataFrame | None = None,
    config: MarketBarsConfig | None = None,
) -> pl.DataFrame:
    """Align raw spot, perp, funding and order-book tables on one bar grid per symbol.

    Args:
        spot: `raw_spot_ohlcv` (`OHLCV_SCHEMA`, `ts` = bar open time, spot symbols).
        perp: `raw_perp_ohlcv` (`OHLCV_SCHEMA`, perp symbols).
        funding: `raw_funding_rates` (`FUNDING_SCHEMA`).
        order_book: `raw_order_book` (`ORDER_BOOK_SCHEMA`) or None when there is no book history.
        config: alignment settings; defaults to `MarketBarsConfig()`.

    Returns:
        One row per bar close `ts` per perp `symbol`, sorted by symbol then ts, every symbol on the
        same grid: `spot_open..spot_close`, `spot_volume`, `perp_open..perp_close`, `perp_volume`,
        `spot_price`, `perp_price`, `funding_rate` (null where no settlement falls in the bar),
        `funding_interval_hours` (hours of funding the last settled rate covers, carried forward),
        `mark_price` (the venue's mark at the bar's settlement; null where no settlement falls in
        the bar or the venue publishes no mark, never filled),
        `spot_depth_usd`, `perp_depth_usd`, `spot_spread_bps`, `perp_spread_bps`, `spread_bps` (mean
        of the legs), `spot_stale`, `perp_stale`, `stale`, `book_proxy`.

    Raises:
        ValueError: a column is missing, a symbol lacks its spot leg, a key is duplicated, prices
            are null or non-positive, the raw bars are coarser than `config.bar`, the legs do not
            overlap, or a gap is longer than `config.max_fill_bars`.
    """
    cfg = config or MarketBarsConfig()
    bar = parse_duration(cfg.bar)
    spot = _validated_ohlcv(spot, "raw_spot_ohlcv")
    perp = _validated_ohlcv(perp, "raw_perp_ohlcv")
    funding = conform(funding, FUNDING_SCHEMA, table="raw_funding_rates")

    symbols = _select_symbols(spot, perp, cfg.symbols)
    spot_of = {s: spot_symbol_of(s) for s in symbols}
    perp = perp.filter(pl.col("symbol").is_in(symbols))
    spot = spot.filter(pl.col("symbol").is_in(list(spot_of.values()))).with_columns(
        pl.col("symbol").replace_strict({v: k for k, v in spot_of.items()})
    )
    spot_bars = _resample(spot, bar, "raw_spot_ohlcv")
    perp_bars = _resample(perp, bar, "raw_perp_ohlcv")
    grid = _grid(spot_bars, perp_bars, symbols, bar)

    frame = _on_grid(grid, spot_bars, perp_bars)
    frame = _fill_gaps(frame, cfg.max_fill_bars, bar)
    frame = _attach_funding(frame, funding, bar)
    frame = _attach_book(frame, order_book, spot_of, cfg, bar)
    return frame.select(MARKET_BAR_COLUMNS)


MARKET_BAR_COLUMNS = [
    "ts",
    "symbol",
    *[f"spot_{c}" for c in OHLC],
    "spot_volume",
    *[f"perp_{c}" for c in OHLC],
    "perp_volume",
    "spot_price",
    "perp_price",
    "funding_rate",
    "funding_interval_hours",
    "mark_price",
    "spot_depth_usd",
    "perp_depth_usd",
    "spot_spread_bps",
    "perp_spread_bps",
    "spread_bps",
    "spot_stale",
    "perp_stale",
    "stale",
    "book_proxy",
]
"""Columns of `market_bars`, in order."""


def _validated_ohlcv(frame: pl.DataFrame, table: str) -> pl.DataFrame:
    frame = conform(frame, OHLCV_SCHEMA, table=table)
    if frame.height == 0:
        raise ValueError(f"{table} is empty; nothing to align")
    frame = frame.sort("symbol", "ts")
    same_key = (pl.col("ts") == pl.col("ts").shift(1)) & (
        pl.col("symbol") == pl.col("symbol").shift(1)
    )
    problems = frame.select(
        *[pl.col(c).null_count().alias(c) for c in ("ts", "symbol", *OHLC)],
        (pl.min_horizontal(*OHLC) <= 0).sum().alias("_nonpositive"),
        same_key.sum().alias("_duplicated"),
    ).row(0, named=True)
    nulls = {c: problems[c] for c in ("ts", "symbol", *OHLC) if problems[c]}
    if nulls:
        raise ValueError(
            f"{table} has null values {nulls}; refusing to align bars with missing prices"
        )
    if problems["_nonpositive"]:
        first = frame.filter(pl.min_horizontal(*OHLC) <= 0).row(0, named=True)
        raise ValueError(
            f"{table} has {problems['_nonpositive']} rows with a non-positive price, first "
            f"{first['symbol']} at {first['ts']}"
        )
    if problems["_duplicated"]:
        first = frame.filter(same_key).row(0, named=True)
        raise ValueError(
            f"{table} has {problems['_duplicated']} duplicated (symbol, ts) rows, first "
            f"{first['symbol']} at {first['ts']}; one exchange per leg and one row per bar "
            "are expected"
        )
    return frame


def _select_symbols(
    spot: pl.DataFrame, perp: pl.DataFrame, wanted: tuple[str, ...] | None
) -> list[str]:
    perps = sorted(perp["symbol"].unique().to_list())
    spots = set(spot["symbol"].unique().to_list())
    symbols = list(wanted) if wanted is not None else perps
    if not symbols:
        raise ValueError("no perpetual symbols to align (raw_perp_ohlcv is empty or symbols=())")
    for symbol in symbols:
        if symbol not in perps:
            raise ValueError(f"{symbol} has no rows in raw_perp_ohlcv (perps there: {perps})")
        if spot_symbol_of(symbol) not in spots:
            raise ValueError(
                f"{symbol} has no spot leg: expected symbol {spot_symbol_of(symbol)} in "
                "raw_spot_ohlcv "
                f"(spot symbols there: {sorted(spots)})"
            )
    return symbols


def _resample(frame: pl.DataFrame, bar: timedelta, table: str) -> pl.DataFrame:
    # Returns one row per (symbol, bar close ts) from raw bars that are `bar` long or finer.
    out = []
    for (symbol,), part in frame.group_by("symbol", maintain_order=True):
        raw_bar = infer_bar(part["ts"], what=f"{table} {symbol}")
        if raw_bar > bar or bar % raw_bar:
            raise ValueError(
                f"{table} {symbol}: raw bars are {raw_bar} long, which does not divide the "
                f"{bar} bar of "
                "market_bars; choose a bar that is a whole multiple of the raw bars"
            )
        if (
            raw_bar == bar
            and part.select((pl.col("ts").dt.truncate(bar) == pl.col("ts")).all()).item()
        ):
            out.append(part.select("symbol", (pl.col("ts") + bar).alias("ts"), *OHLC, "volume"))
            continue
        # A bar is complete only when its last raw bar has closed: drop a trailing partial bar.
        last_close = part["ts"].max() + raw_bar  # type: ignore[operator]
        agg = (
            part.group_by(pl.col("ts").dt.truncate(bar).alias("open_ts"), maintain_order=True)
            .agg(
                pl.col("open").first(),
                pl.col("high").max(),
                pl.col("low").min(),
                pl.col("close").last(),
                pl.col("volume").sum(),
            )
            .with_columns(pl.lit(symbol).alias("symbol"), (pl.col("open_ts") + bar).alias("ts"))
            .filter(pl.col("ts") <= last_close)
        )
        out.append(agg.select("symbol", "ts", *OHLC, "volume"))
    return pl.concat(out).with_columns(pl.col("ts").cast(UTC_TS))


def _grid(
    spot: pl.DataFrame, perp: pl.DataFrame, symbols: list[str], bar: timedelta
) -> pl.DataFrame:
    # The common grid: from the latest first bar to the earliest last bar over every symbol and leg.
    spans = pl.concat(
        [
            leg.group_by("symbol").agg(
                pl.lit(name).alias("leg"),
                pl.col("ts").min().alias("first"),
                pl.col("ts").max().alias("last"),
            )
            for name, leg in (("spot", spot), ("perp", perp))
        ]
    )
    start, end = spans["first"].max(), spans["last"].min()
    if not isinstance(start, datetime) or not isinstance(end, datetime) or start > end:
        raise ValueError(
            "the symbols' spot and perp bars do not overlap in time: "
            + ", ".join(
                f"{r['symbol']} {r['leg']} {r['first']}..{r['last']}"
                for r in spans.iter_rows(named=True)
            )
        )
    ts = pl.datetime_range(start, end, bar, eager=True, time_unit="us", time_zone="UTC").alias("ts")
    return (
        pl.DataFrame({"symbol": symbols}).join(pl.DataFrame(ts), how="cross").sort("symbol", "ts")
    )


def _on_grid(grid: pl.DataFrame, spot: pl.DataFrame, perp: pl.DataFrame) -> pl.DataFrame:
    # Both legs' bars on the grid (null where a bar is missing), in grid order. When a leg already
    # holds exactly the grid's rows (no gaps, the usual case) it is stacked beside it, no join.
    start, end = grid["ts"].min(), grid["ts"].max()
    columns = [grid]
    for name, leg in (("spot", spot), ("perp", perp)):
        leg = leg.filter(pl.col("ts").is_between(start, end)).sort("symbol", "ts")
        if (
            leg.height == grid.height
            and leg["ts"].equals(grid["ts"])
            and leg["symbol"].equals(grid["symbol"])
        ):
            columns.append(_prefixed(leg, name).drop("symbol", "ts"))
        else:
            joined = grid.join(
                _prefixed(leg, name), on=["symbol", "ts"], how="left", maintain_order="left"
            )
            columns.append(joined.drop("symbol", "ts"))
    return pl.concat(columns, how="horizontal")


def _prefixed(frame: pl.DataFrame, leg: str) -> pl.DataFrame:
    return frame.rename({c: f"{leg}_{c}" for c in (*OHLC, "volume")})


def _fill_gaps(frame: pl.DataFrame, limit: int, bar: timedelta) -> pl.DataFrame:
    # Forward-fill each leg's close for at most `limit` bars; flat OHLC and zero volume on filled
    # bars.
    exprs = []
    for leg in ("spot", "perp"):
        close = pl.col(f"{leg}_close").forward_fill(limit=limit).over("symbol")
        stale = pl.col(f"{leg}_close").is_null()
        exprs += [
            stale.alias(f"{leg}_stale"),
            close.alias(f"{leg}_filled"),
        ]
    frame = frame.with_columns(exprs)
    for leg in ("spot", "perp"):
        unfilled = frame.filter(pl.col(f"{leg}_filled").is_null())
        if unfilled.height:
            first = unfilled.row(0, named=True)
            raise ValueError(
                f"{leg} leg of {first['symbol']}: {unfilled.height} bars missing beyond the "
                f"{limit}-bar forward-fill bound (max_fill_bars), first at {first['ts']} "
                f"(bar {bar}); fix the raw data or raise max_fill_bars"
            )
    fills = []
    for leg in ("spot", "perp"):
        filled = pl.col(f"{leg}_filled")
        fills += [pl.col(f"{leg}_{c}").fill_null(filled) for c in OHLC]
        fills.append(pl.col(f"{leg}_volume").fill_null(0.0))
    return frame.with_columns(fills).with_columns(
        pl.col("spot_close").alias("spot_price"),
        pl.col("perp_close").alias("perp_price"),
        (pl.col("spot_stale") | pl.col("perp_stale")).alias("stale"),
    )


def _attach_funding(frame: pl.DataFrame, funding: pl.DataFrame, bar: timedelta) -> pl.DataFrame:
    symbols = frame["symbol"].unique().to_list()
    funding = funding.filter(pl.col("symbol").is_in(symbols))
    nulls = funding.filter(pl.col("funding_rate").is_null() | pl.col("funding_time").is_null())
    if nulls.height:
        first = nulls.row(0, named=True)
        raise ValueError(
            f"raw_funding_rates has {nulls.height} rows with a null funding_time or "
            "funding_rate, first "
            f"{first['symbol']} at {first['funding_time']}; refusing to fill them with 0"
        )
    settled = pl.col("funding_time").dt.truncate("1s")
    floor = settled.dt.truncate(bar)
    events = (
        funding.with_columns(
            pl.when(floor == settled).then(floor).otherwise(floor + bar).alias("ts")
        )
        .sort("symbol", "funding_time")
        # Several settlements inside one bar (1h funding on 4h bars) are paid in that bar: their
        # sum, which covers the sum of their intervals (null if one interval is unknown).
        .group_by("symbol", "ts", maintain_order=True)
        .agg(
            pl.col("funding_rate").sum(),
            pl.when(pl.col("interval_hours").null_count() == 0)
            .then(pl.col("interval_hours").sum())
            .alias("funding_interval_hours"),
            # The venue's mark at the settlement (null where it publishes none), stamped like the
            # rate: known at the settlement, so at the close of the bar it lands on. With several
            # settlements in one bar, the last one's.
            pl.col("mark_price").last(),
        )
    )
    frame = frame.join(events, on=["symbol", "ts"], how="left", maintain_order="left")
    return frame.with_columns(pl.col("funding_interval_hours").forward_fill().over("symbol"))


def _attach_book(
    frame: pl.DataFrame,
    order_book: pl.DataFrame | None,
    spot_of: dict[str, str],
    cfg: MarketBarsConfig,
    bar: timedelta,
) -> pl.DataFrame:
    window = bars_in(cfg.proxy_window, bar, what="proxy_window")
    per_hour = timedelta(hours=1) / bar
    proxies = []
    for leg in BOOK_LEGS:
        notional = pl.col(f"{leg}_volume") * pl.col(f"{leg}_close")
        hourly = notional.rolling_mean(window, min_samples=1).over("symbol") * per_hour
        proxies.append((cfg.proxy_depth_fraction * hourly).alias(f"{leg}_depth_proxy"))
    frame = frame.with_columns(proxies)

    book = _book_per_leg(order_book, spot_of, cfg)
    for leg in BOOK_LEGS:
        side = book.filter(pl.col("market") == leg).drop("market").sort("symbol", "book_ts")
        # `frame` is sorted by symbol then ts (grid order, kept by every left join above).
        frame = frame.join_asof(
            side,
            left_on="ts",
            right_on="book_ts",
            by="symbol",
            strategy="backward",
            tolerance=parse_duration(cfg.max_book_age),
            check_sortedness=False,
        )
        frame = frame.rename(
            {"book_depth": f"{leg}_book_depth", "book_spread": f"{leg}_book_spread"}
        ).drop("book_ts")
    has_book = pl.col("spot_book_depth").is_not_null() & pl.col("perp_book_depth").is_not_null()
    legs = []
    for leg in BOOK_LEGS:
        legs += [
            pl.when(has_book)
            .then(pl.col(f"{leg}_book_depth"))
            .otherwise(pl.col(f"{leg}_depth_proxy"))
            .alias(f"{leg}_depth_usd"),
            pl.when(has_book)
            .then(pl.col(f"{leg}_book_spread"))
            .otherwise(pl.lit(cfg.proxy_spread_bps))
            .alias(f"{leg}_spread_bps"),
        ]
    return frame.with_columns(*legs, (~has_book).alias("book_proxy")).with_columns(
        ((pl.col("spot_spread_bps") + pl.col("perp_spread_bps")) / 2).alias("spread_bps")
    )


def _book_per_leg(
    order_book: pl.DataFrame | None, spot_of: dict[str, str], cfg: MarketBarsConfig
) -> pl.DataFrame:
    # Snapshots keyed by the perp symbol and leg, with the thinner side's depth and the quoted
    # spread.
    schema = {
        "symbol": pl.String(),
        "market": pl.String(),
        "book_ts": UTC_TS,
        "book_depth": pl.Float64(),
        "book_spread": pl.Float64(),
    }
    if order_book is None or order_book.height == 0:
        return pl.DataFrame(schema=schema)
    book = conform(order_book, ORDER_BOOK_SCHEMA, table="raw_order_book")
    bad = book.filter(~pl.col("market").is_in(BOOK_LEGS))
    if bad.height:
        raise ValueError(
            f"raw_order_book has {bad.height} rows with market not in {BOOK_LEGS}, "
            f"e.g. {bad['market'][0]!r}"
        )
    perp_of_spot = {v: k for k, v in spot_of.items()}
    band = cfg.depth_band_bps
    book = book.with_columns(
        pl.when(pl.col("market") == "spot")
        .then(pl.col("symbol").replace(perp_of_spot))
        .otherwise(pl.col("symbol"))
        .alias("symbol")
    ).filter(pl.col("symbol").is_in(list(spot_of)))
    book = book.select(
        "symbol",
        "market",
        pl.col("ts").alias("book_ts"),
        pl.min_horizontal(f"bid_depth_{band}bps_usd", f"ask_depth_{band}bps_usd").alias(
            "book_depth"
        ),
        pl.col("spread_bps").alias("book_spread"),
    ).drop_nulls()
    return book
