"""The jobs (`defs/jobs.py`), the weekly retrain schedule (`defs/schedules.py`), the daily ingest
schedule, the demo config file and the freshness policies the definitions declare."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.freshness import TimeWindowFreshnessPolicy

from carry_pipeline.definitions import defs
from carry_pipeline.defs.schedules import RAW_KEYS, retrain_run_config

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "demo.yaml"
MONDAY = datetime(2024, 5, 6, 3, 0, tzinfo=UTC)


def _keys(job_name: str) -> set[str]:
    job = defs.resolve_job_def(job_name)
    return {key.to_user_string() for key in job.asset_layer.executable_asset_keys}


def test_main_job_runs_raw_data_to_champion() -> None:
    keys = _keys("carry_pipeline_job")
    assert {"raw/raw_perp_ohlcv", "raw/raw_funding_rates", "features/carry_features"} <= keys
    assert {"models/meta_controller", "reports/champion_model"} <= keys


def test_retrain_job_starts_at_features() -> None:
    keys = _keys("retrain_job")
    assert {"features/market_bars", "datasets/training_windows", "reports/champion_model"} <= keys
    assert not any(k.startswith("raw/") for k in keys)  # over the data ingested so far


@pytest.mark.parametrize("job_name", ["carry_pipeline_job", "retrain_job"])
def test_demo_config_validates_against_the_job(job_name: str) -> None:
    config = yaml.safe_load(DEMO.read_text())
    result = dg.validate_run_config(defs.resolve_job_def(job_name), config)
    assert result["resources"]["feature_settings"]["config"]["n_folds"] == 3


def test_a_bad_demo_config_is_refused() -> None:
    config = {"resources": {"model_settings": {"config": {"profile": "huge"}}}}
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.validate_run_config(defs.resolve_job_def("retrain_job"), config)


def _tick(name: str, instance: dg.DagsterInstance, when: datetime) -> Any:
    repo = defs.get_repository_def()
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=when, repository_def=repo
    )
    schedule = repo.get_schedule_def(name)
    return schedule.evaluate_tick(context)


def test_ingest_schedule_requests_yesterday_for_every_asset() -> None:
    with dg.instance_for_test() as instance:
        data = _tick("ingest_schedule", instance, datetime(2024, 3, 2, 0, 30, tzinfo=UTC))
    requests = data.run_requests
    assert {r.partition_key for r in requests} == {"BTC|2024-03-01", "ETH|2024-03-01"}
    job = defs.resolve_job_def("ingest_job")
    for r in requests:
        dg.validate_run_config(job, r.run_config)


def _materialise(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=partition))


def test_weekly_retrain_skips_until_raw_data_arrives_and_after_a_retrain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CARRY_RETRAIN_CONFIG", raising=False)
    schedule = defs.get_repository_def().get_schedule_def("weekly_retrain_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 3 * * 1", "UTC")
    with dg.instance_for_test() as instance:
        # Nothing ingested: skip, naming what to run.
        data = _tick("weekly_retrain_schedule", instance, MONDAY)
        assert not data.run_requests and "ingest_job" in data.skip_message
        # A raw partition arrived: one retrain, its config valid for retrain_job.
        _materialise(instance, RAW_KEYS[1], "BTC|2024-05-05")
        [request] = _tick("weekly_retrain_schedule", instance, MONDAY).run_requests
        assert request.run_key == "retrain-2024-05-06"
        dg.validate_run_config(defs.resolve_job_def("retrain_job"), request.run_config)
        # The retrain decided the champion; nothing new since: the next Monday skips.
        _materialise(instance, dg.AssetKey(["reports", "champion_model"]), None)
        data = _tick("weekly_retrain_schedule", instance, MONDAY)
        assert not data.run_requests
        assert "no raw partition materialised since the last retrain" in data.skip_message


def test_weekly_retrain_takes_its_config_from_carry_retrain_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CARRY_RETRAIN_CONFIG", str(DEMO))
    assert retrain_run_config() == yaml.safe_load(DEMO.read_text())
    with dg.instance_for_test() as instance:
        _materialise(instance, RAW_KEYS[0], "ETH|2024-05-05")
        [request] = _tick("weekly_retrain_schedule", instance, MONDAY).run_requests
    config = dg.validate_run_config(defs.resolve_job_def("retrain_job"), request.run_config)
    assert config["resources"]["feature_settings"]["config"]["train_span"] == "30d"


def test_raw_assets_and_champion_declare_freshness() -> None:
    graph = defs.resolve_asset_graph()
    names = ["raw_spot_ohlcv", "raw_perp_ohlcv", "raw_funding_rates", "raw_order_book"]
    for key in [dg.AssetKey(["raw", n]) for n in names]:
        policy = graph.get(key).freshness_policy
        assert isinstance(policy, TimeWindowFreshnessPolicy), key
        assert policy.fail_window.to_timedelta().total_seconds() == 49 * 3600
    champion = graph.get(dg.AssetKey(["reports", "champion_model"])).freshness_policy
    assert isinstance(champion, TimeWindowFreshnessPolicy)
    assert champion.warn_window is not None and champion.warn_window.to_timedelta().days == 7
