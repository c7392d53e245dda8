"""The four experts of one fold under Dagster's multiprocess executor on a real (temporary)
instance: every step succeeds, the trainings overlap in time (read from the run's event log), and
`models.registry` holds every row, none lost to a concurrent write."""

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from carry_pipeline.defs.models.assets import UPSTREAM
from carry_pipeline.defs.models.resources import ModelSettings
from carry_pipeline.lib.duckdb_io import CarryDuckDBIOManager, CarryDuckDBResource
from tests.pipeline.models.test_model_assets import EXPERTS, TINY, _upstream_tables

TIMESTEPS = 512
"""Long enough that each training lasts seconds, so serial steps could not look concurrent."""
FORKSERVER = {"forkserver": {"preload_modules": ["dagster", "carry_pipeline.defs.models.assets"]}}
"""Step processes forked from one that imported torch, SB3 and the assets once (as in
`config/multiprocess.yaml`): a third of the start-up of a fresh interpreter per step."""
INSTANCE = yaml.safe_load((Path(__file__).resolve().parents[3] / "dagster.yaml").read_text())
"""The project's instance settings (pools, run limits), as `make dev` uses them."""
TRAIN_START = "training fold 0"
TRAIN_END = "fold 0 saved to"


def expert_job() -> dg.JobDefinition:
    """The four expert assets as one multiprocess job, its resources configured at launch (each
    step process rebuilds this job from its module)."""
    defs = dg.Definitions(
        assets=[*(dg.AssetSpec(key) for key in UPSTREAM.values()), *EXPERTS],
        jobs=[
            dg.define_asset_job(
                "experts_job",
                selection=dg.AssetSelection.assets(*EXPERTS),
                executor_def=dg.multiprocess_executor,
            )
        ],
        resources={
            "io_manager": CarryDuckDBIOManager.configure_at_launch(),
            "duckdb": CarryDuckDBResource.configure_at_launch(),
            "model_settings": ModelSettings.configure_at_launch(),
        },
    )
    return defs.resolve_job_def("experts_job")


def run_config(database: Path, models: Path, max_concurrent: int) -> dict:
    """Resources on the temporary store, the tiny experts, `max_concurrent` step processes."""
    settings = {"timesteps": TIMESTEPS, "folds": [0], "models_root": str(models), "threads": 1}
    settings.update({n: TINY for n in ("anomaly", "short_term", "long_term", "sentiment")})
    return {
        "execution": {"config": {"max_concurrent": max_concurrent, "start_method": FORKSERVER}},
        "resources": {
            "io_manager": {"config": {"database": str(database)}},
            "duckdb": {"config": {"database": str(database)}},
            "model_settings": {"config": settings},
        },
    }


def training_spans(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    """Each step's training: from its "training fold 0" log line to its "fold 0 saved" line."""
    marks: dict[str, dict[str, float]] = {}
    for entry in instance.all_logs(run_id):
        if entry.step_key and entry.user_message:
            for mark in (TRAIN_START, TRAIN_END):
                if mark in entry.user_message:
                    marks.setdefault(entry.step_key, {})[mark] = entry.timestamp
    return {step: (m[TRAIN_START], m[TRAIN_END]) for step, m in marks.items()}


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans open at one instant."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    open_now = best = 0
    for _, delta in edges:
        open_now += delta
        best = max(best, open_now)
    return best


@pytest.mark.slow
def test_four_experts_of_a_fold_train_in_parallel_and_every_registry_row_lands(
    tmp_path: Path,
) -> None:
    database, models = tmp_path / "carry.duckdb", tmp_path / "models"
    _upstream_tables(database, tmp_path / "windows")
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home), overrides=INSTANCE) as instance:
        result = dg.execute_job(
            dg.reconstructable(expert_job),
            instance=instance,
            run_config=run_config(database, models, max_concurrent=4),
        )
        assert result.success
        succeeded = {e.step_key for e in result.all_events if e.is_step_success}
        assert succeeded == {f"models__{a.key.path[-1]}" for a in EXPERTS}
        spans = training_spans(instance, result.run_id)
    assert set(spans) == succeeded
    # Trainings ran side by side: with the old `duckdb` pool they were one after another.
    assert most_at_once(list(spans.values())) >= 2, spans
    with duckdb.connect(str(database), read_only=True) as con:
        rows = con.sql("select expert, fold, run_id, timesteps from models.registry").fetchall()
        tables = {
            name: con.sql(f"select count(*) from models.{name}_expert").fetchall()[0][0]
            for name in ("anomaly", "short_term", "long_term", "sentiment")
        }
    assert sorted(r[0] for r in rows) == ["anomaly", "long_term", "sentiment", "short_term"]
    assert {(r[1], r[2], r[3]) for r in rows} == {(0, result.run_id, TIMESTEPS)}
    assert tables == {"anomaly": 1, "short_term": 1, "long_term": 1, "sentiment": 1}
    for name in tables:
        saved = json.loads((models / name / "fold0" / "record.json").read_text())
        assert saved["threads"] == 1


def test_most_at_once() -> None:
    assert most_at_once([(0, 1), (1, 2), (2, 3)]) == 1  # back to back: serial
    assert most_at_once([(0, 2), (1, 3), (5, 6)]) == 2  # the first two overlap
    assert most_at_once([(0, 9), (1, 8), (2, 7), (3, 6)]) == 4  # all four at once
