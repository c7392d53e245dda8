"""Curated mutations of the ingestion write path (validate before write, per-partition writes,
kept book partitions, atomic replaces) and of every blocking ingestion check."""

from __future__ import annotations

from tests.mutation.spec import Mutation

ASSETS = "carry_pipeline/defs/ingestion/assets.py"
VALIDATION = "carry_pipeline/lib/validation.py"
CHECKS = "carry_pipeline/defs/ingestion/checks.py"
MAIN = "carry_pipeline/main.py"
DUCKDB_IO = "carry_pipeline/lib/duckdb_io.py"
BACKFILL = "tests/pipeline/ingestion/test_backfill.py"
DUCKDB_IO_TESTS = "tests/pipeline/ingestion/test_duckdb_io.py"
BOOK_TESTS = "tests/pipeline/ingestion/test_order_book_snapshots.py"
BOOK_RERUN = f"{BOOK_TESTS}::test_rerunning_a_past_book_partition_keeps_the_live_snapshots"
REPLACE_PARTITIONS = f"{DUCKDB_IO_TESTS}::test_replace_partitions_touches_only_the_named_partitions"
VALIDATION_TESTS = "tests/pipeline/ingestion/test_validation.py"

MUTATIONS: list[Mutation] = [
    Mutation(
        id="ingestion-write-before-validate",
        path=ASSETS,
        old="    if not plan.refused:\n        yield output(plan)\n",
        new="    if True:\n        yield output(plan)\n",
        tests=(BACKFILL,),
        note="The frame is handed to the IO manager even when a partition check fails, so a gap "
        "replaces a good partition.",
    ),
    Mutation(
        id="ingestion-bad-day-blocks-good-days",
        path=ASSETS,
        old="    done = _write_passing(context, io_manager, frame, time_column, plan)\n",
        new="    done = WritePlan([], plan.kept, plan.refused)\n",
        tests=(BACKFILL,),
        note="One failing day of a range run writes nothing: the range's good days stay missing.",
    ),
    Mutation(
        id="ingestion-refused-partition-written",
        path=ASSETS,
        old="    written = [k for k in keys if k not in refused and k not in kept]\n",
        new="    written = [k for k in keys if k not in kept]\n",
        tests=(
            BACKFILL,
            "tests/pipeline/ingestion/test_assets.py::test_plan_writes_sorts_the_window",
        ),
        note="The bad day of a range is written (and shown materialised) with the good ones.",
    ),
    Mutation(
        id="ingestion-whole-window-failure-refuses-nothing",
        path=ASSETS,
        old="    if None in refused:\n        refused = set(keys)\n",
        new="",
        tests=("tests/pipeline/ingestion/test_assets.py::test_plan_writes_sorts_the_window",),
        note="A failing check that names no partition lets every partition be written.",
    ),
    Mutation(
        id="ingestion-empty-book-replaces-live-snapshots",
        path=ASSETS,
        old="output, keep_empty=True",
        new="output, keep_empty=False",
        tests=(BOOK_RERUN,),
        note="A past day's order-book partition re-run under ccxt (0 rows) wipes the snapshots "
        "order_book_snapshot_job collected live.",
    ),
    Mutation(
        id="duckdb-kept-partitions-ignored",
        path=DUCKDB_IO,
        old="        keys = [k for k in context.asset_partition_keys if k not in kept]\n",
        new="        keys = list(context.asset_partition_keys)\n",
        tests=(BOOK_RERUN,),
        note="The IO manager deletes the partitions an Output lists in kept_partitions.",
    ),
    Mutation(
        id="duckdb-replace-not-atomic",
        path=DUCKDB_IO,
        old="        with _connection(context.resource_config) as con, transaction(con):\n",
        new="        with _connection(context.resource_config) as con:\n",
        tests=(
            f"{DUCKDB_IO_TESTS}::test_a_failing_insert_leaves_the_partition_and_the_table_"
            "unchanged",
        ),
        note="The IO manager's delete autocommits: an insert that raises loses the partition.",
    ),
    Mutation(
        id="duckdb-replace-partitions-not-atomic",
        path=DUCKDB_IO,
        old="        with _connection(self._resource_config) as con, transaction(con):\n",
        new="        with _connection(self._resource_config) as con:\n",
        tests=(REPLACE_PARTITIONS,),
        note="A partial-range write's delete autocommits: a failing insert loses the partitions.",
    ),
    Mutation(
        id="duckdb-replace-partitions-clauses-anded",
        path=DUCKDB_IO,
        old="""where = " or ".join(clauses)""",
        new="""where = " and ".join(clauses)""",
        tests=(REPLACE_PARTITIONS,),
        note="Replacing two partitions at once deletes neither: their rows are duplicated.",
    ),
    Mutation(
        id="ingestion-partition-delete-scope",
        path=ASSETS,
        old="_ASSET_EXPR = \"split_part(symbol, '/', 1)\"",
        new="_ASSET_EXPR = \"split_part(symbol, '/', 2)\"",
        tests=(BACKFILL,),
        note="The IO manager deletes the wrong asset's rows before a re-write: re-runs duplicate.",
    ),
    Mutation(
        id="ingestion-day-window-overlaps",
        path=ASSETS,
        old="(pl.col(time_column) >= start) & (pl.col(time_column) < end)",
        new="(pl.col(time_column) >= start) & (pl.col(time_column) <= end)",
        tests=(BACKFILL,),
        note="Each day's checks see the next day's first row.",
    ),
    Mutation(
        id="ingestion-rerun-ingests-done-days",
        path=MAIN,
        old="        if d not in todo:\n            continue\n",
        new="",
        tests=("tests/pipeline/test_main.py::test_ingest_runs_only_missing_partitions",),
        note="make run re-ingests partitions the instance already has instead of only the gaps.",
    ),
    Mutation(
        id="ingestion-unique-increasing-always-passes",
        path=VALIDATION,
        old="(pl.col(time_col).diff().over(keys) <= timedelta(0)) | pl.col(time_col).is_null()",
        new="pl.lit(False)",
        tests=(VALIDATION_TESTS,),
        note="Duplicate or unsorted timestamps pass (ohlcv, funding and book checks).",
    ),
    Mutation(
        id="ingestion-null-prices-always-pass",
        path=VALIDATION,
        old="nulls = frame.filter(pl.any_horizontal(",
        new="nulls = frame.head(0).filter(pl.any_horizontal(",
        tests=(VALIDATION_TESTS,),
    ),
    Mutation(
        id="ingestion-price-box-always-passes",
        path=VALIDATION,
        old="    box = frame.filter(",
        new="    box = frame.head(0).filter(",
        tests=(VALIDATION_TESTS,),
    ),
    Mutation(
        id="ingestion-bar-count-ignores-missing-bars",
        path=VALIDATION,
        old="[t for t in grid.to_list() if t not in present]",
        new="[t for t in grid.to_list() if False]",
        tests=(VALIDATION_TESTS,),
        note="Missing bars are never counted: a gap in the grid passes.",
    ),
    Mutation(
        id="ingestion-null-funding-always-passes",
        path=VALIDATION,
        old='nulls = frame.filter(pl.col("funding_rate").is_null()',
        new='nulls = frame.head(0).filter(pl.col("funding_rate").is_null()',
        tests=(VALIDATION_TESTS,),
    ),
    Mutation(
        id="ingestion-funding-bounds-always-pass",
        path=VALIDATION,
        old="pl.concat([out, bad_interval]).unique(maintain_order=True)",
        new="pl.concat([out, bad_interval]).head(0)",
        tests=(VALIDATION_TESTS,),
    ),
    Mutation(
        id="ingestion-settlements-present-always-passes",
        path=VALIDATION,
        old='.filter(pl.col("settlements") < pl.col("expected_at_least"))',
        new=".filter(pl.lit(False))",
        tests=(VALIDATION_TESTS,),
    ),
    Mutation(
        id="ingestion-book-not-crossed-always-passes",
        path=VALIDATION,
        old="    crossed = frame.filter(",
        new="    crossed = frame.head(0).filter(",
        tests=(VALIDATION_TESTS,),
    ),
    Mutation(
        id="ingestion-expectation-suite-always-passes",
        path=CHECKS,
        old="            passed=result.success,",
        new="            passed=True,",
        tests=(f"{BACKFILL}::test_the_table_wide_suite_fails_on_a_bad_row_outside_the_partition",),
    ),
]
