"""Live order-book collection: snapshots from the loopback venue appended to raw_order_book,
idempotently, by a job the schedule runs every N minutes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
from dagster_duckdb import DuckDBResource

from carry_pipeline.defs.ingestion.order_book_snapshots import (
    append_snapshots,
    collect_snapshots,
    order_book_snapshot_job,
    order_book_snapshot_schedule,
    snapshot_minutes,
)
from carry_pipeline.defs.ingestion.resources import ExchangeResource
from carry_pipeline.lib.exchanges import CcxtExchange
from carry_pipeline.lib.schemas import ORDER_BOOK_SCHEMA
from tests.pipeline.ingestion.binance_stub import BinanceStub
from tests.pipeline.ingestion.conftest import NOW


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
