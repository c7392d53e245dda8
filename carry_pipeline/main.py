"""The main run on the embedded default, offline: `make run` (`python -m carry_pipeline.main`).

1. `ingest_job` over the day x asset partitions of the window that the instance has not materialised
   yet (re-runs only add what is missing): one run per asset and contiguous missing range, from the
   seeded simulated exchange by default.
2. `carry_pipeline_job` over everything ingested (features, folds, statistics, training windows,
   then the experts and the meta-controller of every fold, `models`, demo profile; then the
   `reports` stage: walk-forward backtests, stress tests, the report and the champion decision),
   with the quick-start fold profile below so that a few months of data suffice (the defaults need
   about a year).
3. A summary from DuckDB, where the DuckDB file and the report are, the champion decision and the
   out-of-sample metrics of the meta-controller against the baselines per fold.

Every run is recorded in the Dagster instance (`DAGSTER_HOME`, `data/dagster_home` from the
Makefile), so `make dev` shows them in the UI.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

QUIET: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
"""Run config keeping Dagster's per-event log lines off the terminal (the instance keeps them)."""

QUICKSTART_FEATURES: dict[str, Any] = {
    "train_span": "30d",
    "test_span": "10d",
    "n_folds": 3,
    "embargo": "1d",
}
"""Fold profile of `make run`: 50 days of warm-up + 30 of train + 3 x (10 + 1) fit in 120 days."""


def missing_partitions(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, keys: list[dg.MultiPartitionKey]
) -> list[dg.MultiPartitionKey]:
    """The partition keys of `keys` that `asset_key` has not been materialised for in `instance`."""
    done = instance.get_materialized_partitions(asset_key)
    return [k for k in keys if str(k) not in done]


def missing_ranges(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, start: date, end: date, asset: str
) -> list[tuple[date, date]]:
    """Contiguous `[first, last]` day ranges of `[start, end]` not yet materialised for `asset`."""
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    keys = [dg.MultiPartitionKey({"asset": asset, "date": d.isoformat()}) for d in days]
    todo = {
        date.fromisoformat(k.keys_by_dimension["date"])
        for k in missing_partitions(instance, asset_key, keys)
    }
    ranges: list[tuple[date, date]] = []
    for d in days:
        if d not in todo:
            continue
        if ranges and ranges[-1][1] == d - timedelta(days=1):
            ranges[-1] = (ranges[-1][0], d)
        else:
            ranges.append((d, d))
    return ranges


def range_tags(asset: str, first: date, last: date) -> dict[str, str]:
    """Run tags that make one run cover the day x asset partitions `[first, last]` of `asset`."""
    return {
        "dagster/asset_partition_range_start": f"{asset}|{first.isoformat()}",
        "dagster/asset_partition_range_end": f"{asset}|{last.isoformat()}",
    }


def ingest(
    defs: dg.Definitions, instance: dg.DagsterInstance, start: date, end: date, assets: list[str]
) -> int:
    """Run `ingest_job` once per asset and contiguous range of missing days of `[start, end]`.

    Each run fetches its whole window per symbol and writes every day partition of it (the assets
    handle partition ranges), so a backfill pays Dagster's per-run overhead once per asset, not once
    per day x asset. Returns the number of partitions ingested.
    """
    job = defs.resolve_job_def("ingest_job")
    key = dg.AssetKey(["raw", "raw_perp_ohlcv"])
    t0 = time.perf_counter()
    total = 0
    for asset in assets:
        for first, last in missing_ranges(instance, key, start, end, asset):
            job.execute_in_process(
                instance=instance,
                run_config=QUIET,
                tags=range_tags(asset, first, last),
                raise_on_error=True,
            )
            total += (last - first).days + 1
            print(
                f"  ingest_job {asset} {first}..{last}: {total} partitions "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    return total


def summarise(db_path: str) -> pl.DataFrame:
    """Row count of every table in the schemas the run writes (`raw` .. `models`)."""
    import duckdb

    con = duckdb.connect(db_path, read_only=True)
    try:
        tables = con.sql(
            "select table_schema, table_name from information_schema.tables "
            "where table_schema in ('raw', 'features', 'datasets', 'models', 'reports') "
            "order by 1, 2"
        ).fetchall()
        rows = [(f"{schema}.{name}", _count(con, schema, name)) for schema, name in tables]
    finally:
        con.close()
    return pl.DataFrame(rows, schema=["table", "rows"], orient="row")


def _count(con: Any, schema: str, name: str) -> int:
    rows = con.sql(f'select count(*) from "{schema}"."{name}"').fetchall()
    return int(rows[0][0])


FOLD_TABLE_POLICIES = ("meta_controller", "long_carry", "funding_rule", "buy_and_hold", "flat")
FOLD_TABLE_COLUMNS = ("total_return", "sharpe", "max_drawdown", "fills", "fees", "funding")


def fold_table(db_path: str) -> pl.DataFrame:
    """`reports.backtest_metrics` per fold (and the mean): the meta-controller, then the
    baselines, with return, Sharpe, drawdown, trade count, fees and funding."""
    from carry_pipeline.lib.duckdb_io import read_table

    metrics = read_table(db_path, "reports.backtest_metrics", "aggregate in ('fold', 'mean')")
    rank = {p: i for i, p in enumerate(FOLD_TABLE_POLICIES)}
    return (
        metrics.filter(pl.col("policy").is_in(FOLD_TABLE_POLICIES))
        .with_columns(
            fold=pl.col("fold").cast(pl.String).fill_null("mean"),
            _r=pl.col("policy").replace_strict(rank, return_dtype=pl.Int64),
        )
        .sort(pl.col("aggregate") == "mean", "fold", "_r")
        .select("fold", "policy", *[pl.col(c).round(4) for c in FOLD_TABLE_COLUMNS])
    )


def champion_line(result: dg.ExecuteInProcessResult) -> str:
    """What `champion_model` decided in this run, from its materialisation's metadata."""
    [mat] = result.asset_materializations_for_node("reports__champion_model")
    meta = {k: v.value for k, v in mat.metadata.items()}
    if meta["promoted"]:
        return f"champion: promoted {meta['champion_id']} ({meta['champion_model_path']})"
    return (
        f"champion: not promoted (failed: {meta['failed_conditions']}); the champion stays "
        f"{meta['champion_id']}"
    )


REPORT_STEPS = frozenset(
    {"walk_forward_backtest", "reports__stress_test_report", "reports__backtest_report",
     "reports__champion_model"}
)  # fmt: skip


def stage_seconds(instance: dg.DagsterInstance, run_id: str, steps: frozenset[str]) -> float:
    """Wall time of `steps` in a run: from the first one's start to the last one's end."""
    stamps = [
        e.timestamp
        for e in instance.all_logs(run_id)
        if e.step_key in steps
        and e.dagster_event is not None
        and e.dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE")
    ]
    return max(stamps) - min(stamps) if stamps else 0.0


def main(argv: list[str] | None = None) -> None:
    """Ingest, build, summarise; print the reports' results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=date.fromisoformat, default=date(2024, 1, 1))
    parser.add_argument("--end", type=date.fromisoformat, default=date(2024, 4, 30))
    parser.add_argument("--assets", default="BTC,ETH", help="comma-separated base currencies")
    args = parser.parse_args(argv)
    if "DAGSTER_HOME" not in os.environ:
        raise SystemExit("DAGSTER_HOME is not set: run `make run`, or export it (see the README)")
    os.environ.setdefault("CARRY_ASSETS", args.assets)
    os.environ.setdefault("CARRY_START_DATE", args.start.isoformat())
    from carry_pipeline.definitions import defs
    from carry_pipeline.defs.reports.resources import ReportSettings
    from carry_pipeline.lib.duckdb_io import default_database

    assets = [a.strip() for a in args.assets.split(",") if a.strip()]
    t0 = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        print(
            f"1/3 ingest {args.start}..{args.end} for {', '.join(assets)} (simulated exchange)",
            flush=True,
        )
        runs = ingest(defs, instance, args.start, args.end, assets)
        print(f"    {runs} new partitions ingested", flush=True)
        print(
            "2/3 carry_pipeline_job: features, folds, normalisation stats, training windows, "
            "models "
            "(four experts + meta-controller per fold, demo profile: about 2 minutes)",
            flush=True,
        )
        job = defs.resolve_job_def("carry_pipeline_job")
        config = {**QUIET, "resources": {"feature_settings": {"config": QUICKSTART_FEATURES}}}
        result = job.execute_in_process(instance=instance, run_config=config, raise_on_error=True)
        reports_s = stage_seconds(instance, result.run_id, REPORT_STEPS)
    db_path = default_database()
    settings = ReportSettings()  # the defaults the code location runs with
    print("3/3 outputs", flush=True)
    with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        print(summarise(db_path))
        print("out of sample, each fold's test span (mean: over the folds):")
        print(fold_table(db_path))
    print(champion_line(result))
    print(f"reports stage: {reports_s:.1f} s")
    print(f"DuckDB file: {db_path}")
    print(f"report: {Path(settings.reports_root) / result.run_id / 'report.md'}")
    print(
        f'done in {time.perf_counter() - t0:.0f} s; query with: duckdb {db_path} "select * from '
        f'reports.backtest_metrics"'
    )


if __name__ == "__main__":
    main()
