"""`champion_model_sensor`: a new `reports/champion_model` materialisation -> a paper session.

Each materialisation with a champion id not launched before requests one `paper_trading_job` run
whose `run_key` is `champion-<id>`, so a re-evaluation that keeps the same champion launches
nothing (Dagster drops a repeated run key) and the cursor skips events already seen. The champion
id comes from the materialisation's `champion_id` metadata, else from `models.champion`.

The previous champion's session keeps running beside the new one: each session has its own
ledger rows (`session_id` `champion-<id>`) and its own paper account, so comparing the old and
new champion on the same live bars is free, and stopping a paper account needs no flatten (no
real position exists). A person stops it (terminate the run) or flattens it with the flag file.
"""

from __future__ import annotations

import dagster as dg

from carry_pipeline.defs.trading.jobs import champion_model_path, paper_trading_job
from carry_pipeline.lib.duckdb_io import default_database

CHAMPION_KEY = dg.AssetKey(["reports", "champion_model"])


@dg.asset_sensor(asset_key=CHAMPION_KEY, job=paper_trading_job)
def champion_model_sensor(
    context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry
) -> dg.RunRequest | dg.SkipReason:
    """Request a paper session of the newly materialised champion."""
    mat = asset_event.asset_materialization
    meta = mat.metadata if mat is not None else {}
    champion = meta.get("champion_id")
    champion_id = str(champion.value) if champion is not None else None
    if champion_id is None:
        champion_id = champion_model_path(default_database())[0]
    session_id = f"champion-{champion_id}"
    return dg.RunRequest(
        run_key=session_id,
        run_config={
            "ops": {
                "paper_session": {
                    "config": {
                        "session_id": session_id,
                        "policy": "champion",
                        "champion_id": champion_id,
                    }
                }
            }
        },
        tags={"carry/champion_id": champion_id},
    )
