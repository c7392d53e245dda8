"""Per-partition invariants of the raw tables, as pure polars functions.

Each function returns `CheckOutcome`s named for the invariant that holds when they pass; a failing
outcome carries the offending rows (at most `MAX_EXAMPLES` of them) so the Dagster check can say
which rows failed. The raw assets run them on every partition as blocking checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl

from carry_pipeline.lib.schemas import UTC_TS

MAX_EXAMPLES = 10


@dataclass(frozen=True)
class CheckOutcome:
    """Result of one invariant on one frame.

    Attributes:
        name: the invariant, e.g. "timestamps_unique_and_increasing".
        passed: whether it holds.
        description: what was checked, and on failure what went wrong.
        failed_rows: number of offending rows.
        examples: up to `MAX_EXAMPLES` offending rows.
        partition: the partition key the frame was (`BTC|2024-01-05`), when the caller checks
            one partition at a time; None otherwise.
    """

    name: str
    passed: bool
    description: str
    failed_rows: int = 0
    examples: pl.DataFrame = field(default_factory=pl.DataFrame)
    partition: str | None = None


def _outcome(name: str, bad: pl.DataFrame, ok_text: str, bad_text: str) -> CheckOutcome:
    if bad.height == 0:
        return CheckOutcome(name, True, ok_text)
    return CheckOutcome(name, False, bad_text, bad.height, bad.head(MAX_EXAMPLES))


def unique_increasing(frame: pl.DataFrame, time_col: str, name: str) -> CheckOutcome:
    """Timestamps strictly increase per symbol (and market, when present): no duplicates, sorted."""
    keys = ["symbol", "market"] if "market" in frame.columns else ["symbol"]
    bad = frame.with_row_index("_row").filter(
        (pl.col(time_col).diff().over(keys) <= timedelta(0)) | pl.col(time_col).is_null()
    )
    return _outcome(
        name,
        bad.drop("_row"),
        f"{time_col} strictly increases per {'/'.join(keys)}",
        f"{bad.height} rows repeat or precede the previous {time_col} of their {'/'.join(keys)}",
    )


def check_ohlcv(
    frame: pl.DataFrame, *, start: datetime, end: datetime, bar: timedelta, now: datetime
) -> list[CheckOutcome]:
    """Invariants of one partition of `raw_spot_ohlcv` / `raw_perp_ohlcv` (one symbol).

    Args:
        frame: the partition's rows.
        start: partition start.
        end: partition end (exclusive).
        bar: bar length.
        now: fetch time; bars closing after it cannot exist yet.
    """
    prices = ["open", "high", "low", "close"]
    nulls = frame.filter(pl.any_horizontal(pl.col(c).is_null() | ~(pl.col(c) > 0) for c in prices))
    box = frame.filter(
        (pl.col("low") > pl.min_horizontal("open", "close"))
        | (pl.col("high") < pl.max_horizontal("open", "close"))
        | (pl.col("volume") < 0)
    )
    last_open = min(end - bar, now - bar)
    grid = (
        pl.datetime_range(start, last_open, bar, eager=True, time_unit="us", time_zone="UTC")
        if last_open >= start
        else pl.Series("ts", [], dtype=pl.Datetime("us", "UTC"))
    )
    present = set(frame["ts"].to_list())
    missing = pl.DataFrame(
        {"ts": pl.Series([t for t in grid.to_list() if t not in present], dtype=UTC_TS)}
    )
    off_grid = frame.filter(~pl.col("ts").is_in(grid.implode()))
    return [
        unique_increasing(frame, "ts", "timestamps_unique_and_increasing"),
        _outcome(
            "no_null_prices",
            nulls,
            "every open/high/low/close is present and positive",
            f"{nulls.height} bars have a null or non-positive price",
        ),
        _outcome(
            "low_open_close_high_ordered",
            box,
            "low <= min(open, close), max(open, close) <= high, volume >= 0",
            f"{box.height} bars violate low <= open, close <= high (or have negative volume)",
        ),
        _outcome(
            "bar_count_matches_grid",
            pl.concat(
                [
                    missing.with_columns(pl.lit("missing").alias("problem")),
                    off_grid.select("ts").with_columns(pl.lit("off grid").alias("problem")),
                ]
            ),
            f"{grid.len()} bars, one per {bar} from {start.isoformat()}",
            f"expected {grid.len()} bars on the {bar} grid, got {frame.height}: "
            f"{missing.height} missing{_gap(missing['ts'])}, {off_grid.height} off the grid",
        ),
    ]


def _gap(missing: pl.Series) -> str:
    # " (first .. last UTC)" of the missing bar open times, or "" when none is missing.
    if missing.len() == 0:
        return ""
    times = missing.sort().to_list()
    return f" ({times[0]:%Y-%m-%d %H:%M} .. {times[-1]:%Y-%m-%d %H:%M} UTC)"


LONGEST_FUNDING_INTERVAL_HOURS = 8.0
"""No venue in use settles less often than every 8 h: a window of W hours holds at least W // 8."""


def check_funding(
    frame: pl.DataFrame,
    *,
    max_abs_rate: float,
    start: datetime | None = None,
    end: datetime | None = None,
    now: datetime | None = None,
    symbol: str = "",
) -> list[CheckOutcome]:
    """Invariants of one partition of `raw_funding_rates` (one symbol).

    Missing rates are a failure, never filled with 0; so is a window with fewer settlements than the
    longest interval allows (a venue that no longer serves that history returns nothing).

    Args:
        frame: the partition's rows.
        max_abs_rate: plausible bound of |funding_rate| per interval (exchange caps are 0.3-4 %).
        start: window start (UTC); with `end`, enables the settlements-present check.
        end: window end (UTC, exclusive).
        now: fetch time; settlements after it cannot exist yet (defaults to `end`).
        symbol: the partition's symbol, named when its settlements are missing.
    """
    nulls = frame.filter(pl.col("funding_rate").is_null() | pl.col("funding_rate").is_nan())
    out = frame.filter(pl.col("funding_rate").abs() > max_abs_rate)
    bad_interval = frame.filter(
        pl.col("interval_hours").is_not_null() & ~pl.col("interval_hours").is_between(0.5, 24.0)
    )
    outcomes = [
        unique_increasing(frame, "funding_time", "funding_times_unique_and_increasing"),
        _outcome(
            "no_null_funding_rates",
            nulls,
            "every settlement has a rate",
            f"{nulls.height} settlements have no rate (refusing to fill them with 0)",
        ),
        _outcome(
            "funding_rate_within_bounds",
            pl.concat([out, bad_interval]).unique(maintain_order=True),
            f"|funding_rate| <= {max_abs_rate} and interval_hours in [0.5, 24]",
            f"{out.height} rates beyond +-{max_abs_rate}, {bad_interval.height} implausible "
            "intervals",
        ),
    ]
    if start is not None and end is not None:
        outcomes.append(settlements_present(frame, start, min(end, now or end), symbol))
    return outcomes


def settlements_present(
    frame: pl.DataFrame, start: datetime, end: datetime, symbol: str
) -> CheckOutcome:
    """At least one settlement of `symbol` per LONGEST_FUNDING_INTERVAL_HOURS of `[start, end)`."""
    hours = max((end - start).total_seconds() / 3_600.0, 0.0)
    expected = int(hours // LONGEST_FUNDING_INTERVAL_HOURS)
    short = pl.DataFrame(
        {"symbol": [symbol], "settlements": [frame.height], "expected_at_least": [expected]}
    ).filter(pl.col("settlements") < pl.col("expected_at_least"))
    return _outcome(
        "funding_settlements_present",
        short,
        f"at least {expected} settlements in {hours:g} h",
        f"{symbol}: {frame.height} settlements between {start:%Y-%m-%d %H:%M} and "
        f"{end:%Y-%m-%d %H:%M} UTC, fewer than the {expected} the longest interval allows: the "
        "venue served no such history (missing funding is never filled)",
    )


def check_order_book(frame: pl.DataFrame) -> list[CheckOutcome]:
    """Invariants of one partition of `raw_order_book` (one symbol, both markets)."""
    crossed = frame.filter(
        ~(pl.col("best_bid") > 0)
        | ~(pl.col("best_ask") > pl.col("best_bid"))
        | ~(pl.col("bid_depth_50bps_usd") >= pl.col("bid_depth_10bps_usd"))
        | ~(pl.col("ask_depth_50bps_usd") >= pl.col("ask_depth_10bps_usd"))
        | ~(pl.col("bid_depth_10bps_usd") >= 0)
        | ~(pl.col("ask_depth_10bps_usd") >= 0)
    )
    return [
        unique_increasing(frame, "ts", "snapshot_times_unique_and_increasing"),
        _outcome(
            "book_not_crossed",
            crossed,
            "0 < best_bid < best_ask and depth within 50 bp >= depth within 10 bp >= 0",
            f"{crossed.height} snapshots are crossed or have inconsistent depth",
        ),
    ]
