"""The raw assets materialised with Dagster into a tmp_path DuckDB: partitions, idempotent reruns,
SQL on the result, blocking checks that stop downstream assets, permanent errors that fail fast."""

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from dagster_duckdb import DuckDBResource

from carry_pipeline.defs.ingestion import assets, checks
from carry_pipeline.defs.ingestion.resources import ExchangeResource
from carry_pipeline.lib.duckdb_io import CarryDuckDBIOManager, read_table
from carry_pipeline.lib.validation import CheckOutcome

RAW = [
    assets.raw_spot_ohlcv,
    assets.raw_perp_ohlcv,
    assets.raw_funding_rates,
    assets.raw_order_book,
]
SUITES = [
    checks.raw_spot_ohlcv_suite,
    checks.raw_perp_ohlcv_suite,
    checks.raw_funding_rates_suite,
    checks.raw_order_book_suite,
]


def _key(base: str, day: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"asset": base, "date": day})


def _resources(db: Path, exchange: ExchangeResource) -> dict:
    return {
        "io_manager": CarryDuckDBIOManager(database=str(db)),
        "duckdb": DuckDBResource(database=str(db)),
        "exchange": exchange,
    }


@pytest.mark.slow
def test_two_partitions_a_rerun_and_a_query(tmp_path: Path) -> None:
    db = tmp_path / "carry.duckdb"
    res = _resources(db, ExchangeResource(seed=1))
    counts = []
    for key in (_key("BTC", "2024-01-01"), _key("ETH", "2024-01-01"), _key("BTC", "2024-01-01")):
        result = dg.materialize(RAW + SUITES, resources=res, partition_key=key)
        assert result.success
        evaluations = result.get_asset_check_evaluations()
        assert len(evaluations) == 4 + 4 + 4 + 2 + 4  # in-asset invariants + 4 GX suites
        assert all(e.passed for e in evaluations)
        with duckdb.connect(str(db), read_only=True) as con:
            counts.append(
                {
                    t: con.sql(f"select count(*) from raw.{t}").fetchall()[0][0]
                    for t in (
                        "raw_spot_ohlcv",
                        "raw_perp_ohlcv",
                        "raw_funding_rates",
                        "raw_order_book",
                    )
                }
            )
    # 96 15-minute bars, 3 settlements and 24 hourly snapshots x 2 legs per day x asset.
    one = {"raw_spot_ohlcv": 96, "raw_perp_ohlcv": 96, "raw_funding_rates": 3, "raw_order_book": 48}
    assert counts[0] == one
    assert counts[1] == {k: 2 * v for k, v in one.items()}
    assert counts[2] == counts[1]  # the rerun replaced BTC's partition: no duplicates
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.sql(
            "select symbol, count(*) as n, min(ts) as first, max(ts) as last "
            "from raw.raw_perp_ohlcv group by symbol order by symbol"
        ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [("BTC/USDT:USDT", 96), ("ETH/USDT:USDT", 96)]
    assert rows[0][3] - rows[0][2] == timedelta(hours=23, minutes=45)
    spot = read_table(db, "raw.raw_spot_ohlcv")
    assert spot.schema["ts"] == pl.Datetime("us", "UTC")
    assert spot.filter(pl.col("symbol") == "BTC/USDT").select(pl.col("ts").is_unique().all()).item()


def _replay_folder(tmp_path: Path, bad_row: int | None) -> Path:
    folder = tmp_path / "replay"
    folder.mkdir()
    ts = [datetime(2024, 1, 1, h, tzinfo=UTC) for h in range(24)]
    low = [9.0] * 24
    if bad_row is not None:
        low[bad_row] = 10.8  # above open and close: low <= open, close <= high is broken
    pl.DataFrame(
        {
            "ts": ts,
            "symbol": ["BTC/USDT"] * 24,
            "open": [10.0] * 24,
            "high": [11.0] * 24,
            "low": low,
            "close": [10.5] * 24,
            "volume": [1.0] * 24,
        }
    ).write_parquet(folder / "spot_ohlcv.parquet")
    return folder


def test_failed_blocking_check_stops_downstream_and_names_the_rows(tmp_path: Path) -> None:
    calls = []

    @dg.asset(
        key_prefix="features",
        partitions_def=assets.ingest_partitions,
        deps=[assets.raw_spot_ohlcv],
    )
    def downstream() -> None:
        calls.append(1)

    folder = _replay_folder(tmp_path, bad_row=5)
    exchange = ExchangeResource(kind="replay", replay_path=str(folder), timeframe="1h")
    result = dg.materialize(
        [assets.raw_spot_ohlcv, downstream],
        resources=_resources(tmp_path / "c.duckdb", exchange),
        partition_key=_key("BTC", "2024-01-01"),
        raise_on_error=False,
    )
    assert not result.success
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert [e.check_name for e in failed] == ["low_open_close_high_ordered"]
    rows = failed[0].metadata["failing_rows"].value
    assert [r["ts"] for r in rows] == ["2024-01-01 05:00:00+00:00"] and rows[0]["low"] == "10.8"
    assert failed[0].metadata["failed_rows"].value == 1
    assert calls == []  # the blocking check stopped the downstream asset


def test_clean_replay_partition_passes(tmp_path: Path) -> None:
    folder = _replay_folder(tmp_path, bad_row=None)
    exchange = ExchangeResource(kind="replay", replay_path=str(folder), timeframe="1h")
    result = dg.materialize(
        [assets.raw_spot_ohlcv],
        resources=_resources(tmp_path / "c.duckdb", exchange),
        partition_key=_key("BTC", "2024-01-01"),
    )
    assert result.success
    assert read_table(tmp_path / "c.duckdb", "raw.raw_spot_ohlcv").height == 24


def test_permanent_error_fails_once_without_retries(tmp_path: Path) -> None:
    # The simulator prices in USDT only: BTC/EUR is a permanent error, not worth the RetryPolicy.
    exchange = ExchangeResource(quote="EUR")
    t0 = time.perf_counter()
    result = dg.materialize(
        [assets.raw_funding_rates],
        resources=_resources(tmp_path / "c.duckdb", exchange),
        partition_key=_key("BTC", "2024-01-01"),
        raise_on_error=False,
    )
    assert not result.success
    failures = result.get_step_failure_events()
    assert len(failures) == 1
    assert "BTC/EUR:EUR" in failures[0].step_failure_data.error.message
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert time.perf_counter() - t0 < 10  # RetryPolicy's 10 s delay never ran


_DAYS = ("BTC|2024-01-01", "BTC|2024-01-02", "BTC|2024-01-03")


@pytest.mark.parametrize(
    ("failing", "keep_empty", "written", "kept", "refused"),
    [
        # Rows on days 1 and 3; day 3 fails: day 2 (no rows) kept only when empty days may be.
        ("BTC|2024-01-03", True, _DAYS[:1], _DAYS[1:2], _DAYS[2:]),
        ("BTC|2024-01-03", False, _DAYS[:2], (), _DAYS[2:]),
        # Nothing fails: every day written (day 2 emptied) unless empty days are kept.
        (None, False, _DAYS, (), ()),
        (None, True, _DAYS[::2], _DAYS[1:2], ()),
        # A failure that names no partition (a whole-window check) refuses every day.
        ("", False, (), (), _DAYS),
    ],
)
def test_plan_writes_sorts_the_window(
    failing: str | None,
    keep_empty: bool,
    written: tuple[str, ...],
    kept: tuple[str, ...],
    refused: tuple[str, ...],
) -> None:
    scope = assets.Scope(
        datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 4, tzinfo=UTC), ["BTC"]
    )
    frame = pl.DataFrame(
        {
            "ts": [datetime(2024, 1, d, 5, tzinfo=UTC) for d in (1, 3)],
            "symbol": ["BTC/USDT:USDT", "BTC/USDT"],
        }
    )
    outcomes = [CheckOutcome("a", True, "ok", partition=k) for k in _DAYS]
    if failing is not None:
        outcomes.append(CheckOutcome("b", False, "broken", 1, partition=failing or None))
    plan = assets.plan_writes(frame, scope, "ts", outcomes, keep_empty=keep_empty)
    assert plan == assets.WritePlan(list(written), list(kept), list(refused))
