"""Range runs and validate-before-write: one run ingests a partition range, and a fetch with a gap
(an empty page mid-range) never writes, on a new or on an already-good partition."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl

from carry_pipeline.defs.ingestion import assets
from carry_pipeline.defs.ingestion.resources import ExchangeResource
from carry_pipeline.lib.duckdb_io import CarryDuckDBIOManager
from carry_pipeline.lib.exchanges import ExchangeClient, SimulatedExchange
from carry_pipeline.lib.exchanges.base import Market

WRITTEN = [assets.raw_spot_ohlcv, assets.raw_perp_ohlcv, assets.raw_funding_rates]
TABLES = ["raw_spot_ohlcv", "raw_perp_ohlcv", "raw_funding_rates"]
GAP = (datetime(2024, 1, 2, 6, tzinfo=UTC), datetime(2024, 1, 2, 10, tzinfo=UTC))
"""The hole the faulty venue leaves: 16 15-minute bars and the 08:00 settlement of 2024-01-02."""
CLOCK = datetime(2024, 2, 1, tzinfo=UTC)


class GappedExchange:
    """The simulated exchange, except that every fetch comes back without the rows inside GAP
    (what an empty page in the middle of a paged range leaves behind)."""

    def __init__(self, inner: SimulatedExchange) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def fetch_ohlcv(
        self, symbol: str, market: Market, timeframe: str, start: datetime, end: datetime
    ) -> pl.DataFrame:
        """Bars outside GAP."""
        return _holed(self.inner.fetch_ohlcv(symbol, market, timeframe, start, end), "ts")

    def fetch_funding(self, symbol: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Settlements outside GAP."""
        return _holed(self.inner.fetch_funding(symbol, start, end), "funding_time")


def _holed(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    return frame.filter((pl.col(column) < GAP[0]) | (pl.col(column) >= GAP[1]))


class FixedClockExchange(ExchangeResource):
    """The simulated exchange at a fixed "now", optionally with the GAP fault."""

    gapped: bool = False

    def client(self) -> ExchangeClient:
        """A SimulatedExchange (wrapped in GappedExchange when `gapped`)."""
        inner = SimulatedExchange(seed=self.seed, clock=lambda: CLOCK)
        return GappedExchange(inner) if self.gapped else inner  # type: ignore[return-value]


def _run(db: Path, instance: dg.DagsterInstance, gapped: bool) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        WRITTEN,
        resources={
            "io_manager": CarryDuckDBIOManager(database=str(db)),
            "exchange": FixedClockExchange(gapped=gapped),
        },
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": "BTC|2024-01-01",
            "dagster/asset_partition_range_end": "BTC|2024-01-03",
        },
        raise_on_error=False,
    )


def _stored(db: Path) -> dict[str, pl.DataFrame]:
    with duckdb.connect(str(db), read_only=True) as con:
        names = {r[0] for r in con.sql("select table_name from duckdb_tables()").fetchall()}
        return {t: con.sql(f"select * from raw.{t} order by all").pl() for t in sorted(names)}


def _refusals(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {
        str(e.step_key): e.step_failure_data.error.message  # type: ignore[union-attr]
        for e in result.get_step_failure_events()
    }


def test_one_run_writes_a_range_and_records_every_partition(tmp_path: Path) -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        assert _run(tmp_path / "c.duckdb", instance, gapped=False).success
        assert len(instance.get_runs()) == 1
        done = instance.get_materialized_partitions(dg.AssetKey(["raw", "raw_spot_ohlcv"]))
    assert done == {"BTC|2024-01-01", "BTC|2024-01-02", "BTC|2024-01-03"}
    stored = _stored(tmp_path / "c.duckdb")
    # 3 days x 96 bars and 3 days x 3 settlements, each once.
    assert {t: f.height for t, f in stored.items()} == {
        "raw_funding_rates": 9,
        "raw_perp_ohlcv": 288,
        "raw_spot_ohlcv": 288,
    }
    assert stored["raw_spot_ohlcv"]["ts"].is_unique().all()


def test_a_gap_in_a_new_range_writes_nothing_and_names_the_partition(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run(db, instance, gapped=True)
        assert not result.success
        for t in TABLES:
            assert instance.get_materialized_partitions(dg.AssetKey(["raw", t])) == set()
    messages = _refusals(result)
    assert set(messages) == {f"raw__{t}" for t in TABLES}
    spot = messages["raw__raw_spot_ohlcv"]
    assert "raw.raw_spot_ohlcv" in spot and "nothing was written" in spot
    assert "BTC|2024-01-02: expected 96 bars" in spot
    assert "16 missing (2024-01-02 06:00 .. 2024-01-02 09:45 UTC)" in spot
    assert "BTC|2024-01-01" not in spot and "BTC|2024-01-03" not in spot
    assert "BTC|2024-01-02: BTC/USDT:USDT: 2 settlements" in messages["raw__raw_funding_rates"]
    assert not db.exists() or _stored(db) == {}


def test_a_gap_on_a_good_range_leaves_the_stored_rows_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    with dg.DagsterInstance.ephemeral() as instance:
        assert _run(db, instance, gapped=False).success
        good = _stored(db)
        for attempt in range(2):  # a persistent fault: every re-run fails the same way
            result = _run(db, instance, gapped=True)
            assert not result.success, attempt
            assert set(_refusals(result)) == {f"raw__{t}" for t in TABLES}
            after = _stored(db)
            assert after.keys() == good.keys()
            for t, frame in good.items():
                assert after[t].equals(frame), t  # nothing lost, duplicated or changed
        assert _run(db, instance, gapped=False).success  # the venue recovered: same rows again
    assert {t: f.height for t, f in _stored(db).items()} == {t: f.height for t, f in good.items()}


def test_the_table_wide_suite_fails_on_a_bad_row_outside_the_partition(tmp_path: Path) -> None:
    from dagster_duckdb import DuckDBResource

    from carry_pipeline.defs.ingestion import checks

    db = tmp_path / "c.duckdb"
    res = {
        "io_manager": CarryDuckDBIOManager(database=str(db)),
        "duckdb": DuckDBResource(database=str(db)),
        "exchange": FixedClockExchange(),
    }
    key = dg.MultiPartitionKey({"asset": "BTC", "date": "2024-01-01"})
    run = [assets.raw_funding_rates, checks.raw_funding_rates_suite]
    assert dg.materialize(run, resources=res, partition_key=key).success
    with duckdb.connect(str(db)) as con:  # a rate of 20 % on 2024-01-05, another partition
        con.execute(
            "insert into raw.raw_funding_rates select * replace (funding_time + interval 4 day "
            "as funding_time, 0.2 as funding_rate) from raw.raw_funding_rates limit 1"
        )
    result = dg.materialize(run, resources=res, partition_key=key, raise_on_error=False)
    assert not result.success
    suite = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "matches_expectation_suite"
    ]
    assert len(suite) == 1 and not suite[0].passed
    failures = suite[0].metadata["failures"].value
    assert [(f["expectation"], f["unexpected_count"]) for f in failures] == [
        ("expect_column_values_to_be_between", 1)
    ]
