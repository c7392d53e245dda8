"""Raw market-data assets (DuckDB schema `raw`): spot and perp OHLCV, funding rates, order books.

Each asset is partitioned by UTC day x asset (`partitions.py`) and handles a partition range: a
backfill is one run per asset (`BackfillPolicy.single_run()`; Dagster splits multi-partition ranges
by the static dimension), which fetches the whole window per symbol once and writes every day of it.
The daily schedule still runs one day x asset partition per run. Validation comes before the write:
every day x symbol of the window runs the blocking invariants (`lib/validation.py`) first, and only
when all pass is the frame handed to the IO manager, which replaces the partitions' rows (reruns are
idempotent). A failing partition fails the run with the table, partition and gap named, the check
metadata lists the failing rows, and the stored rows are left exactly as they were.
Exchange calls run in the `exchange_api` pool (one at a time across runs, see `dagster.yaml`).
Transient exchange failures are retried (ccxt-level backoff, then the step's `RetryPolicy`);
permanent ones fail at once.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext

from carry_pipeline.defs.ingestion.partitions import ingest_partitions
from carry_pipeline.defs.ingestion.resources import ExchangeResource
from carry_pipeline.lib.exchanges import ExchangeClient, Pair, PermanentExchangeError
from carry_pipeline.lib.exchanges.base import Market, timeframe_delta, utc_now
from carry_pipeline.lib.validation import (
    CheckOutcome,
    check_funding,
    check_ohlcv,
    check_order_book,
)

SCHEMA = "raw"
GROUP = "ingestion"
POOL = "exchange_api"
RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)
# The asset dimension's key is the base currency, the part of the symbol before "/".
_ASSET_EXPR = "split_part(symbol, '/', 1)"
MAX_REPORTED = 20
"""At most this many failing partition checks are listed in a refusal's error message."""

OHLCV_CHECKS = {
    "timestamps_unique_and_increasing": "Bar open times strictly increase per symbol.",
    "no_null_prices": "Every open/high/low/close is present and positive.",
    "low_open_close_high_ordered": "low <= open, close <= high; volume >= 0.",
    "bar_count_matches_grid": "One bar per timeframe step of the partition (closed bars only).",
}
FUNDING_CHECKS = {
    "funding_times_unique_and_increasing": "Settlement times strictly increase per symbol.",
    "no_null_funding_rates": "Every settlement has a rate (missing funding is never filled).",
    "funding_rate_within_bounds": "|rate| within exchange.max_abs_funding_rate; sane intervals.",
    "funding_settlements_present": "At least one settlement per 8 h of the partition (up to now).",
}
BOOK_CHECKS = {
    "snapshot_times_unique_and_increasing": "Snapshot times strictly increase per symbol/market.",
    "book_not_crossed": "0 < bid < ask; depth within 50 bp >= depth within 10 bp >= 0.",
}


@dataclass(frozen=True)
class Scope:
    """The window and assets one materialisation covers.

    Attributes:
        start: window start (UTC, inclusive).
        end: window end (UTC, exclusive).
        bases: base currencies (asset-dimension keys).
    """

    start: datetime
    end: datetime
    bases: list[str]


def partition_scope(context: AssetExecutionContext) -> Scope:
    """The time window and assets of the partition (or partition range) being materialised."""
    keys = context.partition_keys
    if not keys:
        raise dg.Failure("raw assets are partitioned: select a partition", allow_retries=False)
    bases = sorted(
        {ingest_partitions.get_partition_key_from_str(k).keys_by_dimension["asset"] for k in keys}
    )
    window = context.partition_time_window
    return Scope(window.start, window.end, bases)


def _specs(name: str, checks: dict[str, str]) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(check, asset=dg.AssetKey([SCHEMA, name]), blocking=True, description=d)
        for check, d in checks.items()
    ]


def _raw_asset(name: str, *, time_column: str, checks: dict[str, str]) -> Any:
    # Every raw table: schema `raw`, day x asset partitions on its event-time column, blocking
    # in-asset checks, the exchange pool and the transient-error retry policy.
    return dg.asset(
        name=name,
        key_prefix=SCHEMA,
        group_name=GROUP,
        partitions_def=ingest_partitions,
        metadata={"partition_expr": {"date": time_column, "asset": _ASSET_EXPR}},
        check_specs=_specs(name, checks),
        pool=POOL,
        retry_policy=RETRY,
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"duckdb", "polars"},
    )


def _guard(fn: Callable[[], pl.DataFrame]) -> pl.DataFrame:
    # Permanent exchange errors fail the step without retries; transient ones propagate to
    # RetryPolicy.
    try:
        return fn()
    except PermanentExchangeError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc


def _client(exchange: ExchangeResource, scope: Scope, symbols: list[str]) -> ExchangeClient:
    try:
        client = exchange.client()
        client.check_symbols(symbols)
    except PermanentExchangeError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    return client


def _merge(outcomes: list[CheckOutcome]) -> list[CheckOutcome]:
    # One outcome per invariant across the partition's symbols.
    merged: dict[str, CheckOutcome] = {}
    for o in outcomes:
        m = merged.get(o.name)
        if m is None:
            merged[o.name] = o
            continue
        examples = pl.concat([m.examples, o.examples], how="diagonal_relaxed")
        merged[o.name] = CheckOutcome(
            o.name,
            m.passed and o.passed,
            m.description if not m.passed or o.passed else o.description,
            m.failed_rows + o.failed_rows,
            examples.head(10),
        )
    return list(merged.values())


def partition_days(scope: Scope) -> list[tuple[datetime, datetime]]:
    """The `[start, end)` bounds of each UTC day of the scope's window, in order."""
    days = round((scope.end - scope.start) / timedelta(days=1))
    return [
        (scope.start + timedelta(days=i), scope.start + timedelta(days=i + 1)) for i in range(days)
    ]


def per_partition(
    frame: pl.DataFrame,
    scope: Scope,
    base: str,
    time_column: str,
    check: Callable[[pl.DataFrame, datetime, datetime], list[CheckOutcome]],
) -> list[CheckOutcome]:
    """Run `check(rows, day_start, day_end)` on each day of the window for one base currency.

    Each outcome's description starts with the partition key (`BTC|2024-01-05`) and its example
    rows carry a `partition` column, so a failure in a range run names the partition.
    """
    out = []
    for start, end in partition_days(scope):
        rows = frame.filter((pl.col(time_column) >= start) & (pl.col(time_column) < end))
        key = f"{base}|{start:%Y-%m-%d}"
        for o in check(rows, start, end):
            examples = (
                o.examples.with_columns(pl.lit(key).alias("partition"))
                if o.examples.height
                else o.examples
            )
            out.append(
                CheckOutcome(o.name, o.passed, f"{key}: {o.description}", o.failed_rows, examples)
            )
    return out


def _results(outcomes: list[CheckOutcome], name: str) -> Iterator[dg.AssetCheckResult]:
    for o in _merge(outcomes):
        metadata: dict[str, dg.RawMetadataValue] = {"failed_rows": o.failed_rows}
        if not o.passed:
            rows = [{k: str(v) for k, v in r.items()} for r in o.examples.to_dicts()]
            metadata["failing_rows"] = dg.MetadataValue.json(rows)
        yield dg.AssetCheckResult(
            asset_key=dg.AssetKey([SCHEMA, name]),
            check_name=o.name,
            passed=o.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=o.description,
            metadata=metadata,
        )


def _refusal(name: str, outcomes: list[CheckOutcome]) -> dg.Failure | None:
    # None when every invariant holds; otherwise the Failure that says what was not written and why.
    failed = [o for o in outcomes if not o.passed]
    if not failed:
        return None
    lines = [f"- {o.name}: {o.description}" for o in failed[:MAX_REPORTED]]
    if len(failed) > MAX_REPORTED:
        lines.append(f"- ... and {len(failed) - MAX_REPORTED} more failing partition checks")
    return dg.Failure(
        description=f"{SCHEMA}.{name}: {len(failed)} failing partition checks; nothing was "
        "written and the stored partitions are unchanged:\n" + "\n".join(lines),
        allow_retries=False,
    )


def _emit(
    name: str,
    outcomes: list[CheckOutcome],
    output: Callable[[], dg.Output],
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    # Validate before write: the Output (which the IO manager writes) only when every check passes.
    refusal = _refusal(name, outcomes)
    if refusal is None:
        yield output()
    yield from _results(outcomes, name)
    if refusal is not None:
        raise refusal


def _output(frame: pl.DataFrame, scope: Scope, client: ExchangeClient, market: Market) -> dg.Output:
    return dg.Output(
        frame,
        metadata={
            "rows": frame.height,
            "window": f"{scope.start.isoformat()} .. {scope.end.isoformat()}",
            "assets": ", ".join(scope.bases),
            "exchange": client.exchange_name(market),
        },
    )


def _ohlcv(
    context: AssetExecutionContext, exchange: ExchangeResource, market: Market
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    name = f"raw_{market}_ohlcv"
    scope = partition_scope(context)
    pairs = [Pair(b, exchange.quote) for b in scope.bases]
    client = _client(exchange, scope, [p.symbol(market) for p in pairs])
    bar = timeframe_delta(exchange.timeframe)
    fetched_at = utc_now()
    frames, outcomes = [], []
    for p in pairs:
        sym = p.symbol(market)
        f = _guard(
            partial(client.fetch_ohlcv, sym, market, exchange.timeframe, scope.start, scope.end)
        )
        frames.append(f)
        check = partial(_ohlcv_day, bar=bar, now=fetched_at)
        outcomes += per_partition(f, scope, p.base, "ts", check)
    frame = pl.concat(frames)
    yield from _emit(name, outcomes, partial(_output, frame, scope, client, market))


def _ohlcv_day(
    rows: pl.DataFrame, start: datetime, end: datetime, *, bar: timedelta, now: datetime
) -> list[CheckOutcome]:
    return check_ohlcv(rows, start=start, end=end, bar=bar, now=now)


@_raw_asset("raw_spot_ohlcv", time_column="ts", checks=OHLCV_CHECKS)
def raw_spot_ohlcv(
    context: AssetExecutionContext, exchange: ExchangeResource
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Spot OHLCV bars (`OHLCV_SCHEMA`, `ts` = bar open) as fetched, closed bars only."""
    yield from _ohlcv(context, exchange, "spot")


@_raw_asset("raw_perp_ohlcv", time_column="ts", checks=OHLCV_CHECKS)
def raw_perp_ohlcv(
    context: AssetExecutionContext, exchange: ExchangeResource
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Linear-perpetual OHLCV bars (`OHLCV_SCHEMA`) as fetched, closed bars only."""
    yield from _ohlcv(context, exchange, "perp")


@_raw_asset("raw_funding_rates", time_column="funding_time", checks=FUNDING_CHECKS)
def raw_funding_rates(
    context: AssetExecutionContext, exchange: ExchangeResource
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Funding settlements (`FUNDING_SCHEMA`), times normalised to the second, never filled."""
    scope = partition_scope(context)
    perps = [Pair(b, exchange.quote).perp for b in scope.bases]
    client = _client(exchange, scope, perps)
    frames, outcomes = [], []
    fetched_at = utc_now()
    for base, sym in zip(scope.bases, perps, strict=True):
        f = _guard(partial(client.fetch_funding, sym, scope.start, scope.end))
        frames.append(f)

        def check(rows: pl.DataFrame, start: datetime, end: datetime, sym: str = sym) -> list:
            return check_funding(
                rows,
                max_abs_rate=exchange.max_abs_funding_rate,
                start=start,
                end=end,
                now=fetched_at,
                symbol=sym,
            )

        outcomes += per_partition(f, scope, base, "funding_time", check)
    output = partial(_output, pl.concat(frames), scope, client, "perp")
    yield from _emit("raw_funding_rates", outcomes, output)


@_raw_asset("raw_order_book", time_column="ts", checks=BOOK_CHECKS)
def raw_order_book(
    context: AssetExecutionContext, exchange: ExchangeResource
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Order-book snapshots reduced to top of book and +-10/+-50 bp depth, spot and perp legs.

    The simulated exchange serves a synthetic history; a live exchange only a snapshot of now, so
    ccxt partitions other than today's stay empty (there is no public book history to fetch).
    """
    scope = partition_scope(context)
    pairs = [Pair(b, exchange.quote) for b in scope.bases]
    client = _client(exchange, scope, [s for p in pairs for s in (p.spot, p.perp)])
    frames, outcomes = [], []
    for p in pairs:
        legs: tuple[Market, Market] = ("spot", "perp")
        for market in legs:
            fetch = partial(client.fetch_order_book, p.symbol(market), market)
            frames.append(_guard(partial(fetch, scope.start, scope.end)))
        outcomes += check_order_book(pl.concat(frames[-2:]))
    frame = pl.concat(frames)
    if frame.height == 0:
        context.log.warning(
            f"no order-book snapshots for {scope.start:%Y-%m-%d}: the exchange serves only "
            "live books"
        )
    yield from _emit("raw_order_book", outcomes, partial(_output, frame, scope, client, "perp"))
