"""Range runs and validate-before-write: one run ingests a partition range, and a fetch with a gap
(an empty page mid-range) never writes the partition it hits, on a new or on an already-good
partition, while the range's good days are stored and shown materialised."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl

from carry_pipeline.defs.ingestion import assets
from carry_pipeline.defs.ingestion.resources import ExchangeResource
from carry_pipeline.lib.duckdb_io import CarryDuckDBIOManager, utc_frame
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


def _run(
    db: Path, instance: dg.DagsterInstance, gapped: bool, seed: int = 0
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        WRITTEN,
        resources={
            "io_manager": CarryDuckDBIOManager(database=str(db)),
            "exchange": FixedClockExchange(gapped=gapped, seed=seed),
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
        return {
            t: _sorted(utc_frame(con.sql(f"select * from raw.{t}").pl())) for t in sorted(names)
        }


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(pl.all(), nulls_last=True)


def _truth(seed: int, days: tuple[int, ...]) -> dict[str, pl.DataFrame]:
    # Ground truth: what the clean venue serves for the range 2024-01-01 .. 03, on `days` only.
    venue = SimulatedExchange(seed=seed, clock=lambda: CLOCK)
    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 4, tzinfo=UTC)
    served = {
        "raw_spot_ohlcv": ("ts", venue.fetch_ohlcv("BTC/USDT", "spot", "15m", start, end)),
        "raw_perp_ohlcv": ("ts", venue.fetch_ohlcv("BTC/USDT:USDT", "perp", "15m", start, end)),
        "raw_funding_rates": ("funding_time", venue.fetch_funding("BTC/USDT:USDT", start, end)),
    }
    return {
        t: _sorted(f.filter(pl.col(col).dt.day().is_in(days))) for t, (col, f) in served.items()
    }


def _days(frames: dict[str, pl.DataFrame], days: tuple[int, ...]) -> dict[str, pl.DataFrame]:
    cols = {"raw_funding_rates": "funding_time"}
    return {t: f.filter(pl.col(cols.get(t, "ts")).dt.day().is_in(days)) for t, f in frames.items()}


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


def _failing_partitions(result: dg.ExecuteInProcessResult) -> dict[str, list[str]]:
    return {
        f"{e.asset_key.path[-1]}.{e.check_name}": e.metadata["failing_partitions"].value
        for e in result.get_asset_check_evaluations()
        if not e.passed
    }


def test_a_bad_day_in_a_new_range_stores_the_good_days_and_names_the_bad_one(
    tmp_path: Path,
) -> None:
    db = tmp_path / "c.duckdb"
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run(db, instance, gapped=True)
        assert not result.success
        for t in TABLES:
            key = dg.AssetKey(["raw", t])
            assert instance.get_materialized_partitions(key) == {"BTC|2024-01-01", "BTC|2024-01-03"}
            status = instance.get_status_by_partition(
                key, ["BTC|2024-01-02"], assets.ingest_partitions
            )
            assert status == {"BTC|2024-01-02": dg.AssetPartitionStatus.FAILED}, t
    messages = _refusals(result)
    assert set(messages) == {f"raw__{t}" for t in TABLES}
    spot = messages["raw__raw_spot_ohlcv"]
    assert "raw.raw_spot_ohlcv: 1 partitions failed their checks (BTC|2024-01-02)" in spot
    assert "stored rows are unchanged and the 2 partitions that passed were written" in spot
    assert "BTC|2024-01-02: expected 96 bars" in spot
    assert "16 missing (2024-01-02 06:00 .. 2024-01-02 09:45 UTC)" in spot
    assert "BTC|2024-01-01" not in spot and "BTC|2024-01-03" not in spot
    assert "BTC|2024-01-02: BTC/USDT:USDT: 2 settlements" in messages["raw__raw_funding_rates"]
    assert _failing_partitions(result) == {
        "raw_spot_ohlcv.bar_count_matches_grid": ["BTC|2024-01-02"],
        "raw_perp_ohlcv.bar_count_matches_grid": ["BTC|2024-01-02"],
        "raw_funding_rates.funding_settlements_present": ["BTC|2024-01-02"],
    }
    stored, truth = _stored(db), _truth(0, (1, 3))
    assert stored.keys() == truth.keys()
    for t, frame in truth.items():
        assert frame.height == {"raw_funding_rates": 6}.get(t, 192), t
        assert stored[t].equals(frame), t  # the good days as served; nothing of the bad one


def test_a_gap_on_a_good_range_leaves_the_bad_day_unchanged_and_rewrites_the_rest(
    tmp_path: Path,
) -> None:
    # Stored first from another seed, so a rewritten day is told apart from a kept one.
    db = tmp_path / "c.duckdb"
    with dg.DagsterInstance.ephemeral() as instance:
        assert _run(db, instance, gapped=False, seed=1).success
        good = _stored(db)
        for attempt in range(2):  # a persistent fault: every re-run fails the same way
            result = _run(db, instance, gapped=True)
            assert not result.success, attempt
            assert set(_refusals(result)) == {f"raw__{t}" for t in TABLES}
            after = _stored(db)
            assert after.keys() == good.keys()
            kept, rewritten = _days(after, (2,)), _days(after, (1, 3))
            for t, frame in _days(good, (2,)).items():
                assert kept[t].equals(frame), t  # the bad day: nothing lost, duplicated, changed
            for t, frame in _truth(0, (1, 3)).items():
                assert rewritten[t].equals(frame), t  # the good days: the venue's new rows
        assert _run(db, instance, gapped=False).success  # the venue recovered: all days again
    for t, frame in _truth(0, (1, 2, 3)).items():
        assert _stored(db)[t].equals(frame), t


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
