"""Raw market-data assets (DuckDB schema `raw`): spot and perp OHLCV, funding rates, order books.

Each asset is partitioned by UTC day x asset (`partitions.py`) and handles a partition range: a
backfill is one run per asset (`BackfillPolicy.single_run()`; Dagster splits multi-partition ranges
by the static dimension), which fetches the whole window per symbol once and writes every day of it.
The daily schedule still runs one day x asset partition per run.

Validation comes before the write, and a partition is written only when its own checks pass: every
day x symbol of the window runs the blocking invariants (`lib/validation.py`) first, then
`plan_writes` sorts the window's partitions into
- written: every check passes (and there are rows);
- kept: no rows were fetched and nothing is wrong, which only `raw_order_book` allows (a live
  venue keeps no book history, so a past day's snapshots come from `order_book_snapshot_job`):
  the stored rows stay exactly as they are and the metadata (`kept_partitions`, `kept_reason`)
  and a warning say why;
- refused: a check fails: the stored rows stay exactly as they are, the run fails naming each such
  partition and why, and the failing checks' metadata lists them (`failing_partitions`).
With nothing refused, the frame goes to the IO manager as the range's one `Output` (it replaces
every written partition in one transaction and leaves the kept ones). With a refusal, one Output
would mark every partition of the range materialised, the refused ones included, and the IO
manager would delete the whole range; so the asset writes the passing partitions itself through
the IO manager's `replace_partitions` (one transaction), records an `AssetMaterialization` for
each of them, and fails: the good days are stored and shown materialised, the bad ones are shown
failed and are retried by the next run (`make run` re-ingests unmaterialised days).
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
from carry_pipeline.lib.duckdb_io import KEPT_PARTITIONS
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
KEPT_REASON = (
    "the exchange serves no order-book history (only a live snapshot of now): the snapshots "
    "order_book_snapshot_job collected for these partitions are kept as stored"
)
RAW_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(hours=49), warn_window=timedelta(hours=25)
)
"""`ingest_schedule` lands a partition every day at 00:30 UTC: a raw table last written more
than 25 h ago missed a tick (WARN in the UI), more than 49 h ago two (FAIL)."""
MAX_REPORTED = 20
"""At most this many failing partition checks are listed in a refusal's error message."""

IOManagerParam = dg.ResourceParam[Any]
"""The `io_manager` resource, passed in to write the passing partitions of a range that holds a
refused one (`CarryDbIOManager.replace_partitions`)."""

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


def partition_expr(time_column: str) -> dict[str, str]:
    """The `partition_expr` of a raw table: its event-time column and the base of `symbol`."""
    return {"date": time_column, "asset": _ASSET_EXPR}


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
        metadata={"partition_expr": partition_expr(time_column)},
        check_specs=_specs(name, checks),
        pool=POOL,
        retry_policy=RETRY,
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"duckdb", "polars"},
        freshness_policy=RAW_FRESHNESS,
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
                CheckOutcome(
                    o.name, o.passed, f"{key}: {o.description}", o.failed_rows, examples, key
                )
            )
    return out


def partition_keys(scope: Scope) -> list[str]:
    """The multi-partition keys (`BTC|2024-01-05`) of the scope, by asset then day."""
    return [f"{b}|{start:%Y-%m-%d}" for b in scope.bases for start, _ in partition_days(scope)]


def partition_key_of(time_column: str) -> pl.Expr:
    """Each row's partition key: the base of `symbol`, `|`, the UTC day of `time_column`."""
    base = pl.col("symbol").str.split("/").list.first()
    return pl.concat_str([base, pl.lit("|"), pl.col(time_column).dt.strftime("%Y-%m-%d")])


@dataclass(frozen=True)
class WritePlan:
    """What a materialisation does with each partition of its window (see the module docstring).

    Attributes:
        written: keys whose rows replace the stored ones.
        kept: keys with no rows fetched and no failing check, left as stored.
        refused: keys with a failing check, left as stored.
    """

    written: list[str]
    kept: list[str]
    refused: list[str]


def plan_writes(
    frame: pl.DataFrame,
    scope: Scope,
    time_column: str,
    outcomes: list[CheckOutcome],
    *,
    keep_empty: bool,
) -> WritePlan:
    """Sort the scope's partitions into written, kept (empty, when `keep_empty`) and refused.

    A failing outcome that names no partition (a check of the whole window) refuses them all.
    """
    keys = partition_keys(scope)
    refused = {o.partition for o in outcomes if not o.passed}
    if None in refused:
        refused = set(keys)
    present = set(frame.select(partition_key_of(time_column)).to_series().to_list())
    kept = [k for k in keys if keep_empty and k not in refused and k not in present]
    written = [k for k in keys if k not in refused and k not in kept]
    return WritePlan(written, kept, [k for k in keys if k in refused])


def _results(outcomes: list[CheckOutcome], name: str) -> Iterator[dg.AssetCheckResult]:
    failing: dict[str, list[str]] = {}
    for o in outcomes:
        if not o.passed and o.partition is not None:
            failing.setdefault(o.name, []).append(o.partition)
    for o in _merge(outcomes):
        metadata: dict[str, dg.RawMetadataValue] = {"failed_rows": o.failed_rows}
        if not o.passed:
            rows = [{k: str(v) for k, v in r.items()} for r in o.examples.to_dicts()]
            metadata["failing_rows"] = dg.MetadataValue.json(rows)
            metadata["failing_partitions"] = dg.MetadataValue.json(failing.get(o.name, []))
        yield dg.AssetCheckResult(
            asset_key=dg.AssetKey([SCHEMA, name]),
            check_name=o.name,
            passed=o.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=o.description,
            metadata=metadata,
        )


def _refusal(name: str, outcomes: list[CheckOutcome], plan: WritePlan) -> dg.Failure:
    # The Failure that names the refused partitions, why, and what was written instead.
    failed = [o for o in outcomes if not o.passed]
    lines = [f"- {o.name}: {o.description}" for o in failed[:MAX_REPORTED]]
    if len(failed) > MAX_REPORTED:
        lines.append(f"- ... and {len(failed) - MAX_REPORTED} more failing partition checks")
    refused = ", ".join(plan.refused[:MAX_REPORTED]) + (
        f" and {len(plan.refused) - MAX_REPORTED} more" if len(plan.refused) > MAX_REPORTED else ""
    )
    written = (
        f"the {len(plan.written)} partitions that passed were written"
        if plan.written
        else "nothing was written"
    )
    return dg.Failure(
        description=f"{SCHEMA}.{name}: {len(plan.refused)} partitions failed their checks "
        f"({refused}); their stored rows are unchanged and {written}:\n" + "\n".join(lines),
        allow_retries=False,
    )


def _write_passing(
    context: AssetExecutionContext,
    io_manager: object,
    frame: pl.DataFrame,
    time_column: str,
    plan: WritePlan,
) -> WritePlan:
    # Write the plan's written partitions through the IO manager and record their
    # materialisations; returns the plan as carried out (nothing written when the IO manager
    # cannot write chosen partitions).
    if not plan.written:
        return plan
    if not hasattr(io_manager, "replace_partitions"):
        context.log.warning(
            f"{type(io_manager).__name__} cannot write chosen partitions: nothing was written"
        )
        return WritePlan([], plan.kept, plan.refused)
    keyed = frame.with_columns(partition_key_of(time_column).alias("__partition"))
    rows = keyed.filter(pl.col("__partition").is_in(plan.written))
    counts = dict(rows.group_by("__partition").len().iter_rows())
    io_manager.replace_partitions(
        context.asset_key,
        ingest_partitions,
        partition_expr(time_column),
        rows.drop("__partition"),
        plan.written,
    )
    for key in plan.written:
        context.log_event(
            dg.AssetMaterialization(
                asset_key=context.asset_key,
                partition=key,
                metadata={"rows": counts.get(key, 0), "written_alone": True},
            )
        )
    return plan


def _emit(
    context: AssetExecutionContext,
    io_manager: object,
    name: str,
    outcomes: list[CheckOutcome],
    frame: pl.DataFrame,
    time_column: str,
    output: Callable[[WritePlan], dg.Output],
    *,
    keep_empty: bool = False,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    # Validate before write, per partition: see the module docstring.
    plan = plan_writes(
        frame, partition_scope(context), time_column, outcomes, keep_empty=keep_empty
    )
    if plan.kept:
        context.log.warning(f"{SCHEMA}.{name}: {', '.join(plan.kept)}: {KEPT_REASON}")
    if not plan.refused:
        yield output(plan)
        yield from _results(outcomes, name)
        return
    done = _write_passing(context, io_manager, frame, time_column, plan)
    yield from _results(outcomes, name)
    raise _refusal(name, outcomes, done)


def _output(
    frame: pl.DataFrame, scope: Scope, client: ExchangeClient, market: Market, plan: WritePlan
) -> dg.Output:
    metadata: dict[str, dg.RawMetadataValue] = {
        "rows": frame.height,
        "window": f"{scope.start.isoformat()} .. {scope.end.isoformat()}",
        "assets": ", ".join(scope.bases),
        "exchange": client.exchange_name(market),
    }
    if plan.kept:  # read by the IO manager: these partitions' stored rows are not touched
        metadata[KEPT_PARTITIONS] = dg.MetadataValue.json(plan.kept)
        metadata["kept_reason"] = KEPT_REASON
    return dg.Output(frame, metadata=metadata)


def _ohlcv(
    context: AssetExecutionContext, exchange: ExchangeResource, io_manager: object, market: Market
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
    output = partial(_output, frame, scope, client, market)
    yield from _emit(context, io_manager, name, outcomes, frame, "ts", output)


def _ohlcv_day(
    rows: pl.DataFrame, start: datetime, end: datetime, *, bar: timedelta, now: datetime
) -> list[CheckOutcome]:
    return check_ohlcv(rows, start=start, end=end, bar=bar, now=now)


@_raw_asset("raw_spot_ohlcv", time_column="ts", checks=OHLCV_CHECKS)
def raw_spot_ohlcv(
    context: AssetExecutionContext, exchange: ExchangeResource, io_manager: IOManagerParam
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Spot OHLCV bars (`OHLCV_SCHEMA`, `ts` = bar open) as fetched, closed bars only."""
    yield from _ohlcv(context, exchange, io_manager, "spot")


@_raw_asset("raw_perp_ohlcv", time_column="ts", checks=OHLCV_CHECKS)
def raw_perp_ohlcv(
    context: AssetExecutionContext, exchange: ExchangeResource, io_manager: IOManagerParam
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Linear-perpetual OHLCV bars (`OHLCV_SCHEMA`) as fetched, closed bars only."""
    yield from _ohlcv(context, exchange, io_manager, "perp")


@_raw_asset("raw_funding_rates", time_column="funding_time", checks=FUNDING_CHECKS)
def raw_funding_rates(
    context: AssetExecutionContext, exchange: ExchangeResource, io_manager: IOManagerParam
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
    frame = pl.concat(frames)
    output = partial(_output, frame, scope, client, "perp")
    yield from _emit(
        context, io_manager, "raw_funding_rates", outcomes, frame, "funding_time", output
    )


@_raw_asset("raw_order_book", time_column="ts", checks=BOOK_CHECKS)
def raw_order_book(
    context: AssetExecutionContext, exchange: ExchangeResource, io_manager: IOManagerParam
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Order-book snapshots reduced to top of book and +-10/+-50 bp depth, spot and perp legs.

    The simulated exchange serves a synthetic history; a live exchange only a snapshot of now, so
    a ccxt fetch of a past day has no rows: that day's partition is kept as stored (the snapshots
    `order_book_snapshot_job` collected live), never emptied.
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
        outcomes += per_partition(pl.concat(frames[-2:]), scope, p.base, "ts", _book_day)
    frame = pl.concat(frames)
    output = partial(_output, frame, scope, client, "perp")
    yield from _emit(
        context, io_manager, "raw_order_book", outcomes, frame, "ts", output, keep_empty=True
    )


def _book_day(rows: pl.DataFrame, start: datetime, end: datetime) -> list[CheckOutcome]:
    return check_order_book(rows)
