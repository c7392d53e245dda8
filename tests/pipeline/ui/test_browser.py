"""The Dagster web UI in headless Chromium, used as a person would: the asset graph with every
group and asset of the served definitions, the jobs, schedules and sensor, a materialisation
launched with the Materialize button and followed to success, and the `backtest_report`
materialisation's plots rendered as images.

What the pages must show is read from the same server's GraphQL API (the served definitions), plus
the names the README promises, so a group, asset, job or automation that the UI drops fails here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Literal, TypeVar, cast

import pytest
from dagster import DagsterRunStatus
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.pipeline.ui import webserver
from tests.pipeline.ui.conftest import GQL_DEPRECATION, RUN_TIMEOUT_S, LaunchedRun
from tests.pipeline.ui.webserver import LOCATION, Webserver

pytestmark = [pytest.mark.slow, GQL_DEPRECATION]

PAGE_TIMEOUT_S = 120.0
"""A page of the UI renders in about 10 s on a loaded 2-core machine."""
GROUPS = {"ingestion", "features", "datasets", "models", "reports"}
"""The stage groups of the README's asset graph (paper trading is a job, not assets)."""
JOBS = {"carry_pipeline_job", "retrain_job", "ingest_job", "paper_trading_job"}
AUTOMATIONS = {"ingest_schedule", "weekly_retrain_schedule", "champion_model_sensor"}
CHEAP_ASSET = "features/market_bars"
"""Materialised from the UI: it reads the raw tables the main job's run ingested and writes only
the session's DuckDB file (no model or report folder)."""

ASSETS = "{ assetNodes { assetKey { path } groupName } }"
AUTOMATION = """
{ repositoriesOrError { ... on RepositoryConnection { nodes { location { name }
  jobs { name } schedules { name } sensors { name } } } } }
"""
RUN = """
query ($runId: ID!) { runOrError(runId: $runId) { __typename
  ... on Run { status assetMaterializations { assetKey { path } } } } }
"""
LATEST_REPORT = """
{ assetOrError(assetKey: {path: ["reports", "backtest_report"]}) { ... on Asset {
  assetMaterializations(limit: 1) { runId metadataEntries { label
    ... on IntMetadataEntry { intValue } } } } } }
"""

T = TypeVar("T")


def _wait(
    driver: webdriver.Chrome,
    what: str,
    until: Callable[[webdriver.Chrome], T | None | Literal[False]],
) -> T:
    # Wait until `until` returns something truthy, and return it (React re-renders replace
    # elements: a stale one is retried).
    wait = WebDriverWait(
        driver, PAGE_TIMEOUT_S, ignored_exceptions=(StaleElementReferenceException,)
    )
    try:
        return cast(T, wait.until(until))
    except TimeoutException as err:
        raise AssertionError(
            f"{driver.current_url}: {what} not there after {PAGE_TIMEOUT_S:.0f} s"
        ) from err


def open_page(driver: webdriver.Chrome, server: Webserver, path: str) -> None:
    """Load `path` of the UI."""
    driver.get(f"{server.url}{path}")


def wait_for_texts(driver: webdriver.Chrome, texts: set[str]) -> None:
    """Wait until the page shows every string of `texts` as the whole text of some element."""

    def missing(d: webdriver.Chrome) -> set[str]:
        shown = set(d.find_element(By.TAG_NAME, "body").text.split("\n"))
        return texts - shown

    try:
        _wait(driver, "texts", lambda d: not missing(d))
    except AssertionError as err:
        raise AssertionError(f"{err}: missing {sorted(missing(driver))}") from None


def click(driver: webdriver.Chrome, what: str, xpath: str) -> None:
    """Click the element at `xpath` once it is clickable."""
    element: WebElement = _wait(driver, what, ec.element_to_be_clickable((By.XPATH, xpath)))
    element.click()


def _asset_groups(server: Webserver) -> dict[str, set[str]]:
    # Group name -> asset keys as the UI writes them ("raw / raw_perp_ohlcv").
    groups: dict[str, set[str]] = {}
    for node in webserver.graphql(server.url, ASSETS)["assetNodes"]:
        groups.setdefault(node["groupName"], set()).add(" / ".join(node["assetKey"]["path"]))
    return groups


def test_asset_graph_shows_every_group_and_its_assets(
    browser: webdriver.Chrome, dagster_ui: Webserver
) -> None:
    groups = _asset_groups(dagster_ui)
    assert set(groups) == GROUPS
    assert {"raw / raw_perp_ohlcv", "reports / backtest_report"} <= set().union(*groups.values())
    open_page(browser, dagster_ui, "/asset-groups")
    wait_for_texts(browser, {"Global asset lineage", *GROUPS})
    for group, keys in sorted(groups.items()):
        open_page(browser, dagster_ui, f"/locations/{LOCATION}/asset-groups/{group}/list")
        wait_for_texts(browser, keys)


def test_jobs_schedules_and_sensor_are_listed(
    browser: webdriver.Chrome, dagster_ui: Webserver
) -> None:
    [repo] = webserver.graphql(dagster_ui.url, AUTOMATION)["repositoriesOrError"]["nodes"]
    jobs = {j["name"] for j in repo["jobs"]} - {"__ASSET_JOB"}
    automations = {s["name"] for s in repo["schedules"] + repo["sensors"]}
    assert jobs >= JOBS
    assert automations >= AUTOMATIONS
    open_page(browser, dagster_ui, "/jobs")
    wait_for_texts(browser, jobs)
    open_page(browser, dagster_ui, "/automation")
    wait_for_texts(browser, automations)


def _run_id_from_toast(browser: webdriver.Chrome) -> str:
    # The toast says "Launched run d703de79" (the id's first 8 characters) and links to the run.
    def launched(d: webdriver.Chrome) -> str | None:
        toast = re.search(r"Launched run ([0-9a-f]{8})\b", d.find_element(By.TAG_NAME, "body").text)
        if toast is None:
            return None
        for link in d.find_elements(By.XPATH, f"//a[contains(@href, '/runs/{toast.group(1)}')]"):
            run = re.search(r"/runs/([0-9a-f-]{36})", link.get_attribute("href") or "")
            if run:
                return run.group(1)
        return None

    return _wait(browser, "the 'Launched run' toast and its link", launched)


def _wait_for_run_title(browser: webdriver.Chrome, run_id: str) -> str:
    # The run page's title ends with the status in brackets: "Runs | d703de79 [SUCCESS]".
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        match = re.search(r"\[([A-Z_]+)\]$", browser.title)
        if match and match.group(1) in {"SUCCESS", "FAILURE", "CANCELED"}:
            return match.group(1)
        time.sleep(2.0)
    raise AssertionError(f"run {run_id}: page title still {browser.title!r}")


def test_materialize_button_runs_an_asset_to_success(
    browser: webdriver.Chrome, dagster_ui: Webserver, succeeded_main_job: LaunchedRun
) -> None:
    prefix, name = CHEAP_ASSET.split("/")
    open_page(browser, dagster_ui, f"/assets/{CHEAP_ASSET}")
    wait_for_texts(browser, {prefix, name})
    click(browser, "the Materialize button", "//button[normalize-space(.)='Materialize']")
    run_id = _run_id_from_toast(browser)
    assert run_id != succeeded_main_job.run_id

    open_page(browser, dagster_ui, f"/runs/{run_id}")
    assert _wait_for_run_title(browser, run_id) == "SUCCESS"
    wait_for_texts(browser, {"Success"})
    run = webserver.graphql(dagster_ui.url, RUN, {"runId": run_id})["runOrError"]
    assert run["status"] == DagsterRunStatus.SUCCESS.value
    assert [m["assetKey"]["path"] for m in run["assetMaterializations"]] == [[prefix, name]]


def _latest_report(server: Webserver) -> tuple[str, int]:
    # The run id and the `images` count of backtest_report's latest materialisation.
    asset = webserver.graphql(server.url, LATEST_REPORT)["assetOrError"]
    [mat] = asset["assetMaterializations"]
    [images] = [e["intValue"] for e in mat["metadataEntries"] if e["label"] == "images"]
    return mat["runId"], int(images)


def test_backtest_report_plots_render(
    browser: webdriver.Chrome, dagster_ui: Webserver, succeeded_main_job: LaunchedRun
) -> None:
    run_id, count = _latest_report(dagster_ui)
    assert run_id == succeeded_main_job.run_id
    pngs = {p.stem for p in (dagster_ui.data / "reports" / run_id).glob("*.png")}
    assert count == len(pngs) > 0

    open_page(browser, dagster_ui, "/assets/reports/backtest_report")
    wait_for_texts(browser, {"plots", "images"})
    click(
        browser,
        "the plots metadata's [Show Markdown] link",
        "//tr[td[normalize-space(.)='plots']]//*[normalize-space(text())='[Show Markdown]']",
    )
    dialog = _wait(
        browser,
        "the plots dialog",
        ec.visibility_of_element_located((By.CSS_SELECTOR, "[role=dialog]")),
    )

    def all_images(_: webdriver.Chrome) -> list[WebElement] | None:
        found = dialog.find_elements(By.TAG_NAME, "img")
        return found if len(found) >= count else None

    images = _wait(browser, f"{count} images in the plots dialog", all_images)
    rendered = {
        img.get_attribute("alt"): browser.execute_script(
            "const i = arguments[0]; return [i.complete, i.naturalWidth, i.naturalHeight];", img
        )
        for img in images
    }
    assert set(rendered) == pngs
    not_drawn = {alt: size for alt, size in rendered.items() if not (size[0] and min(size[1:]) > 0)}
    assert not not_drawn, f"images not decoded (complete, width, height): {not_drawn}"
    for img in images:
        assert (img.get_attribute("src") or "").startswith("data:image/png;base64,")
