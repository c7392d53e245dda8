"""Whole-table Great Expectations suites on the raw tables, as blocking `@asset_check`s.

The per-partition invariants run inside the assets; these checks validate the entire table after
each materialisation (duplicates across partitions, value ranges, column pairs) with the suites
defined in `carry_pipeline/lib/expectations.py`. GX is imported inside the check only.
"""

from __future__ import annotations

import dagster as dg
import duckdb as duckdb_lib
from dagster_duckdb import DuckDBResource

from carry_pipeline.lib.duckdb_io import utc_frame
from carry_pipeline.lib.expectations import validate_table

SCHEMA = "raw"


def _suite_check(table: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=dg.AssetKey([SCHEMA, table]),
        name="matches_expectation_suite",
        blocking=True,
        description=f"The whole {SCHEMA}.{table} table passes its Great Expectations suite.",
    )
    def _check(duckdb: DuckDBResource) -> dg.AssetCheckResult:
        with duckdb.get_connection() as con:
            try:
                frame = utc_frame(con.sql(f"select * from {SCHEMA}.{table}").pl())
            except duckdb_lib.CatalogException as exc:
                raise dg.Failure(
                    f"{SCHEMA}.{table} does not exist in {duckdb.database}; materialise it first",
                    allow_retries=False,
                ) from exc
        result = validate_table(table, frame)
        return dg.AssetCheckResult(
            passed=result.success,
            description=(
                f"{result.evaluated} expectations over {result.rows} rows: "
                + ("all passed" if result.success else f"{len(result.failures)} failed")
            ),
            metadata={
                "rows": result.rows,
                "expectations": result.evaluated,
                "failures": dg.MetadataValue.json(result.failures),
            },
        )

    return _check


raw_spot_ohlcv_suite = _suite_check("raw_spot_ohlcv")
raw_perp_ohlcv_suite = _suite_check("raw_perp_ohlcv")
raw_funding_rates_suite = _suite_check("raw_funding_rates")
raw_order_book_suite = _suite_check("raw_order_book")
