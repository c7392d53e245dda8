"""DuckDB storage for polars frames: a type handler on `dagster_duckdb.DuckDBIOManager`.

`dagster-duckdb-polars` cannot read with duckdb 2.0, so the project owns this small handler. Tables
are named after the asset and live in the DuckDB schema given by the asset's `key_prefix` (`raw`,
`features`, ...). Partitioned assets must set `metadata={"partition_expr": ...}`; the IO manager
deletes the partition's rows and the handler inserts the new ones in one DuckDB transaction, so
re-materialising a partition replaces it, and a write that fails anywhere (a type mismatch, a
crash) rolls back and leaves the stored rows exactly as they were.

Two ways to write fewer partitions than an output covers (both one transaction):
- an `Output` whose metadata lists `kept_partitions` (partition keys): the IO manager replaces the
  output's other partitions and leaves the rows of those exactly as stored (`raw_order_book` keeps
  the snapshots collected live for days the venue has no book history for);
- `CarryDbIOManager.replace_partitions`, called by an asset that writes only the partitions that
  passed its checks and records their materialisations itself (the raw assets, when one day of a
  range fails).

Every connection goes through `duckdb_lock.connect`: writes (outputs, `replace_partitions`) hold
the exclusive lock on `<file>.lock` for their transaction only, reads of inputs a shared one with
a read-only connection, so steps of a multiprocess run (the four experts of a fold) read and write
one file without DuckDB's "Could not set lock" errors, and train side by side in between.

DuckDB without the ICU extension reports TIMESTAMPTZ columns as `Etc/UTC`; frames are read back
with `UTC`, the project's timestamp type.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import polars as pl
from dagster._core.definitions.partitions.utils import TimeWindow
from dagster._core.storage.db_io_manager import (
    DbIOManager,
    DbTypeHandler,
    TablePartitionDimension,
    TableSlice,
)
from dagster_duckdb import DuckDBIOManager, DuckDBResource
from dagster_duckdb.io_manager import DuckDbClient, _partition_where_clause

from carry_pipeline.lib import duckdb_lock

KEPT_PARTITIONS = "kept_partitions"
"""Output metadata key: partition keys of the output whose stored rows the write must not touch."""
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


def _table_exists(connection: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(
        connection.execute(
            "select 1 from information_schema.tables where table_schema = ? and table_name = ?",
            [schema, table],
        ).fetchall()
    )


def insert_frame(
    connection: duckdb.DuckDBPyConnection, schema: str, table: str, frame: pl.DataFrame
) -> dict[str, Any]:
    """Insert `frame` by column name into `schema.table`, creating it or adding new columns first.

    Returns the output metadata: rows inserted, rows in the table after, the column schema.
    """
    qualified = f"{_quote(schema)}.{_quote(table)}"
    connection.register("__carry_frame", frame.to_arrow())
    try:
        # DuckDB 2 refuses new work on a connection with an unfinished result: fetch each one.
        connection.execute(
            f"create table if not exists {qualified} as select * from __carry_frame limit 0"
        ).fetchall()
        existing = {
            r[0]
            for r in connection.execute(
                "select column_name from information_schema.columns "
                "where table_schema = ? and table_name = ?",
                [schema, table],
            ).fetchall()
        }
        for name, dtype in frame.schema.items():
            if name not in existing:
                connection.execute(
                    f"alter table {qualified} add column {_quote(name)} {_duckdb_type(dtype)}"
                ).fetchall()
        connection.execute(
            f"insert into {qualified} by name select * from __carry_frame"
        ).fetchall()
        total = connection.execute(f"select count(*) from {qualified}").fetchall()[0]
    except BaseException:
        # In an aborted transaction unregister raises too: keep the error that caused it.
        with suppress(duckdb.Error):
            connection.unregister("__carry_frame")
        raise
    connection.unregister("__carry_frame")
    return {
        "dagster/row_count": frame.height,
        "table_row_count": int(total[0]) if total else 0,
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(n, str(t)) for n, t in frame.schema.items()]
        ),
    }


@contextmanager
def transaction(connection: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Run the block in one DuckDB transaction: commit at the end, roll back on any exception."""
    connection.execute("begin transaction").fetchall()
    try:
        yield connection
    except BaseException:
        connection.execute("rollback").fetchall()
        raise
    connection.execute("commit").fetchall()


class TransactionalDuckDbClient(DuckDbClient):
    """`DuckDbClient` whose connection is one transaction, closed on success and on failure.

    The IO manager's delete of the output's slice and the handler's insert run inside it, so a
    replace is all or nothing (upstream `DuckDbClient` autocommits the delete and leaks the
    connection when the insert raises).
    """

    @staticmethod
    @contextmanager
    def connect(context: Any, table_slice: TableSlice) -> Iterator[duckdb.DuckDBPyConnection]:
        """For an output, a writable connection inside `transaction` under the exclusive lock;
        for an input, a read-only one under the shared lock (readers of one file run together)."""
        if isinstance(context, dg.InputContext):
            with _connection(context.resource_config or {}, read_only=True) as con:
                yield con
            return
        with _connection(context.resource_config) as con, transaction(con):
            yield con

    @staticmethod
    def delete_table_slice(
        context: dg.OutputContext, table_slice: TableSlice, connection: duckdb.DuckDBPyConnection
    ) -> None:
        """Delete the slice's rows; nothing when the table does not exist yet."""
        # Checked first: a CatalogException would abort the surrounding transaction.
        if _table_exists(connection, table_slice.schema, table_slice.table):
            statement = f"delete from {_qualified(table_slice)}"
            if table_slice.partition_dimensions:
                statement += " where " + _partition_where_clause(table_slice.partition_dimensions)
            connection.execute(statement).fetchall()


@contextmanager
def _connection(
    resource_config: Mapping[str, Any], *, read_only: bool = False
) -> Iterator[duckdb.DuckDBPyConnection]:
    # A connection with the IO manager's settings under the file's lock, closed whatever happens.
    with duckdb_lock.connect(
        resource_config["database"],
        read_only=read_only,
        config=resource_config.get("connection_config") or {},
    ) as con:
        yield con


def partition_dimensions(
    partitions_def: dg.PartitionsDefinition, partition_expr: Any, key: str
) -> list[TablePartitionDimension]:
    """The table slice of one partition key: a time window or a value per partition dimension."""
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        by_dim = partitions_def.get_partition_key_from_str(key).keys_by_dimension
        return [
            _dimension(d.partitions_def, partition_expr[d.name], by_dim[d.name])
            for d in partitions_def.partitions_defs
        ]
    return [_dimension(partitions_def, partition_expr, key)]


def _dimension(
    partitions_def: dg.PartitionsDefinition, expr: str, key: str
) -> TablePartitionDimension:
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        window = partitions_def.time_window_for_partition_key(key)
        return TablePartitionDimension(expr, TimeWindow(window.start, window.end))
    return TablePartitionDimension(expr, [key])


class CarryDbIOManager(DbIOManager):
    """`DbIOManager` with transactional writes and writes of chosen partitions only.

    Args:
        resource_config: the IO manager's config (`database`, `connection_config`), used to open
            the connection of `replace_partitions` (which has no Dagster context to read it from).
        **kwargs: `DbIOManager`'s arguments (database, schema, type handlers, ...).
    """

    def __init__(self, *, resource_config: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(db_client=TransactionalDuckDbClient(), **kwargs)
        self._resource_config = dict(resource_config)

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        """Replace the output's partitions, except those its metadata lists in `kept_partitions`."""
        kept = _kept_partitions(context)
        if not kept or not isinstance(obj, pl.DataFrame):
            super().handle_output(context, obj)
            return
        keys = [k for k in context.asset_partition_keys if k not in kept]
        metadata = self.replace_partitions(
            context.asset_key,
            context.asset_partitions_def,
            context.definition_metadata["partition_expr"],
            obj,
            keys,
        )
        context.add_output_metadata(metadata)

    def replace_partitions(
        self,
        asset_key: dg.AssetKey,
        partitions_def: dg.PartitionsDefinition,
        partition_expr: Any,
        frame: pl.DataFrame,
        keys: Sequence[str],
    ) -> dict[str, Any]:
        """Delete the stored rows of exactly the partitions `keys`, then insert `frame`, atomically.

        The table is `<key_prefix>.<name>` of `asset_key`, as for outputs; `partition_expr` is the
        asset's metadata value. Rows of other partitions are never touched. Returns the metadata
        `insert_frame` returns.
        """
        schema, table = asset_key.path[-2], asset_key.path[-1]
        clauses = [
            "("
            + _partition_where_clause(partition_dimensions(partitions_def, partition_expr, k))
            + ")"
            for k in keys
        ]
        with _connection(self._resource_config) as con, transaction(con):
            con.execute(f"create schema if not exists {_quote(schema)}").fetchall()
            if clauses and _table_exists(con, schema, table):
                where = " or ".join(clauses)
                con.execute(
                    f"delete from {_quote(schema)}.{_quote(table)} where {where}"
                ).fetchall()
            return insert_frame(con, schema, table, frame)


def _kept_partitions(context: dg.OutputContext) -> set[str]:
    # The output's `kept_partitions` metadata (a JSON list of partition keys), if any.
    value = context.output_metadata.get(KEPT_PARTITIONS)
    value = getattr(value, "value", value)
    return {str(k) for k in value} if value else set()


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
        return insert_frame(connection, table_slice.schema, table_slice.table, obj)

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

    One schema per stage comes from each asset's `key_prefix` (leave `schema` unset). Every write
    is one transaction (see `CarryDbIOManager`).
    """

    @staticmethod
    def type_handlers() -> Sequence[DbTypeHandler]:
        """The polars handler."""
        return [PolarsDuckDBTypeHandler()]

    def create_io_manager(self, context: dg.InitResourceContext) -> CarryDbIOManager:
        """A `CarryDbIOManager`: transactional replaces, `kept_partitions`, `replace_partitions`."""
        return CarryDbIOManager(
            resource_config={
                "database": self.database,
                "connection_config": dict(self.connection_config),
            },
            database=self.database,
            schema=self.schema_,
            type_handlers=self.type_handlers(),
            default_load_type=self.default_load_type(),
            io_manager_name="DuckDBIOManager",
        )

    @staticmethod
    def default_load_type() -> type | None:
        """Inputs without a type annotation load as polars frames."""
        return pl.DataFrame


class CarryDuckDBResource(DuckDBResource):
    """`DuckDBResource` (resource key `duckdb`) whose connections hold the file's lock.

    `get_connection()` is a writer (exclusive lock, for the connection's life only);
    `get_connection(read_only=True)` a reader (shared lock, read-only connection). Keep a block
    short: other processes' reads and writes of the file wait for it.
    """

    @contextmanager
    def get_connection(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection under the lock (see the class docstring), closed at the end."""
        with duckdb_lock.connect(
            self.database, read_only=read_only, config=self.connection_config
        ) as con:
            yield con


def read_table(database: str | Path, table: str, where: str | None = None) -> pl.DataFrame:
    """Read a table (e.g. "raw.raw_funding_rates") from a DuckDB file, read-only under its shared
    lock (`duckdb_lock`), as polars.

    Args:
        database: path of the DuckDB file.
        table: `schema.table`.
        where: optional SQL condition.

    Raises:
        FileNotFoundError: the database file does not exist.
    """
    if not Path(database).exists():
        raise FileNotFoundError(f"DuckDB file {database} does not exist; materialise the assets")
    with duckdb_lock.connect(database, read_only=True) as con:
        sql = f"select * from {table}" + (f" where {where}" if where else "")
        return utc_frame(con.sql(sql).pl())
