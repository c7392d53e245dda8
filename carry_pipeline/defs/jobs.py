"""The two jobs over the whole graph: `carry_pipeline_job` (raw data to champion) and
`retrain_job` (features onward, over the raw partitions ingested so far).

The raw assets are partitioned by day x asset; everything after them is unpartitioned and is
rebuilt over every ingested partition (the aligned bars, features and sentiment windows, the
walk-forward folds, their normalisation statistics and the training windows, the four experts and
the meta-controller per fold, the out-of-sample backtests, stress tests, the report and the
champion promotion).

- `carry_pipeline_job` selects every stage. It is partitioned like the raw assets, so a run
  names the raw partitions it fetches: a range of days of one asset through the
  `dagster/asset_partition_range_start` / `_end` tags (the DuckDB IO manager writes one asset's
  range per run), then rebuilds every later stage over all ingested partitions.
- `retrain_job` selects the stages after ingestion (unpartitioned): what the weekly schedule and
  `make run` launch once the raw partitions are in.

Both run on Dagster's default executor, `multi_or_in_process_executor`: a launched run (the UI,
`dagster job execute`, the schedule) is multiprocess, each step a process, so independent steps
(the four experts of a fold) run side by side up to `max_concurrent` (default: the CPU count) and
every DuckDB access is serialised by the file's lock (`lib/duckdb_lock.py`). Run config
`execution: {config: {in_process: {}}}` keeps a run in one process; `make run` executes in process
(`execute_in_process`).
"""

from __future__ import annotations

import dagster as dg

from carry_pipeline.defs.ingestion.partitions import ingest_partitions

RETRAIN_GROUPS = ("features", "datasets", "models", "reports")
MAIN_JOB_GROUPS = ("ingestion", *RETRAIN_GROUPS)

carry_pipeline_job = dg.define_asset_job(
    "carry_pipeline_job",
    selection=dg.AssetSelection.groups(*MAIN_JOB_GROUPS),
    partitions_def=ingest_partitions,
    executor_def=dg.multi_or_in_process_executor,
    description="Fetch a range of days of one asset into the raw tables, then rebuild features, "
    "datasets, models and reports over every ingested partition; promote a new champion when "
    "the rule passes.",
)

retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=dg.AssetSelection.groups(*RETRAIN_GROUPS),
    executor_def=dg.multi_or_in_process_executor,
    description="Rebuild features, datasets, models and reports from the raw partitions ingested "
    "so far; promote a new champion when the rule passes.",
)
