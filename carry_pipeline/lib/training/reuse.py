"""Reuse of a saved model when a retrain would train the same one again (no Dagster inside).

Same seed, same data, same spec and the same torch thread count give bitwise-identical weights on
CPU (STACK_FACTS, "Training"), so a training whose `TrainingKey` equals that of a `models.registry`
row would only reproduce the model that row describes. `reusable_row(registry, key)` returns that
row when the model is still on disk; the `models` assets then skip the training, keep the row as
it is (its `run_id` and `trained_at` say which run trained the model) and append nothing to
`models.registry`, which stays the history of trainings.

The key holds everything a training's outcome depends on that the registry records: expert, fold,
latest-window flag, train span, algorithm, seed, threads, device, profile, the timesteps the
training would reach, the sha256 of its windows and market (`train.data_sha256`), the spec and the
env config (canonical JSON), and the code version (`code_version.code_version()`: the syntax of
`carry_env` and `lib/training` and the versions of numpy, numba, gymnasium, torch and SB3). A
meta-controller's spec names its experts' folders; since those folders are overwritten by the
experts' next training, its row is reusable only when it is newer than every expert model it
gates (`not_before`). Each `<expert>/fold<k>/` folder holds the last
training of that fold, so a row is reusable only while the folder's `record.json` is that row's
(same `trained_at` and data hash): an older row whose folder was overwritten since is not.

So a change to the env's dynamics or to an algorithm retrains, and an edit to docstrings or
comments alone does not. A registry row written before the code version was recorded (null) is
never reused. Code outside those two packages that a training reads (the feature stage) reaches
it as data, which the data hash covers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import torch

from carry_pipeline.lib.duckdb_io import utc_frame
from carry_pipeline.lib.training.code_version import code_version
from carry_pipeline.lib.training.meta import MetaSpec
from carry_pipeline.lib.training.registry import REGISTRY_SCHEMA, REGISTRY_TABLE, FoldData
from carry_pipeline.lib.training.specs import ExpertSpec
from carry_pipeline.lib.training.train import data_sha256


@dataclass(frozen=True)
class TrainingKey:
    """What one training's outcome depends on, as `models.registry` records it."""

    expert: str
    fold: int
    is_latest: bool
    train_start: datetime
    train_end: datetime
    algorithm: str
    seed: int
    threads: int
    device: str
    profile: str
    timesteps: int
    """The timesteps the training reaches (`reached_timesteps`), as the registry records them."""
    data_sha256: str
    spec: str
    """The spec as the registry stores it: JSON with sorted keys."""
    env_config: str
    """The training env's config, JSON with sorted keys."""
    code_version: str
    """`code_version.code_version()`: the training code and library versions."""

    @classmethod
    def build(
        cls, *, spec: dict[str, Any], env_config: dict[str, Any], **values: Any
    ) -> TrainingKey:
        """A key from the spec and env config as dicts (canonicalised) and the other fields."""
        return cls(spec=canonical_json(spec), env_config=canonical_json(env_config), **values)

    def mismatches(self, row: dict[str, Any]) -> list[str]:
        """Names of the fields in which registry `row` differs from this key."""
        out = []
        for f in fields(self):
            value = row.get(f.name)
            if f.name in ("spec", "env_config") and isinstance(value, str):
                value = canonical_json(json.loads(value))
            if value != getattr(self, f.name):
                out.append(f.name)
        return out


def expert_key(
    spec: ExpertSpec, data: FoldData, *, profile: str, timesteps: int | None = None
) -> TrainingKey:
    """The key of `train.train_expert(spec, data.market, data.windows, data.fold, profile=...,
    timesteps=...)` with the default base env config."""
    total = int(timesteps) if timesteps is not None else spec.total_timesteps(profile)
    return _key(
        spec.name,
        spec.algorithm,
        spec.seed,
        spec.threads,
        data,
        profile,
        reached_timesteps(total, spec.n_envs, spec.n_steps),
        spec.to_dict(),
        spec.env_config().to_dict(),
    )


def meta_key(
    spec: MetaSpec,
    data: FoldData,
    experts: Mapping[str, str],
    anomaly: str | None,
    *,
    profile: str,
    timesteps: int | None = None,
) -> TrainingKey:
    """The key of `meta.train_meta_controller(spec, experts, ..., anomaly=anomaly)` on `data`."""
    total = int(timesteps) if timesteps is not None else spec.total_timesteps(profile)
    recorded = {
        **spec.to_dict(),
        "experts": {k: str(v) for k, v in experts.items()},
        "anomaly": str(anomaly) if anomaly is not None else None,
    }
    return _key(
        spec.name,
        "PPO",
        spec.seed,
        spec.threads,
        data,
        profile,
        reached_timesteps(total, spec.n_envs, spec.n_steps),
        recorded,
        spec.env_config().to_dict(),
    )


def _key(
    name: str,
    algorithm: str,
    seed: int,
    threads: int,
    data: FoldData,
    profile: str,
    timesteps: int,
    spec: dict[str, Any],
    env_config: dict[str, Any],
) -> TrainingKey:
    # The fields `TrainingRecord` gets from the spec, the fold and the device training picks.
    return TrainingKey.build(
        expert=name,
        fold=data.fold.fold,
        is_latest=data.is_latest,
        train_start=data.fold.train_start,
        train_end=data.fold.train_end,
        algorithm=algorithm,
        seed=seed,
        threads=threads,
        device="cuda" if torch.cuda.is_available() else "cpu",
        profile=profile,
        timesteps=timesteps,
        data_sha256=data_sha256(data.windows, data.market),
        spec=spec,
        env_config=env_config,
        code_version=code_version(),
    )


def canonical_json(value: Any) -> str:
    """`value` as JSON with sorted keys (how the registry stores spec and env config)."""
    return json.dumps(value, sort_keys=True)


def reached_timesteps(total: int, n_envs: int, n_steps: int) -> int:
    """The timesteps an SB3 on-policy learner reaches when asked for `total`: it collects whole
    rollouts of `n_envs * n_steps` steps until it has at least `total`."""
    rollout = n_envs * n_steps
    return max(1, math.ceil(total / rollout)) * rollout


def read_registry(connection: Any) -> pl.DataFrame:
    """Every row of `models.registry` (UTC timestamps); an empty frame before the first training."""
    schema, table = REGISTRY_TABLE.split(".")
    exists = connection.execute(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        [schema, table],
    ).fetchall()[0][0]
    if not exists:
        return pl.DataFrame(schema=REGISTRY_SCHEMA)
    frame = utc_frame(connection.sql(f"select * from {REGISTRY_TABLE}").pl())
    # A registry written before a column was added lacks it until the next append adds it.
    missing = [
        pl.lit(None, dtype).alias(c)
        for c, dtype in REGISTRY_SCHEMA.items()
        if c not in frame.columns
    ]
    return frame.with_columns(missing) if missing else frame


def reusable_row(
    registry: pl.DataFrame, key: TrainingKey, *, not_before: datetime | None = None
) -> dict[str, Any] | None:
    """The newest registry row with `key` whose model folder still holds that training, or None.

    Args:
        registry: `models.registry` (`read_registry`).
        key: what the training about to start would be.
        not_before: rows trained before this time are stale (a meta-controller's experts were
            retrained after it).
    """
    candidates = registry.filter(
        (pl.col("expert") == key.expert) & (pl.col("fold") == key.fold)
    ).sort("trained_at", descending=True)
    for row in candidates.iter_rows(named=True):
        if key.mismatches(row):
            continue
        if not_before is not None and row["trained_at"] < not_before:
            continue
        if folder_holds(row):
            return row
    return None


def folder_holds(row: dict[str, Any]) -> bool:
    """Whether the row's model folder holds the model of that training (`model.zip`, and a
    `record.json` with the row's `trained_at` and data hash)."""
    folder = Path(row["model_path"])
    record_path = folder / "record.json"
    if not (folder / "model.zip").is_file() or not record_path.is_file():
        return False
    try:
        record = json.loads(record_path.read_text())
        trained_at = datetime.fromisoformat(record["trained_at"])
    except (ValueError, KeyError, TypeError):
        return False
    return trained_at == row["trained_at"] and record.get("data_sha256") == row["data_sha256"]
