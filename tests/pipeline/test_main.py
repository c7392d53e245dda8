"""The main job (`carry_pipeline/defs/jobs.py`) and the `make run` driver (`main.py`)."""

from __future__ import annotations

import dagster as dg
import pytest

from carry_pipeline.definitions import defs
from carry_pipeline.main import (
    QUICKSTART_FEATURES,
    demo_run_config,
    ingest,
    missing_partitions,
    missing_ranges,
    stage_of,
)


def test_quickstart_profile_is_valid_feature_settings() -> None:
    from carry_pipeline.defs.features.resources import FeatureSettings

    settings = FeatureSettings(**QUICKSTART_FEATURES)
    assert settings.n_folds == 3


@pytest.mark.parametrize(
    ("step_key", "stage"),
    [
        ("features__carry_features", "features"),
        ("datasets__training_windows", "datasets"),
        ("models__meta_controller", "models"),
        ("reports__champion_model", "reports"),
        ("walk_forward_backtest", "reports"),  # the multi-asset's step has no key prefix
    ],
)
def test_stage_of_a_retrain_step(step_key: str, stage: str) -> None:
    assert stage_of(step_key) == stage


def test_make_run_uses_the_demo_config_file_quietly() -> None:
    config = demo_run_config()
    assert config["loggers"]["console"]["config"]["log_level"] == "WARNING"
    dg.validate_run_config(defs.resolve_job_def("retrain_job"), config)


def test_ingest_runs_only_missing_partitions(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import date

    monkeypatch.setenv("CARRY_DUCKDB", str(tmp_path / "carry.duckdb"))
    with dg.DagsterInstance.ephemeral() as instance:
        day = date(2024, 1, 3)
        assert ingest(defs, instance, day, day, ["BTC"]) == 1
        key = dg.MultiPartitionKey({"asset": "BTC", "date": "2024-01-03"})
        assert missing_partitions(instance, dg.AssetKey(["raw", "raw_perp_ohlcv"]), [key]) == []
        assert ingest(defs, instance, day, day, ["BTC"]) == 0  # a re-run adds nothing
        # Days 1-2 and 4-5 are missing around day 3: two range runs, not four day runs.
        raw = dg.AssetKey(["raw", "raw_perp_ohlcv"])
        first, last = date(2024, 1, 1), date(2024, 1, 5)
        assert missing_ranges(instance, raw, first, last, "BTC") == [
            (date(2024, 1, 1), date(2024, 1, 2)),
            (date(2024, 1, 4), date(2024, 1, 5)),
        ]
        assert ingest(defs, instance, first, last, ["BTC"]) == 4
        assert len(instance.get_runs()) == 3
        assert missing_ranges(instance, raw, first, last, "BTC") == []
