"""The polars type handler on DuckDBIOManager: round trip, partition replacement, schema
evolution, atomic replaces, and writes of chosen partitions only."""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

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


GRID = dg.MultiPartitionsDefinition(
    {"date": DATES, "asset": dg.StaticPartitionsDefinition(["A", "B"])}
)
EXPR = {"date": "ts", "asset": "asset"}


def _grid_rows(days: list[int], assets: list[str], value: float) -> pl.DataFrame:
    # Two rows per day x asset partition, every value equal to `value`.
    rows = [
        (datetime(2024, 1, d, h, tzinfo=UTC), a, value)
        for d in days
        for a in assets
        for h in (0, 12)
    ]
    return pl.DataFrame(rows, schema=["ts", "asset", "value"], orient="row")


def test_replace_partitions_touches_only_the_named_partitions(tmp_path: Path) -> None:
    db = str(tmp_path / "p.duckdb")
    io = CarryDuckDBIOManager(database=db).create_io_manager(None)  # type: ignore[arg-type]
    key = dg.AssetKey(["stage", "grid"])
    io.replace_partitions(key, GRID, EXPR, _grid_rows([1, 2, 3], ["A", "B"], 1.0), [])
    before = _stored(db, "stage.grid").sort("ts", "asset")
    assert before.height == 12
    # Two partitions at once (A on 01-02, B on 01-03): their 4 rows replaced, 8 others as stored.
    new = pl.concat([_grid_rows([2], ["A"], 2.0), _grid_rows([3], ["B"], 2.0)])
    meta = io.replace_partitions(key, GRID, EXPR, new, ["A|2024-01-02", "B|2024-01-03"])
    after = _stored(db, "stage.grid").sort("ts", "asset")
    assert meta["dagster/row_count"] == 4 and meta["table_row_count"] == 12
    day = pl.col("ts").dt.day()
    changed = ((pl.col("asset") == "A") & (day == 2)) | ((pl.col("asset") == "B") & (day == 3))
    assert after.filter(changed)["value"].to_list() == [2.0] * 4
    assert after.filter(~changed).equals(before.filter(~changed))
    # A failing insert after the delete rolls both back.
    bad = _grid_rows([1], ["A"], 3.0).with_columns(pl.lit("x").alias("value"))
    with pytest.raises(duckdb.ConversionException):
        io.replace_partitions(key, GRID, EXPR, bad, ["A|2024-01-01"])
    assert _stored(db, "stage.grid").sort("ts", "asset").equals(after)
