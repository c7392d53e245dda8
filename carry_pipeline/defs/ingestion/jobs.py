"""`ingest_job` (all raw assets and their checks) and its daily schedule.

A run covers one day x asset partition (the schedule) or a range of days of one asset (a backfill,
via `BackfillPolicy.single_run()` or the `dagster/asset_partition_range_start`/`_end` tags).
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from carry_pipeline.defs.ingestion.partitions import asset_partitions, ingest_partitions

# In-process: ingestion is I/O bound and DuckDB takes one writer at a time, so parallel processes
# would only queue on the file lock.
ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingestion"),
    partitions_def=ingest_partitions,
    executor_def=dg.in_process_executor,
    description="Fetch a day x asset partition (or a range of days of one asset) of every raw "
    "table into DuckDB schema raw.",
)


@dg.schedule(
    job=ingest_job,
    cron_schedule="30 0 * * *",
    execution_timezone="UTC",
    name="ingest_schedule",
    description="Every day at 00:30 UTC: yesterday's partition for every asset.",
)
def ingest_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    """One run request per asset for the day that ended before the tick."""
    day = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
    return [
        dg.RunRequest(
            run_key=f"{asset}|{day}",
            partition_key=dg.MultiPartitionKey({"asset": asset, "date": day}),
        )
        for asset in asset_partitions.get_partition_keys()
    ]
