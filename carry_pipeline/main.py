"""The main run on the embedded default, offline: `make run` (`python -m carry_pipeline.main`).

0. `python -m carry_env.warmup` in a background process: it compiles the env's numba kernels into
   their cache (about 70 s of CPU on a fresh clone, under a second once cached) on the second core
   while ingestion runs; the retrain waits for it before it starts, so the kernels compile once.
   On a fresh install `make run` has already started one while pip installed the rest; this one
   then waits for that one's lock and loads what it compiled.
1. `ingest_job` over the day x asset partitions of the window that the instance has not materialised
   yet (re-runs only add what is missing): one run per asset and contiguous missing range, from the
   seeded simulated exchange by default.
2. `retrain_job`, one run, over everything ingested, with the demo profile of `config/demo.yaml`
   (the quick-start folds, so that a few months of data suffice; the defaults need about a year):
   features, folds, statistics, training windows, the experts and the meta-controller of every
   fold (`models`), then the `reports` stage (walk-forward backtests, stress tests, the report and
   the champion decision). Each stage prints a line when it starts and when it ends (with its
   seconds), and each step of it when it ends, as the run's events arrive. Models whose training
   would repeat one in `models.registry` are reused, not retrained (`lib.training.reuse`).
3. A paper session of a few simulated days: `champion_model_sensor` is evaluated against the
   instance and its run request (`paper_trading_job` on the champion) is executed with a bar
   limit, as a fresh session whose id carries the run's start time (a re-run trades its bars
   again rather than resuming the last run's finished session); with no champion promoted, the
   session runs the funding-rule baseline instead, and says so. A session that fails prints why;
   the run still ends with its summary.
4. A summary from DuckDB, where the DuckDB file and the report are, the champion decision, the
   out-of-sample metrics of the meta-controller against the baselines per fold, and the seconds
   per stage.

Every run is recorded in the Dagster instance (`DAGSTER_HOME`, `data/dagster_home` from the
Makefile), so `make dev` shows them in the UI.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import yaml

QUIET: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
"""Run config keeping Dagster's per-event log lines off the terminal (the instance keeps them)."""

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "config" / "demo.yaml"
"""Run config of the demo profile (`make run`; `dagster job execute ... -c config/demo.yaml`)."""


def demo_run_config() -> dict[str, Any]:
    """`config/demo.yaml`, with Dagster's console log kept to warnings."""
    return {**yaml.safe_load(DEMO_CONFIG.read_text()), **QUIET}


QUICKSTART_FEATURES: dict[str, Any] = demo_run_config()["resources"]["feature_settings"]["config"]
"""Fold profile of `make run`: 50 days of warm-up + 30 of train + 3 x (10 + 1) fit in 120 days."""

PAPER_BARS = 288
"""Bars of the closing paper session: three simulated days of 15-minute bars."""


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


STAGES = ("features", "datasets", "models", "reports")


def stage_of(step_key: str) -> str:
    """The stage (group) of a `retrain_job` step: its key prefix (`models__meta_controller`);
    `walk_forward_backtest`, a multi-asset with no prefix, is `reports`."""
    prefix = step_key.split("__", 1)[0]
    return prefix if prefix in STAGES else "reports"


RUN_ENDS = (dg.DagsterEventType.RUN_SUCCESS.value, dg.DagsterEventType.RUN_FAILURE.value)
"""Event types that end a run (their values are still `PIPELINE_SUCCESS` / `PIPELINE_FAILURE`)."""


class StageProgress:
    """Prints a run's progress as its events arrive (an instance event listener): a line when a
    stage starts, a line per step that ends (seconds, or FAILED), and a line when the stage ends
    (when a step of another stage starts, or the run ends)."""

    def __init__(self, write: Any = print) -> None:
        self.write = write
        self.stage: str | None = None
        self.started: dict[str, float] = {}
        self.stage_started = 0.0

    def __call__(self, entry: Any) -> None:
        """Handle one `EventLogEntry` of the run."""
        event = entry.dagster_event
        if event is None:
            return
        kind = event.event_type_value
        if kind in RUN_ENDS:
            self.close(entry.timestamp)
            return
        if entry.step_key is None:
            return
        stage = stage_of(entry.step_key)
        if kind == "STEP_START":
            if stage != self.stage:
                self.close(entry.timestamp)
                self.stage, self.stage_started = stage, entry.timestamp
                self.write(f"    [{stage}] started", flush=True)
            self.started[entry.step_key] = entry.timestamp
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            took = entry.timestamp - self.started.get(entry.step_key, entry.timestamp)
            outcome = "FAILED after" if kind == "STEP_FAILURE" else "done in"
            self.write(f"    [{stage}] {entry.step_key} {outcome} {took:.1f} s", flush=True)

    def close(self, at: float) -> None:
        """End the current stage (if any) at time `at`."""
        if self.stage is not None:
            self.write(f"    [{self.stage}] ended ({at - self.stage_started:.0f} s)", flush=True)
        self.stage = None


def start_warmup() -> subprocess.Popen[bytes]:
    """`python -m carry_env.warmup` in a background process (module docstring, step 0)."""
    return subprocess.Popen([sys.executable, "-m", "carry_env.warmup"])


def wait_for_warmup(process: subprocess.Popen[bytes]) -> None:
    """Wait for the kernel warm-up; say so when it is still compiling, and when it failed (the
    run then compiles the kernels itself)."""
    if process.poll() is None:
        print("    waiting for the numba kernel warm-up to finish ...", flush=True)
    t = time.perf_counter()
    code = process.wait()
    if code != 0:
        print(f"    the kernel warm-up exited with {code}; the run compiles them", flush=True)
    elif time.perf_counter() - t > 1:
        print(f"    warm-up done after {time.perf_counter() - t:.0f} s more", flush=True)


def stage_seconds(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """Wall time per stage of a run: from its first step's start to its last step's end."""
    spans: dict[str, list[float]] = {}
    for e in instance.all_logs(run_id):
        if e.step_key is None or e.dagster_event is None:
            continue
        if e.dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE"):
            spans.setdefault(stage_of(e.step_key), []).append(e.timestamp)
    return {s: max(spans[s]) - min(spans[s]) for s in STAGES if s in spans}


def paper_session_id(requested: str, started: datetime) -> str:
    """The paper session id of a `make run` started at `started`: the requested id (the sensor's
    `champion-<id>`, or `demo-funding-rule`) plus the start time to the second, in UTC.

    Each run gets a fresh session of its bars: a re-run that kept the champion would otherwise
    resume that champion's finished session at its end and trade no bar. The job still resumes a
    session given the same id (after a crash, say).
    """
    return f"{requested}-run-{started.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def paper_session(
    defs: dg.Definitions, instance: dg.DagsterInstance, bars: int, started: datetime
) -> str:
    """Run the paper session `champion_model_sensor` requests for the current champion, limited
    to `bars` bars, as a fresh session of this run (`paper_session_id`); with no champion
    promoted, the funding-rule baseline. Returns a summary line."""
    from carry_pipeline.defs.trading.jobs import paper_trading_job

    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("champion_model_sensor")
    context = dg.build_sensor_context(instance=instance, repository_def=repo)
    requests = sensor.evaluate_tick(context).run_requests or []
    config = requests[0].run_config["ops"]["paper_session"]["config"] if requests else {}
    if not requests or config.get("champion_id") == "none":
        note = "no champion promoted yet: paper session of the funding-rule baseline"
        config = {"session_id": "demo-funding-rule", "policy": "rule"}
    else:
        note = f"paper session of champion {config['champion_id']} (champion_model_sensor)"
    config = {**config, "session_id": paper_session_id(config["session_id"], started)}
    # The code location's job, with its resources, as the daemon would launch it.
    result = defs.resolve_job_def(paper_trading_job.name).execute_in_process(
        instance=instance,
        run_config={**QUIET, "ops": {"paper_session": {"config": {**config, "max_bars": bars}}}},
        raise_on_error=False,
    )
    if not result.success:
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        error = failure.step_failure_data.error if failure else None
        why = error.message.strip() if error else f"see run {result.run_id}"
        return f"{note}: FAILED ({why.splitlines()[0][:300]})"
    [out] = [e for e in result.all_node_events if e.is_successful_output]
    data = out.step_output_data
    meta = {k: v.value for k, v in data.metadata.items()}
    return (
        f"{note}: session {config['session_id']}, {meta['new_bars']} bars, equity "
        f"{meta['equity']:,.2f}, P&L vs backtest {meta['pnl_gap']:+.2%}, run {result.run_id}"
    )


def main(argv: list[str] | None = None) -> None:
    """Ingest, retrain, paper-trade, summarise; print each stage's seconds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=date.fromisoformat, default=date(2024, 1, 1))
    parser.add_argument("--end", type=date.fromisoformat, default=date(2024, 4, 30))
    parser.add_argument("--assets", default="BTC,ETH", help="comma-separated base currencies")
    parser.add_argument("--paper-bars", type=int, default=PAPER_BARS, help="paper session bars")
    args = parser.parse_args(argv)
    if "DAGSTER_HOME" not in os.environ:
        raise SystemExit("DAGSTER_HOME is not set: run `make run`, or export it (see the README)")
    os.environ.setdefault("CARRY_ASSETS", args.assets)
    os.environ.setdefault("CARRY_START_DATE", args.start.isoformat())
    t0, started = time.perf_counter(), datetime.now(UTC)
    warmup = start_warmup()
    from carry_pipeline.definitions import defs
    from carry_pipeline.defs.reports.resources import ReportSettings
    from carry_pipeline.lib.duckdb_io import default_database

    assets = [a.strip() for a in args.assets.split(",") if a.strip()]
    seconds = {"load": time.perf_counter() - t0}
    with dg.DagsterInstance.get() as instance:
        print(
            f"1/4 ingest {args.start}..{args.end} for {', '.join(assets)} (simulated exchange)",
            flush=True,
        )
        t = time.perf_counter()
        runs = ingest(defs, instance, args.start, args.end, assets)
        seconds["ingestion"] = time.perf_counter() - t
        print(f"    {runs} new partitions ingested ({seconds['ingestion']:.0f} s)", flush=True)
        print(
            "2/4 retrain_job, one run (config/demo.yaml): features, folds, normalisation stats, "
            "training windows, four experts + meta-controller per fold, backtests, stress, "
            "report, champion",
            flush=True,
        )
        wait_for_warmup(warmup)
        job = defs.resolve_job_def("retrain_job")
        run_id = str(uuid.uuid4())
        instance.add_event_listener(run_id, StageProgress())
        result = job.execute_in_process(
            instance=instance, run_config=demo_run_config(), run_id=run_id, raise_on_error=True
        )
        stages = stage_seconds(instance, result.run_id)
        seconds.update(stages)
        print("    " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()), flush=True)
        print(f"3/4 paper session, {args.paper_bars} bars", flush=True)
        t = time.perf_counter()
        paper = paper_session(defs, instance, args.paper_bars, started)
        seconds["paper"] = time.perf_counter() - t
        print(f"    {paper} ({seconds['paper']:.0f} s)", flush=True)
    db_path = default_database()
    settings = ReportSettings()  # the defaults the code location runs with
    print("4/4 outputs", flush=True)
    with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        print(summarise(db_path))
        print("out of sample, each fold's test span (mean: over the folds):")
        print(fold_table(db_path))
    print(champion_line(result))
    print(paper)
    print("seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    print(f"DuckDB file: {db_path}")
    print(f"report: {Path(settings.reports_root) / result.run_id / 'report.md'}")
    print(
        f'done in {time.perf_counter() - t0:.0f} s; query with: duckdb {db_path} "select * from '
        f'reports.backtest_metrics"'
    )


if __name__ == "__main__":
    main()
