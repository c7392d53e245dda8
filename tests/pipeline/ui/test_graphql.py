"""`carry_pipeline_job` launched with dagster-graphql's client through a running `dagster dev`
(`conftest.py`), as a script or a CI box would: it must succeed and materialise every asset of the
job, the raw tables for each day partition it names and the `champion_model` decision.

The run config is `config/demo.yaml` with the smallest window that still runs every stage
(`conftest.SMALLEST_WINDOW`: 65 days of ETH, one fold, 512 timesteps per training, synthetic stress
scenarios only), because the full demo takes about 7 minutes on 2 cores; see `conftest.py` for the
figures.
"""

from __future__ import annotations

from datetime import date, timedelta

import duckdb
import pytest
from dagster import DagsterRunStatus

from tests.pipeline.ui import webserver
from tests.pipeline.ui.conftest import (
    GQL_DEPRECATION,
    MAIN_JOB,
    MAIN_JOB_ASSET,
    MAIN_JOB_DAYS,
    MAIN_JOB_TAGS,
    LaunchedRun,
    failure_summary,
)
from tests.pipeline.ui.webserver import Webserver

pytestmark = [pytest.mark.slow, GQL_DEPRECATION]

RUN = """
query ($runId: ID!) { runOrError(runId: $runId) { __typename
  ... on Run { jobName tags { key value }
    assetMaterializations { assetKey { path } partition } } } }
"""
JOB_ASSETS = "{ assetNodes { assetKey { path } jobNames } }"


def _key(path: list[str]) -> str:
    return "/".join(path)


def _job_assets(server: Webserver) -> set[str]:
    # Every asset the served definitions put in the main job.
    nodes = webserver.graphql(server.url, JOB_ASSETS)["assetNodes"]
    return {_key(n["assetKey"]["path"]) for n in nodes if MAIN_JOB in n["jobNames"]}


def _days() -> list[str]:
    first, last = (date.fromisoformat(d) for d in MAIN_JOB_DAYS)
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def test_main_job_succeeds_through_the_webserver(
    dagster_ui: Webserver, main_job_run: LaunchedRun
) -> None:
    assert main_job_run.status == DagsterRunStatus.SUCCESS, failure_summary(
        dagster_ui, main_job_run.run_id
    )
    run = webserver.graphql(dagster_ui.url, RUN, {"runId": main_job_run.run_id})["runOrError"]
    assert run["jobName"] == MAIN_JOB
    assert MAIN_JOB_TAGS.items() <= {(t["key"], t["value"]) for t in run["tags"]}

    materialised = {_key(m["assetKey"]["path"]) for m in run["assetMaterializations"]}
    assert "reports/champion_model" in materialised
    job_assets = _job_assets(dagster_ui)
    assert {"raw/raw_perp_ohlcv", "models/meta_controller"} <= job_assets
    assert materialised == job_assets, f"not materialised: {sorted(job_assets - materialised)}"

    # One materialisation per raw table and day partition of the range, none outside it.
    raw = {
        (_key(m["assetKey"]["path"]), m["partition"])
        for m in run["assetMaterializations"]
        if m["assetKey"]["path"][0] == "raw"
    }
    tables = {key for key in job_assets if key.startswith("raw/")}
    assert raw == {(t, f"{MAIN_JOB_ASSET}|{d}") for t in tables for d in _days()}


def test_main_job_writes_only_under_the_temporary_data_folder(
    dagster_ui: Webserver, main_job_run: LaunchedRun
) -> None:
    # The run's outputs are in the session's folder (CARRY_DUCKDB and the run config's roots):
    # a run that wrote to the repository's data/ would leave these empty.
    assert main_job_run.status == DagsterRunStatus.SUCCESS
    assert (dagster_ui.data / "reports" / main_job_run.run_id / "report.md").is_file()
    assert any((dagster_ui.data / "models").rglob("*.zip"))
    with duckdb.connect(str(dagster_ui.data / "carry.duckdb"), read_only=True) as con:
        symbols = con.execute("select distinct symbol from features.market_bars").fetchall()
        folds = con.execute("select count(distinct fold) from reports.backtest_metrics").fetchall()
    assert symbols == [(f"{MAIN_JOB_ASSET}/USDT:USDT",)]
    assert folds[0][0] >= 1
