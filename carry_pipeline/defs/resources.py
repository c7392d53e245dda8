"""Resources shared by every stage: DuckDB storage for polars frames, and a plain DuckDB connection.

- `io_manager`: `CarryDuckDBIOManager`, the default IO manager; an asset's `key_prefix` is its
  DuckDB schema (`raw`, `features`, ...), its name the table. The file is `$CARRY_DUCKDB` or
  `data/carry.duckdb`.
- `duckdb`: `CarryDuckDBResource` (a `dagster_duckdb.DuckDBResource`) on the same file, for SQL in
  checks and assets.

Both open the file under its lock file (`lib/duckdb_lock.py`): one writer at a time across the
processes of a multiprocess run, readers together, each only for its connection's life.
"""

from __future__ import annotations

import dagster as dg

from carry_pipeline.lib.duckdb_io import (
    CarryDuckDBIOManager,
    CarryDuckDBResource,
    default_database,
)


@dg.definitions
def resources() -> dg.Definitions:
    """The shared storage resources."""
    database = default_database()
    return dg.Definitions(
        resources={
            "io_manager": CarryDuckDBIOManager(database=database),
            "duckdb": CarryDuckDBResource(database=database),
        }
    )
