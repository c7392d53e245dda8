"""README claims about the Dagster instance and partitions: `dagster.yaml`'s run and pool limits,
and `CARRY_START_DATE` setting the first daily partition."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_dagster_yaml_limits_runs_and_pools() -> None:
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    runs = config["concurrency"]["runs"]
    # Two concurrent runs (two cores, one DuckDB writer), backfills capped at two as well.
    assert runs["max_concurrent_runs"] == 2
    assert runs["tag_concurrency_limits"] == [{"key": "dagster/backfill", "limit": 2}]
    # One exchange call in flight: the pool `exchange_api` has no explicit limit, so the default
    # of 1 applies, counted per op.
    pools = config["concurrency"]["pools"]
    assert pools == {"default_limit": 1, "granularity": "op"}
    assert config["telemetry"] == {"enabled": False}


def test_the_ingestion_assets_share_the_exchange_api_pool() -> None:
    from carry_pipeline.defs.ingestion import assets as ingestion

    raw = [ingestion.raw_spot_ohlcv, ingestion.raw_perp_ohlcv, ingestion.raw_funding_rates]
    pools = {spec.pool for asset in raw for spec in [asset.op]}
    assert pools == {"exchange_api"}


def test_carry_start_date_sets_the_first_partition() -> None:
    code = (
        "from carry_pipeline.defs.ingestion.partitions import date_partitions as d;"
        "print(d.get_first_partition_key())"
    )
    env = {**os.environ, "CARRY_START_DATE": "2024-03-05"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "2024-03-05"
