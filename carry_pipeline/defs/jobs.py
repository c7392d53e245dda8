"""`carry_pipeline_job`: the main job, from the raw tables to everything built on them.

The raw assets are partitioned by day x asset and are filled by `ingest_job` runs (the daily
schedule, a backfill, or `python -m carry_pipeline.main`); this job then rebuilds every
unpartitioned stage over all ingested partitions: the aligned bars, features and sentiment windows,
the walk-forward folds, their normalisation statistics and the training windows, then the four
experts and the meta-controller per fold (`models`, demo profile by default), then the
out-of-sample backtests, stress tests, the report and the champion promotion (`reports`).
"""

from __future__ import annotations

import dagster as dg

MAIN_JOB_GROUPS = ("features", "datasets", "models", "reports")

carry_pipeline_job = dg.define_asset_job(
    "carry_pipeline_job",
    selection=dg.AssetSelection.groups(*MAIN_JOB_GROUPS),
    executor_def=dg.in_process_executor,
    description="Rebuild features, datasets, models (demo profile) and reports from the raw "
    "tables; promote a new champion when the rule passes.",
)
