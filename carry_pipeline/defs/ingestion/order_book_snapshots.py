"""Live order-book collection: venues keep no book history, so books are collected as they happen.

`order_book_snapshot_job` takes one snapshot of the spot and perp book of every configured asset
(`CARRY_ASSETS`) from the `exchange` resource and appends it to `raw.raw_order_book`, the table the
partitioned `raw_order_book` asset writes, so that after a day of collection the features read real
depth instead of the proxy. Appends are idempotent: a row already stored for the same
`(ts, exchange, symbol, market)` is not inserted again. `order_book_snapshot_schedule` runs the job
every `CARRY_BOOK_SNAPSHOT_MINUTES` minutes (default 15, the default bar interval; it must divide
60), stopped until turned on in the UI. Offline, the simulated exchange serves its synthetic
snapshots of the day so far the same way (each stored once).
"""

import os
from datetime import datetime, timedelta

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource
from duckdb import DuckDBPyConnection

from carry_pipeline.defs.ingestion.partitions import configured_assets
from carry_pipeline.defs.ingestion.resources import ExchangeResource
from carry_pipeline.lib.exchanges import ExchangeClient
from carry_pipeline.lib.exchanges.base import utc_now
from carry_pipeline.lib.schemas import ORDER_BOOK_SCHEMA, empty_frame

TABLE = "raw.raw_order_book"
_KEY = ("ts", "exchange", "symbol", "market")
DEFAULT_SNAPSHOT_MINUTES = 15


def snapshot_minutes(raw: str | None = None) -> int:
    """Minutes between snapshots from `CARRY_BOOK_SNAPSHOT_MINUTES` (or `raw`).

    Raises:
        ValueError: not a whole number of minutes that divides 60.
    """
    text = os.environ.get("CARRY_BOOK_SNAPSHOT_MINUTES", "") if raw is None else raw
    text = text.strip() or str(DEFAULT_SNAPSHOT_MINUTES)
    if not text.isdigit() or int(text) == 0 or 60 % int(text):
        raise ValueError(
            f"CARRY_BOOK_SNAPSHOT_MINUTES={text!r} must be whole minutes dividing 60 (1, 5, 15, 30)"
        )
    return int(text)


def collect_snapshots(
    client: ExchangeClient, bases: list[str], quote: str, now: datetime
) -> pl.DataFrame:
    """The spot and perp books of `bases` as of now, in `ORDER_BOOK_SCHEMA`."""
    # The current UTC day: a live venue answers one snapshot taken now, the simulated one its
    # snapshots of the day up to now (whole grid points; those already stored are not re-added).
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    end = start + timedelta(days=1)
    frames = [client.fetch_order_book(f"{base}/{quote}", "spot", start, end) for base in bases] + [
        client.fetch_order_book(f"{base}/{quote}:{quote}", "perp", start, end) for base in bases
    ]
    frames = [f for f in frames if f.height]
    return pl.concat(frames) if frames else empty_frame(ORDER_BOOK_SCHEMA)


def append_snapshots(con: DuckDBPyConnection, frame: pl.DataFrame) -> int:
    """Insert the rows of `frame` not yet in `raw.raw_order_book` (creating it); rows inserted."""
    arrow = frame.to_arrow()
    con.register("__carry_books", arrow)
    try:
        con.execute("create schema if not exists raw").fetchall()
        con.execute(
            f"create table if not exists {TABLE} as select * from __carry_books limit 0"
        ).fetchall()
        before = con.execute(f"select count(*) from {TABLE}").fetchall()[0][0]
        on = " and ".join(f"t.{c} = n.{c}" for c in _KEY)
        con.execute(
            f"insert into {TABLE} by name select n.* from __carry_books n "
            f"where not exists (select 1 from {TABLE} t where {on})"
        ).fetchall()
        after = con.execute(f"select count(*) from {TABLE}").fetchall()[0][0]
    finally:
        con.unregister("__carry_books")
    return int(after - before)


@dg.op(pool="exchange_api")
def snapshot_order_books(
    context: dg.OpExecutionContext, exchange: ExchangeResource, duckdb: DuckDBResource
) -> int:
    """Snapshot every configured asset's spot and perp book and append it to raw_order_book."""
    client = exchange.client()
    frame = collect_snapshots(client, configured_assets(), exchange.quote, utc_now())
    with duckdb.get_connection() as con:
        inserted = append_snapshots(con, frame)
    context.add_output_metadata({"snapshots": frame.height, "inserted": inserted})
    context.log.info(f"order books: {frame.height} snapshots, {inserted} new rows in {TABLE}")
    return inserted


@dg.job(
    description="Append one live order-book snapshot per asset and market to raw.raw_order_book."
)
def order_book_snapshot_job() -> None:
    """The snapshot op alone (no partitions: books exist only now)."""
    snapshot_order_books()


order_book_snapshot_schedule = dg.ScheduleDefinition(
    name="order_book_snapshot_schedule",
    job=order_book_snapshot_job,
    cron_schedule=f"*/{snapshot_minutes()} * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every CARRY_BOOK_SNAPSHOT_MINUTES minutes: one order-book snapshot per asset.",
)
