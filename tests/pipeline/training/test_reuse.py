"""`lib/training/reuse.py`: when a saved model may stand in for a training, on a constructed
registry and model folders (no training)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from carry_pipeline.lib.training.registry import (
    REGISTRY_SCHEMA,
    REGISTRY_TABLE,
    append_registry,
)
from carry_pipeline.lib.training.reuse import (
    TrainingKey,
    reached_timesteps,
    read_registry,
    reusable_row,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
TRAINED = datetime(2024, 2, 1, 12, 30, 15, 123456, tzinfo=UTC)
SPEC = {"name": "short_term", "seed": 0, "net_arch": [64, 64], "timesteps": {"demo": 128}}
ENV = {"fee": 0.0005, "random_start": True}


@pytest.mark.parametrize(
    ("total", "n_envs", "n_steps", "reached"),
    [
        (128, 4, 32, 128),  # exactly one rollout
        (100, 4, 32, 128),  # a partial rollout is completed
        (129, 4, 32, 256),  # one step more needs a second rollout
        (8_192, 16, 64, 8_192),  # the demo profile: eight rollouts
    ],
)
def test_reached_timesteps(total: int, n_envs: int, n_steps: int, reached: int) -> None:
    assert reached_timesteps(total, n_envs, n_steps) == reached


def _key(**changes: Any) -> TrainingKey:
    values: dict[str, Any] = {
        "expert": "short_term",
        "fold": 0,
        "is_latest": False,
        "train_start": T0,
        "train_end": T0 + timedelta(days=30),
        "algorithm": "PPO",
        "seed": 0,
        "threads": 1,
        "device": "cpu",
        "profile": "demo",
        "timesteps": 128,
        "data_sha256": "ab" * 32,
        "spec": SPEC,
        "env_config": ENV,
        "code_version": "ef" * 32,
    }
    values.update(changes)
    return TrainingKey.build(**values)


def _row(folder: Path, trained_at: datetime = TRAINED, **changes: Any) -> dict[str, Any]:
    key = _key()
    row: dict[str, Any] = {name: None for name in REGISTRY_SCHEMA}
    row.update({f: getattr(key, f) for f in key.__dataclass_fields__})
    # The registry stores the JSON with sorted keys too, but a reader must not depend on order.
    row["spec"] = json.dumps(dict(reversed(list(SPEC.items()))))
    row.update(run_id="run-1", model_path=str(folder), trained_at=trained_at, fit_end=T0)
    row.update(changes)
    return row


def _save(folder: Path, trained_at: datetime = TRAINED, data: str = "ab" * 32) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.zip").write_bytes(b"weights")
    record = {"trained_at": trained_at.isoformat(), "data_sha256": data}
    (folder / "record.json").write_text(json.dumps(record))


def _registry(*rows: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=REGISTRY_SCHEMA)


def test_the_same_training_with_its_model_on_disk_is_reused(tmp_path: Path) -> None:
    folder = tmp_path / "short_term" / "fold0"
    _save(folder)
    found = reusable_row(_registry(_row(folder)), _key())
    assert found is not None and found["run_id"] == "run-1"


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},  # another seed trains other weights
        {"threads": 2},  # so does another torch thread count
        {"data_sha256": "cd" * 32},  # new data
        {"timesteps": 256},  # a bigger budget
        {"spec": {**SPEC, "net_arch": [32]}},  # another network
        {"env_config": {**ENV, "fee": 0.001}},  # another env
        {"train_end": T0 + timedelta(days=31)},  # a longer train span
        {"is_latest": True},  # the latest window is not a walk-forward fold
        {"device": "cuda"},
        {"code_version": "01" * 32},  # the env's or the trainer's code changed
    ],
)
def test_any_change_to_the_training_retrains(tmp_path: Path, change: dict[str, Any]) -> None:
    folder = tmp_path / "short_term" / "fold0"
    _save(folder)
    assert reusable_row(_registry(_row(folder)), _key(**change)) is None


def test_a_folder_overwritten_by_a_later_training_is_not_reused(tmp_path: Path) -> None:
    # Row 1 matches the key, but the folder now holds another training (a later run with another
    # seed): the model row 1 describes is gone.
    folder = tmp_path / "short_term" / "fold0"
    later = TRAINED + timedelta(hours=1)
    _save(folder, trained_at=later)
    registry = _registry(_row(folder), _row(folder, trained_at=later, seed=1, run_id="run-2"))
    assert reusable_row(registry, _key()) is None


@pytest.mark.parametrize("missing", ["model.zip", "record.json"])
def test_a_folder_without_its_model_is_not_reused(tmp_path: Path, missing: str) -> None:
    folder = tmp_path / "short_term" / "fold0"
    _save(folder)
    (folder / missing).unlink()
    assert reusable_row(_registry(_row(folder)), _key()) is None


def test_a_meta_controller_older_than_its_experts_is_not_reused(tmp_path: Path) -> None:
    folder = tmp_path / "meta" / "fold0"
    _save(folder)
    registry = _registry(_row(folder))
    assert reusable_row(registry, _key(), not_before=TRAINED - timedelta(minutes=5)) is not None
    assert reusable_row(registry, _key(), not_before=TRAINED + timedelta(minutes=5)) is None


def test_read_registry_before_any_training_is_empty(tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "carry.duckdb")) as con:
        frame = read_registry(con)
    assert frame.height == 0 and frame.schema == pl.Schema(REGISTRY_SCHEMA)


def test_a_row_from_before_code_versions_were_recorded_is_not_reused(tmp_path: Path) -> None:
    folder = tmp_path / "short_term" / "fold0"
    _save(folder)
    assert reusable_row(_registry(_row(folder, code_version=None)), _key()) is None


def _old_registry(con: duckdb.DuckDBPyConnection, rows: pl.DataFrame) -> None:
    """`models.registry` as written before the `code_version` column existed."""
    old = rows.drop("code_version")
    con.execute("create schema models")
    con.register("old_rows", old.to_arrow())
    con.execute(f"create table {REGISTRY_TABLE} as select * from old_rows")
    con.unregister("old_rows")


def test_an_old_registry_gains_the_code_version_and_keeps_its_rows(tmp_path: Path) -> None:
    folder = tmp_path / "short_term" / "fold0"
    _save(folder)
    old_row, new_row = _row(folder, run_id="run-old"), _row(folder, run_id="run-new")
    with duckdb.connect(str(tmp_path / "carry.duckdb")) as con:
        _old_registry(con, _registry(old_row))
        before = read_registry(con)
        # Read before the migration: the column is there, null, and the old row is not reused.
        assert before["code_version"].to_list() == [None]
        assert reusable_row(before, _key()) is None

        assert append_registry(con, _registry(new_row)) == 2
        after = read_registry(con).sort("run_id")
    assert after["run_id"].to_list() == ["run-new", "run-old"]
    assert after["code_version"].to_list() == ["ef" * 32, None]
    # The old row is kept as it was in every other column.
    kept = after.row(1, named=True)
    assert {k: kept[k] for k in ("spec", "seed", "trained_at", "data_sha256")} == {
        "spec": old_row["spec"],
        "seed": 0,
        "trained_at": TRAINED,
        "data_sha256": "ab" * 32,
    }
    found = reusable_row(after, _key())
    assert found is not None and found["run_id"] == "run-new"
