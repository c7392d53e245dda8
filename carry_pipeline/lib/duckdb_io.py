"""DuckDB storage for polars frames: a type handler on `dagster_duckdb.DuckDBIOManager`.

`dagster-duckdb-polars` cannot read with duckdb 2.0, so the project owns this small handler. Tables
are named after the asset and live in the DuckDB schema given by the asset's `key_prefix` (`raw`,
`features`, ...). Partitioned assets must set `metadata={"partition_expr": ...}`; the IO manager
deletes the partition's rows before the handler inserts the new ones, all on one connection, so
re-materialising a partition replaces it. DuckDB without the ICU extension reports TIMESTAMPTZ
columns as `Etc/UTC`; frames are read back with `UTC`, the project's timestamp type.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import polars as pl
from dagster._core.storage.db_io_manager import DbTypeHandler, TableSlice
from dagster_duckdb import DuckDBIOManager

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATABASE = REPO_ROOT / "data" / "carry.duckdb"


def default_database() -> str:
    """The DuckDB file: `$CARRY_DUCKDB` if set, else `data/carry.duckdb` in the repository."""
    return os.environ.get("CARRY_DUCKDB", str(DEFAULT_DATABASE))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _qualified(table_slice: TableSlice) -> str:
    return f"{_quote(table_slice.schema)}.{_quote(table_slice.table)}"


def utc_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """Normalise every timezone-aware datetime column to `UTC` (DuckDB returns `Etc/UTC`)."""
    fixes = [
        pl.col(name).dt.convert_time_zone("UTC")
        for name, dtype in frame.schema.items()
        if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None
    ]
    return frame.with_columns(fixes) if fixes else frame


def _duckdb_type(dtype: pl.DataType) -> str:
    # Types of columns added to an existing table (schema evolution), via an empty frame.
    probe = duckdb.connect()
    try:
        return str(probe.from_arrow(pl.DataFrame(schema={"c": dtype}).to_arrow()).types[0])
    finally:
        probe.close()


class PolarsDuckDBTypeHandler(DbTypeHandler[pl.DataFrame]):
    """Stores and loads `polars.DataFrame` outputs in DuckDB tables."""

    def handle_output(
        self,
        context: dg.OutputContext,
        table_slice: TableSlice,
        obj: pl.DataFrame,
        connection: duckdb.DuckDBPyConnection,
    ) -> dict[str, Any]:
        """Create the table on first write (adding columns new to it), then insert by name."""
        table = _qualified(table_slice)
        arrow = obj.to_arrow()
        connection.register("__carry_frame", arrow)
        try:
            # DuckDB 2 refuses new work on a connection with an unfinished result: fetch each one.
            connection.execute(
                f"create table if not exists {table} as select * from __carry_frame limit 0"
            ).fetchall()
            existing = {
                r[0]
                for r in connection.execute(
                    "select column_name from information_schema.columns "
                    "where table_schema = ? and table_name = ?",
                    [table_slice.schema, table_slice.table],
                ).fetchall()
            }
            for name, dtype in obj.schema.items():
                if name not in existing:
                    connection.execute(
                        f"alter table {table} add column {_quote(name)} {_duckdb_type(dtype)}"
                    ).fetchall()
            connection.execute(
                f"insert into {table} by name select * from __carry_frame"
            ).fetchall()
            total = connection.execute(f"select count(*) from {table}").fetchall()[0]
        finally:
            connection.unregister("__carry_frame")
        return {
            "dagster/row_count": obj.height,
            "table_row_count": int(total[0]) if total else 0,
            "dagster/column_schema": dg.TableSchema(
                columns=[dg.TableColumn(n, str(t)) for n, t in obj.schema.items()]
            ),
        }

    def load_input(
        self,
        context: dg.InputContext,
        table_slice: TableSlice,
        connection: duckdb.DuckDBPyConnection,
    ) -> pl.DataFrame:
        """Read the slice (partition and columns) the downstream asset asks for."""
        from dagster_duckdb.io_manager import DuckDbClient

        if table_slice.partition_dimensions and not any(
            d.partitions for d in table_slice.partition_dimensions
        ):
            return pl.DataFrame()
        query = DuckDbClient.get_select_statement(table_slice)
        return utc_frame(connection.sql(query).pl())

    @property
    def supported_types(self) -> Sequence[type[object]]:
        """Only polars DataFrames."""
        return [pl.DataFrame]


class CarryDuckDBIOManager(DuckDBIOManager):
    """DuckDB IO manager for polars frames; `database` defaults to `data/carry.duckdb`.

    One schema per stage comes from each asset's `key_prefix` (leave `schema` unset).
    """

    @staticmethod
    def type_handlers() -> Sequence[DbTypeHandler]:
        """The polars handler."""
        return [PolarsDuckDBTypeHandler()]

    @staticmethod
    def default_load_type() -> type | None:
        """Inputs without a type annotation load as polars frames."""
        return pl.DataFrame


def read_table(database: str | Path, table: str, where: str | None = None) -> pl.DataFrame:
    """Read a table (e.g. "raw.raw_funding_rates") from a DuckDB file, read-only, as polars.

    Args:
        database: path of the DuckDB file.
        table: `schema.table`.
        where: optional SQL condition.

    Raises:
        FileNotFoundError: the database file does not exist.
    """
    if not Path(database).exists():
        raise FileNotFoundError(f"DuckDB file {database} does not exist; materialise the assets")
    with duckdb.connect(str(database), read_only=True) as con:
        sql = f"select * from {table}" + (f" where {where}" if where else "")
        return utc_frame(con.sql(sql).pl())
