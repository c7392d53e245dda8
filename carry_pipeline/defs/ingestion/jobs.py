"""`ingest_job` (all raw assets and their checks, one partition per run) and its daily schedule."""

from __future__ import annotations

import dagster as dg

from carry_pipeline.defs.ingestion.partitions import ingest_partitions

# In-process: ingestion is I/O bound and DuckDB takes one writer at a time, so parallel processes
# would only queue on the file lock.
ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingestion"),
    partitions_def=ingest_partitions,
    executor_def=dg.in_process_executor,
    description="Fetch one day x asset partition of every raw table into DuckDB schema raw.",
)

# Every day at 00:30 UTC: yesterday's partition for every asset.
ingest_schedule = dg.build_schedule_from_partitioned_job(
    ingest_job, hour_of_day=0, minute_of_hour=30, name="ingest_schedule"
)
