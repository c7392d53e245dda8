"""`weekly_retrain_schedule`: `retrain_job` every Monday at 03:00 UTC, when new raw data arrived.

A tick requests a retrain only when a raw table (spot, perp or funding) has been materialised
since the last `reports/champion_model` materialisation (the end of the last retrain, promoted or
not); otherwise it skips with a `SkipReason` that says when each was last written, so a week with
nothing ingested spends no training time and leaves the champion as it is. The run config comes
from the YAML file named by `CARRY_RETRAIN_CONFIG` (e.g. `config/demo.yaml`), else the code
location's defaults.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from carry_pipeline.defs.jobs import retrain_job

RAW_KEYS = tuple(
    dg.AssetKey(["raw", name]) for name in ("raw_spot_ohlcv", "raw_perp_ohlcv", "raw_funding_rates")
)
CHAMPION_KEY = dg.AssetKey(["reports", "champion_model"])


def last_materialised(instance: dg.DagsterInstance, key: dg.AssetKey) -> float | None:
    """Timestamp (s since epoch) of the newest materialisation of `key`, any partition; None if
    never."""
    event = instance.get_latest_materialization_event(key)
    return event.timestamp if event is not None else None


def skip_reason(instance: dg.DagsterInstance) -> str | None:
    """Why a retrain would find nothing new (no raw data yet, or none since the last champion
    decision); None when there is something to retrain on."""
    raw = [t for t in (last_materialised(instance, k) for k in RAW_KEYS) if t is not None]
    if not raw:
        return "no raw partition has been ingested yet: run ingest_job (or make run) first"
    decided = last_materialised(instance, CHAMPION_KEY)
    if decided is not None and max(raw) <= decided:
        return (
            f"no raw partition materialised since the last retrain (raw last written "
            f"{_iso(max(raw))}, champion decided {_iso(decided)}); the champion stays"
        )
    return None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def retrain_run_config(path: str | None = None) -> dict[str, Any]:
    """The run config of a scheduled retrain: the YAML file `path` (default
    `CARRY_RETRAIN_CONFIG`), or `{}` (the code location's defaults) when neither is set."""
    path = path or os.environ.get("CARRY_RETRAIN_CONFIG")
    return yaml.safe_load(Path(path).read_text()) or {} if path else {}


@dg.schedule(
    job=retrain_job,
    cron_schedule="0 3 * * 1",
    execution_timezone="UTC",
    name="weekly_retrain_schedule",
    description="Every Monday at 03:00 UTC: retrain from the raw data ingested so far, skipped "
    "when no raw partition arrived since the last retrain.",
)
def weekly_retrain_schedule(
    context: dg.ScheduleEvaluationContext,
) -> dg.RunRequest | dg.SkipReason:
    """One `retrain_job` run per week with new raw data (module docstring)."""
    reason = skip_reason(context.instance)
    if reason is not None:
        return dg.SkipReason(reason)
    week = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return dg.RunRequest(run_key=f"retrain-{week}", run_config=retrain_run_config())
