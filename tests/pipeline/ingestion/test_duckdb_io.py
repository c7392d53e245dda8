"""The polars type handler on DuckDBIOManager: round trip, partition replacement, schema
evolution."""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl

from carry_pipeline.lib.duckdb_io import CarryDuckDBIOManager, read_table

DATES = dg.DailyPartitionsDefinition(start_date="2024-01-01", timezone="UTC")


def _frame(day: int, n: int, extra: bool = False) -> pl.DataFrame:
    f = pl.DataFrame(
        {
            "ts": [datetime(2024, 1, day, h, tzinfo=UTC) for h in range(n)],
            "value": [float(day * 100 + h) for h in range(n)],
        }
    )
    return f.with_columns(pl.lit("x").alias("note")) if extra else f


def test_partitions_replace_and_read_back(tmp_path: Path) -> None:
    db = str(tmp_path / "t.duckdb")
    state = {"extra": False}

    @dg.asset(key_prefix="stage", partitions_def=DATES, metadata={"partition_expr": "ts"})
    def table(context: dg.AssetExecutionContext) -> pl.DataFrame:
        day = int(context.partition_key[-2:])
        return _frame(day, 3 if day == 1 else 2, extra=state["extra"])

    @dg.asset(key_prefix="stage", partitions_def=DATES, metadata={"partition_expr": "ts"})
    def reader(table: pl.DataFrame) -> pl.DataFrame:
        # Inputs load the same partition, as UTC datetimes.
        assert table.schema["ts"] == pl.Datetime("us", "UTC")
        return table.with_columns(pl.col("value") * 2)

    res = {"io_manager": CarryDuckDBIOManager(database=db)}
    for key in ("2024-01-01", "2024-01-02", "2024-01-01"):
        assert dg.materialize([table, reader], resources=res, partition_key=key).success
    out = read_table(db, "stage.table")
    assert out.height == 5  # the rerun of 01-01 replaced its 3 rows
    assert out.sort("ts")["value"].to_list() == [100.0, 101.0, 102.0, 200.0, 201.0]
    assert out.schema["ts"] == pl.Datetime("us", "UTC")
    assert read_table(db, "stage.reader").height == 5
    # A new column is added to the existing table; old rows read it as null.
    state["extra"] = True
    assert dg.materialize([table], resources=res, partition_key="2024-01-02").success
    out = read_table(db, "stage.table").sort("ts")
    assert out["note"].to_list() == [None, None, None, "x", "x"]


def test_empty_partition_creates_the_table(tmp_path: Path) -> None:
    db = str(tmp_path / "e.duckdb")

    @dg.asset(key_prefix="stage", partitions_def=DATES, metadata={"partition_expr": "ts"})
    def empty() -> pl.DataFrame:
        return _frame(1, 0)

    res = {"io_manager": CarryDuckDBIOManager(database=db)}
    assert dg.materialize([empty], resources=res, partition_key="2024-01-05").success
    out = read_table(db, "stage.empty")
    assert out.height == 0 and out.columns == ["ts", "value"]


def _stored(db: str, table: str) -> pl.DataFrame:
    return read_table(db, table).sort("ts")


def test_a_failing_insert_leaves_the_partition_and_the_table_unchanged(tmp_path: Path) -> None:
    # The delete of 2024-01-01 succeeds, then the insert raises (a string in a DOUBLE column): the
    # replace is one transaction, so the stored partition survives and nothing else changes.
    db = str(tmp_path / "a.duckdb")
    state = {"bad": False}

    @dg.asset(key_prefix="stage", partitions_def=DATES, metadata={"partition_expr": "ts"})
    def table(context: dg.AssetExecutionContext) -> pl.DataFrame:
        day = int(context.partition_key[-2:])
        frame = _frame(day, 3)
        return frame.with_columns(pl.lit("not a number").alias("value")) if state["bad"] else frame

    res = {"io_manager": CarryDuckDBIOManager(database=db)}
    for key in ("2024-01-01", "2024-01-02"):
        assert dg.materialize([table], resources=res, partition_key=key).success
    before = _stored(db, "stage.table")
    assert before.height == 6
    state["bad"] = True
    result = dg.materialize(
        [table], resources=res, partition_key="2024-01-01", raise_on_error=False
    )
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert error is not None and error.cause is not None
    assert "Could not convert string 'not a number' to DOUBLE" in error.cause.message
    after = _stored(db, "stage.table")
    assert after.equals(before)  # 2024-01-01's 3 rows are still there, 2024-01-02 untouched
    assert after["value"].to_list() == [100.0, 101.0, 102.0, 200.0, 201.0, 202.0]
    # The connection was released: the file opens for writing again at once.
    state["bad"] = False
    assert dg.materialize([table], resources=res, partition_key="2024-01-01").success
    assert _stored(db, "stage.table").equals(before)
