"""Fixtures of the UI tests: one `dagster dev` per session (`webserver.py`), the main job launched
once through it over GraphQL, and a headless Chromium driven by Selenium.

The main job's run is shared: `test_graphql.py` checks it, and `test_browser.py` opens the
`backtest_report` it materialised; launching it once keeps the two files to one training.

`MAIN_JOB_CONFIG` is `config/demo.yaml` with the smallest window that still runs every stage. The
full demo (ETH, 2024-01-01..04-30, 3 folds, 8,192 timesteps per training) took 440 s in process
on this 2-core machine, 225 s with one fold on 65 days; with 512 timesteps per training and
without the rebuilt real crises it took 96 s. So the run here covers 65 days of ETH (50 days of
feature warm-up for the daily EMA-50, then one fold of 10 train + 1 embargo + 3 test days, and
the latest window), trains every expert and the meta-controller for 512 timesteps, and
stress-tests the synthetic scenarios only.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.pipeline.ui import webserver
from tests.pipeline.ui.webserver import Webserver

GQL_DEPRECATION = pytest.mark.filterwarnings(
    "ignore:Using variable_values and operation_name:DeprecationWarning"
)
"""dagster-graphql 1.13's client calls gql with arguments gql deprecates; not ours to fix."""

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
"""Debian's `chromium` and `chromium-driver` (same version, so they always match)."""
WINDOW_SIZE = "--window-size=1600,1000"
"""Wide enough for the asset pages' side panel and the report dialog."""

READY_TIMEOUT_S = 600.0
"""`dagster dev` loads the code location (torch, SB3) before it answers: 60 s on an idle 2-core
machine, several minutes under load."""
RUN_TIMEOUT_S = 1500.0
"""The main job's run: about 100 s warm; a fresh clone compiles the numba kernels in the run
(410 s for the first expert under a load average of 6)."""

MAIN_JOB = "carry_pipeline_job"
MAIN_JOB_ASSET = "ETH"
MAIN_JOB_DAYS = ("2024-01-01", "2024-03-05")
MAIN_JOB_TAGS = {
    "dagster/asset_partition_range_start": f"{MAIN_JOB_ASSET}|{MAIN_JOB_DAYS[0]}",
    "dagster/asset_partition_range_end": f"{MAIN_JOB_ASSET}|{MAIN_JOB_DAYS[1]}",
}
"""One run over 65 day partitions of ETH (`README.md`, Automation)."""
SMALLEST_WINDOW: dict[str, dict[str, Any]] = {
    "feature_settings": {"train_span": "10d", "test_span": "3d", "n_folds": 1},
    "model_settings": {"timesteps": 512},
    "report_settings": {"real_crises": False},
}
"""What the UI tests change in `config/demo.yaml` (see the module docstring)."""


def main_job_config(data: Path) -> dict[str, Any]:
    """`config/demo.yaml` with `SMALLEST_WINDOW`, every file the run writes under `data`."""
    config = yaml.safe_load((webserver.REPO_ROOT / "config" / "demo.yaml").read_text())
    resources = config.setdefault("resources", {})
    for key, roots in webserver.run_roots(data).items():
        settings = copy.deepcopy(resources.get(key, {}).get("config", {}))
        resources[key] = {"config": {**settings, **SMALLEST_WINDOW.get(key, {}), **roots["config"]}}
    # One process: this test is about launching through GraphQL; the multiprocess executor (the
    # jobs' default) is run by tests/pipeline/test_postgres_instance.py and costs minutes more here.
    config["execution"] = {"config": {"in_process": {}}}
    return dict(config)


@dataclass(frozen=True)
class LaunchedRun:
    """A run launched through the webserver, after it finished."""

    run_id: str
    status: DagsterRunStatus
    seconds: float


FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def wait_for_run(client: DagsterGraphQLClient, run_id: str, timeout_s: float) -> DagsterRunStatus:
    """Poll the run's status over GraphQL until it has finished.

    Raises:
        AssertionError: still not finished after `timeout_s`, naming its last status.
    """
    deadline = time.monotonic() + timeout_s
    status = client.get_run_status(run_id)
    while status not in FINISHED:
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still {status.value} after {timeout_s:.0f} s")
        time.sleep(2.0)
        status = client.get_run_status(run_id)
    return status


STEP_FAILURES = """
query ($runId: ID!) { logsForRun(runId: $runId, limit: 5000) { __typename
  ... on EventConnection { events { __typename
    ... on ExecutionStepFailureEvent { stepKey error { message } }
    ... on RunFailureEvent { message } } } } }
"""


def failure_summary(server: Webserver, run_id: str) -> str:
    """The run's step and run failure messages, read back over GraphQL."""
    data = webserver.graphql(server.url, STEP_FAILURES, {"runId": run_id})
    events = data["logsForRun"].get("events", [])
    lines = [
        f"{e.get('stepKey') or 'run'}: {(e.get('error') or {}).get('message') or e.get('message')}"
        for e in events
        if e["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent")
    ]
    return "\n".join(lines) or "no failure event"


@pytest.fixture(scope="session")
def dagster_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webserver]:
    """`dagster dev` on a free loopback port, its instance and data in a temporary folder; stopped
    (the whole process group) at the end of the session, also when a test or the start fails."""
    root = tmp_path_factory.mktemp("dagster_ui")
    server = webserver.start(root / "dagster_home", root / "data", root / "dagster_dev.log")
    try:
        webserver.wait_until_ready(server, READY_TIMEOUT_S)
        yield server
    finally:
        webserver.stop(server)


@pytest.fixture(scope="session")
def graphql_client(dagster_ui: Webserver) -> DagsterGraphQLClient:
    """dagster-graphql's client on the session's webserver."""
    return DagsterGraphQLClient("127.0.0.1", port_number=dagster_ui.port)


@pytest.fixture(scope="session")
def main_job_run(dagster_ui: Webserver, graphql_client: DagsterGraphQLClient) -> LaunchedRun:
    """`carry_pipeline_job` launched once through the webserver with `main_job_config`, finished."""
    start = time.monotonic()
    run_id = graphql_client.submit_job_execution(
        MAIN_JOB, run_config=main_job_config(dagster_ui.data), tags=MAIN_JOB_TAGS
    )
    status = wait_for_run(graphql_client, run_id, RUN_TIMEOUT_S)
    return LaunchedRun(run_id, status, time.monotonic() - start)


@pytest.fixture(scope="session")
def succeeded_main_job(dagster_ui: Webserver, main_job_run: LaunchedRun) -> LaunchedRun:
    """`main_job_run`, required to have succeeded (the browser test reads what it wrote)."""
    if main_job_run.status != DagsterRunStatus.SUCCESS:
        pytest.fail(
            f"{MAIN_JOB} run {main_job_run.run_id} ended {main_job_run.status.value}:\n"
            f"{failure_summary(dagster_ui, main_job_run.run_id)}"
        )
    return main_job_run


def _missing_browser() -> str | None:
    # Why the browser cannot start here, or None.
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    if not missing:
        return None
    return f"{' and '.join(missing)} not found: apt-get install -y chromium chromium-driver"


@pytest.fixture(scope="session")
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium (Debian's, with its matching chromedriver; Selenium downloads nothing).

    Skipped with the reason when Chromium is absent, except under CI (`CI` set), where `.ci/run`
    installs it and its absence is a failure."""
    reason = _missing_browser()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", WINDOW_SIZE):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
