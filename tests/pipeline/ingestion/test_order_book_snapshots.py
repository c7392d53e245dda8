"""Live order-book collection: snapshots from the loopback venue appended to raw_order_book,
idempotently, by a job the schedule runs every N minutes."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from dagster_duckdb import DuckDBResource

from carry_pipeline.defs.ingestion import assets, order_book_snapshots
from carry_pipeline.defs.ingestion.order_book_snapshots import (
    append_snapshots,
    collect_snapshots,
    order_book_snapshot_job,
    order_book_snapshot_schedule,
    snapshot_minutes,
)
from carry_pipeline.defs.ingestion.resources import ExchangeResource
from carry_pipeline.lib.duckdb_io import CarryDuckDBIOManager
from carry_pipeline.lib.exchanges import CcxtExchange, ExchangeClient
from carry_pipeline.lib.schemas import ORDER_BOOK_SCHEMA
from tests.pipeline.ingestion.binance_stub import BinanceStub
from tests.pipeline.ingestion.conftest import NOW, binance_markets


def _table(db: Path) -> pl.DataFrame:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.sql("select * from raw.raw_order_book order by market").pl()


def test_live_snapshots_appended_once(
    stub: BinanceStub, ccxt_client: CcxtExchange, tmp_path: Path
) -> None:
    frame = collect_snapshots(ccxt_client, ["BTC"], "USDT", NOW)
    assert frame.schema == pl.Schema(ORDER_BOOK_SCHEMA)
    assert frame.sort("market")["market"].to_list() == ["perp", "spot"]
    spot = frame.filter(pl.col("market") == "spot").row(0, named=True)
    assert spot["mid"] == pytest.approx((100.00 + 100.02) / 2) and spot["ts"] == NOW
    db = tmp_path / "carry.duckdb"
    with duckdb.connect(str(db)) as con:
        assert append_snapshots(con, frame) == 2
        assert append_snapshots(con, frame) == 0  # the same snapshots again: nothing new
        later = frame.with_columns(pl.col("ts") + timedelta(minutes=15))
        assert append_snapshots(con, later) == 2
    stored = _table(db)
    assert stored.height == 4
    assert sorted(stored["ts"].unique().to_list()) == [NOW, NOW + timedelta(minutes=15)]
    assert stored.filter(pl.col("market") == "spot")["mid"].to_list() == [spot["mid"]] * 2


def test_snapshot_job_appends_without_duplicates(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CARRY_ASSETS", "BTC")
    db = tmp_path / "carry.duckdb"
    resources = {
        "exchange": ExchangeResource(order_book_interval="5m"),
        "duckdb": DuckDBResource(database=str(db)),
    }
    first = order_book_snapshot_job.execute_in_process(resources=resources)
    second = order_book_snapshot_job.execute_in_process(resources=resources)
    assert first.success and second.success
    new = [r.output_for_node("snapshot_order_books") for r in (first, second)]
    stored = _table(db)
    # The simulated day so far, every 5 minutes, for two markets; the second run adds at most the
    # snapshot of a 5-minute mark passed in between.
    assert new[0] >= 2 and new[1] <= 2 and stored.height == sum(new)
    assert stored.select("ts", "exchange", "symbol", "market").is_unique().all()
    assert set(stored["symbol"]) == {"BTC/USDT", "BTC/USDT:USDT"}
    day = stored["ts"].min().replace(hour=0, minute=0, second=0, microsecond=0)
    first_run = stored.filter(pl.col("market") == "spot")["ts"].sort().to_list()[: new[0] // 2]
    assert first_run == [day + timedelta(minutes=5 * i) for i in range(new[0] // 2)]


def test_schedule_every_n_minutes() -> None:
    assert order_book_snapshot_schedule.cron_schedule == "*/15 * * * *"
    assert order_book_snapshot_schedule.job_name == "order_book_snapshot_job"
    assert snapshot_minutes("5") == 5 and snapshot_minutes("") == 15
    for bad in ("7", "0", "abc", "90"):
        with pytest.raises(ValueError, match="CARRY_BOOK_SNAPSHOT_MINUTES"):
            snapshot_minutes(bad)


class StubVenue(ExchangeResource):
    """ccxt (binance + binanceusdm) against the loopback stub at the clock `now`, markets
    injected."""

    now: str = NOW.isoformat()

    def client(self) -> ExchangeClient:
        """A CcxtExchange on the stub whose clock reads `now`."""
        clock = datetime.fromisoformat(self.now)
        client = CcxtExchange(
            api_url=self.api_url, timeout_ms=300, max_retries=0, clock=lambda: clock
        )
        binance_markets(client)
        return client


def _collect(stub: BinanceStub, db: Path, now: datetime, monkeypatch: pytest.MonkeyPatch) -> None:
    # The job's "now" (the day it collects) and the venue's clock agree.
    monkeypatch.setattr(order_book_snapshots, "utc_now", lambda: now)
    resources = {
        "exchange": StubVenue(api_url=stub.url, now=now.isoformat()),
        "duckdb": DuckDBResource(database=str(db)),
    }
    assert order_book_snapshot_job.execute_in_process(resources=resources).success


def _book_run(stub: BinanceStub, db: Path, now: datetime, first: str, last: str) -> dict:
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [assets.raw_order_book],
            resources={
                "io_manager": CarryDuckDBIOManager(database=str(db)),
                "exchange": StubVenue(api_url=stub.url, now=now.isoformat()),
            },
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": f"BTC|{first}",
                "dagster/asset_partition_range_end": f"BTC|{last}",
            },
        )
        assert result.success
        done = instance.get_materialized_partitions(dg.AssetKey(["raw", "raw_order_book"]))
    (event,) = result.get_asset_materialization_events()[:1]
    return {"done": done, "metadata": event.materialization.metadata}


def test_rerunning_a_past_book_partition_keeps_the_live_snapshots(
    stub: BinanceStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Snapshots collected live on 2024-01-10; the next day the partitioned asset re-runs that day
    # (alone, then in a range): ccxt has no book history, fetches 0 rows, and must not wipe them.
    monkeypatch.setenv("CARRY_ASSETS", "BTC")
    db = tmp_path / "carry.duckdb"
    for minutes in (0, 15, 360):
        _collect(stub, db, NOW + timedelta(minutes=minutes), monkeypatch)
    stored = _table(db).sort(pl.all())
    # Spot books carry no venue time (stamped now): 3 rows; the perp book's venue time T is fixed.
    assert stored.height == 4 and stored["ts"].min() == NOW
    for first, last in (("2024-01-10", "2024-01-10"), ("2024-01-09", "2024-01-10")):
        run = _book_run(stub, db, NOW + timedelta(days=1), first, last)
        after = _table(db).sort(pl.all())
        assert after.equals(stored), first  # every row and value as collected
        kept = run["metadata"]["kept_partitions"].value
        assert kept == [f"BTC|{d}" for d in ("2024-01-09", "2024-01-10")[-len(kept) :]]
        assert "no order-book history" in run["metadata"]["kept_reason"].value
        assert "BTC|2024-01-10" in run["done"]
