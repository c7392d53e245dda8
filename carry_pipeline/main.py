"""The main run on the embedded default, offline: `make run` (`python -m carry_pipeline.main`).

1. `ingest_job` over the day x asset partitions of the window that the instance has not materialised
   yet (re-runs only add what is missing): one run per asset and contiguous missing range, from the
   seeded simulated exchange by default.
2. `carry_pipeline_job` over everything ingested (features, folds, statistics, training windows,
   then the experts and the meta-controller of every fold, `models`, demo profile),
   with the quick-start fold profile below so that a few months of data suffice (the defaults need
   about a year).
3. A summary from DuckDB, and a rollout of the env on the pipeline's own market frame: the
   rule-based baselines of `carry_env.demo` over the bars after the warm-up.

Every run is recorded in the Dagster instance (`DAGSTER_HOME`, `data/dagster_home` from the
Makefile), so `make dev` shows them in the UI.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import date, timedelta
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
            "where table_schema in ('raw', 'features', 'datasets', 'models') order by 1, 2"
        ).fetchall()
        rows = [(f"{schema}.{name}", _count(con, schema, name)) for schema, name in tables]
    finally:
        con.close()
    return pl.DataFrame(rows, schema=["table", "rows"], orient="row")


def _count(con: Any, schema: str, name: str) -> int:
    rows = con.sql(f'select count(*) from "{schema}"."{name}"').fetchall()
    return int(rows[0][0])


def env_rollout(db_path: str, seed: int) -> str:
    """The env's baselines on the market frame the pipeline built (features, sentiment included)."""
    from carry_env import CarryTradeEnv, EnvConfig, MarketData
    from carry_env.demo import always_long_carry, flat, format_table, funding_follower, run_episode
    from carry_pipeline.lib.duckdb_io import read_table
    from carry_pipeline.lib.features.pipeline import build_market_frame

    bars = read_table(db_path, "features.market_bars")
    carry = read_table(db_path, "features.carry_features")
    sentiment = read_table(db_path, "features.sentiment_windows")
    market = MarketData.from_frame(build_market_frame(bars, carry, sentiment))
    config = EnvConfig()
    env = CarryTradeEnv(market, config)
    rows = [
        run_episode(env, funding_follower(), "funding follower", seed),
        run_episode(env, always_long_carry, "always long carry", seed),
        run_episode(env, flat, "flat", seed),
    ]
    days = market.n_bars * market.bar_seconds / 86_400.0
    head = (
        f"env on the pipeline's market frame: {market.n_symbols} symbols, {market.n_bars} bars "
        "after the "
        f"warm-up ({days:.0f} days), {len(env.observation_names)} observations incl. "
        f"{len(market.feature_names)} f_ features per symbol"
    )
    return head + "\n" + format_table(rows, config.initial_cash, days)


def main(argv: list[str] | None = None) -> None:
    """Ingest, build, summarise, roll the env."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=date.fromisoformat, default=date(2024, 1, 1))
    parser.add_argument("--end", type=date.fromisoformat, default=date(2024, 4, 30))
    parser.add_argument("--assets", default="BTC,ETH", help="comma-separated base currencies")
    parser.add_argument("--seed", type=int, default=7, help="seed of the env rollout")
    args = parser.parse_args(argv)
    if "DAGSTER_HOME" not in os.environ:
        raise SystemExit("DAGSTER_HOME is not set: run `make run`, or export it (see the README)")
    os.environ.setdefault("CARRY_ASSETS", args.assets)
    os.environ.setdefault("CARRY_START_DATE", args.start.isoformat())
    from carry_pipeline.definitions import defs
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
        job.execute_in_process(instance=instance, run_config=config, raise_on_error=True)
    db_path = default_database()
    print("3/3 outputs", flush=True)
    with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True):
        print(summarise(db_path))
    print(env_rollout(db_path, args.seed))
    print(
        f'done in {time.perf_counter() - t0:.0f} s; query with: duckdb {db_path} "select * from '
        f'datasets.walk_forward_folds"'
    )


if __name__ == "__main__":
    main()
