"""Curated mutations of the ingestion write path and of every blocking ingestion check."""

from __future__ import annotations

from tests.mutation.spec import Mutation

ASSETS = "carry_pipeline/defs/ingestion/assets.py"
VALIDATION = "carry_pipeline/lib/validation.py"
CHECKS = "carry_pipeline/defs/ingestion/checks.py"
MAIN = "carry_pipeline/main.py"
BACKFILL = "tests/pipeline/ingestion/test_backfill.py"
VALIDATION_TESTS = "tests/pipeline/ingestion/test_validation.py"

MUTATIONS: list[Mutation] = [
    Mutation(
        id="ingestion-write-before-validate",
        path=ASSETS,
        old="    if refusal is None:\n        yield output()\n",
        new="    yield output()\n",
        tests=(BACKFILL,),
        note="The frame is handed to the IO manager even when a partition check fails, so a gap "
        "replaces a good partition.",
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
