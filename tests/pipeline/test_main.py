"""The main job (`carry_pipeline/defs/jobs.py`) and the `make run` driver (`main.py`)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dagster as dg
import pytest

import carry_pipeline
from carry_pipeline import definitions
from carry_pipeline.definitions import defs
from carry_pipeline.main import (
    QUICKSTART_FEATURES,
    StageProgress,
    demo_run_config,
    ingest,
    missing_partitions,
    missing_ranges,
    paper_session_id,
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


def _data_files() -> dict[str, tuple[int, int]]:
    # (size, mtime) of every file under the repository's data/ folder.
    root = Path(carry_pipeline.__file__).resolve().parents[1] / "data"
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()
    }


def test_ingest_runs_only_missing_partitions(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import date

    import duckdb

    # The module's `defs` bound its resources to the DuckDB file when it was imported; definitions
    # loaded after the variable is set write to the temporary file instead of data/carry.duckdb.
    database = tmp_path / "carry.duckdb"
    monkeypatch.setenv("CARRY_DUCKDB", str(database))
    local = dg.load_from_defs_folder(path_within_project=Path(definitions.__file__).parent)
    before = _data_files()
    with dg.DagsterInstance.ephemeral() as instance:
        day = date(2024, 1, 3)
        assert ingest(local, instance, day, day, ["BTC"]) == 1
        key = dg.MultiPartitionKey({"asset": "BTC", "date": "2024-01-03"})
        assert missing_partitions(instance, dg.AssetKey(["raw", "raw_perp_ohlcv"]), [key]) == []
        assert ingest(local, instance, day, day, ["BTC"]) == 0  # a re-run adds nothing
        # Days 1-2 and 4-5 are missing around day 3: two range runs, not four day runs.
        raw = dg.AssetKey(["raw", "raw_perp_ohlcv"])
        first, last = date(2024, 1, 1), date(2024, 1, 5)
        assert missing_ranges(instance, raw, first, last, "BTC") == [
            (date(2024, 1, 1), date(2024, 1, 2)),
            (date(2024, 1, 4), date(2024, 1, 5)),
        ]
        assert ingest(local, instance, first, last, ["BTC"]) == 4
        assert len(instance.get_runs()) == 3
        assert missing_ranges(instance, raw, first, last, "BTC") == []
    with duckdb.connect(str(database), read_only=True) as con:
        days = con.sql("select count(distinct ts::date) from raw.raw_perp_ohlcv").fetchall()[0][0]
    assert days == 5
    assert _data_files() == before  # nothing under data/ was written or created


def _entry(kind: str, step_key: str | None, at: float) -> Any:
    event = SimpleNamespace(event_type_value=kind)
    return SimpleNamespace(dagster_event=event, step_key=step_key, timestamp=at)


def test_stage_progress_prints_stage_starts_step_ends_and_stage_ends() -> None:
    lines: list[str] = []
    progress = StageProgress(lambda line, flush=False: lines.append(line))
    for kind, step, at in [
        ("STEP_START", "features__market_bars", 0.0),
        ("STEP_SUCCESS", "features__market_bars", 2.0),
        ("STEP_START", "models__anomaly_expert", 3.0),
        ("STEP_FAILURE", "models__anomaly_expert", 10.5),
        (dg.DagsterEventType.RUN_FAILURE.value, None, 11.0),
    ]:
        progress(_entry(kind, step, at))
    assert lines == [
        "    [features] started",
        "    [features] features__market_bars done in 2.0 s",
        "    [features] ended (3 s)",  # closed when the next stage's first step starts
        "    [models] started",
        "    [models] models__anomaly_expert FAILED after 7.5 s",
        "    [models] ended (8 s)",
    ]


def test_stage_progress_hears_a_real_run_as_it_happens() -> None:
    import uuid

    @dg.asset(key_prefix="features")
    def bars() -> int:
        return 1

    @dg.asset(key_prefix="datasets", deps=[bars])
    def folds() -> int:
        return 2

    job = dg.Definitions(
        assets=[bars, folds],
        jobs=[dg.define_asset_job("toy_job")],
        resources={"io_manager": dg.InMemoryIOManager()},
    ).resolve_job_def("toy_job")
    lines: list[str] = []
    with dg.DagsterInstance.ephemeral() as instance:
        run_id = str(uuid.uuid4())
        instance.add_event_listener(run_id, StageProgress(lambda s, flush=False: lines.append(s)))
        assert job.execute_in_process(instance=instance, run_id=run_id).success
    assert [line.split(" (")[0].split(" done in")[0] for line in lines] == [
        "    [features] started",
        "    [features] features__bars",
        "    [features] ended",
        "    [datasets] started",
        "    [datasets] datasets__folds",
        "    [datasets] ended",
    ]


def test_each_make_run_gets_a_fresh_paper_session_id() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    first = datetime(2026, 12, 2, 9, 30, 5, tzinfo=UTC)
    assert paper_session_id("champion-r1:meta_controller", first) == (
        "champion-r1:meta_controller-run-20261202T093005Z"
    )
    # A re-run a second later keeping the same champion: another session, not a resume.
    later = paper_session_id("champion-r1:meta_controller", first + timedelta(seconds=1))
    assert later != paper_session_id("champion-r1:meta_controller", first)
    # The same instant in another zone names the same session.
    cet = first.astimezone(timezone(timedelta(hours=1)))
    assert paper_session_id("demo-funding-rule", cet) == "demo-funding-rule-run-20261202T093005Z"
