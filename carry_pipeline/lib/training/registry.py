"""The `models.registry` table and the per-fold inputs of the `models` assets (no Dagster inside).

- `fold_inputs(...)`: for each `walk_forward_folds` row (the latest window included), the fold's
  train span, its market restricted to that span and its `train` windows.
- `registry_frame(records, ...)`: `TrainingRecord`s as registry rows (JSON columns for the nested
  config, curve and validation; the headline validation numbers as float columns).
- `append_registry(connection, frame)`: appends rows to `models.registry` in one transaction;
  rows already there are never updated or deleted, so the table keeps every training's history.
  A registry written before a column was added (`code_version`) gets it, null on its old rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import polars as pl

from carry_env.market import MarketData
from carry_pipeline.lib.duckdb_io import insert_frame, transaction
from carry_pipeline.lib.features.pipeline import build_market_frame
from carry_pipeline.lib.training.observation import WindowSet
from carry_pipeline.lib.training.train import FoldSpan, TrainingRecord, train_span_market

REGISTRY_TABLE = "models.registry"
UTC_TS = pl.Datetime("us", "UTC")
REGISTRY_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "expert": pl.String(),
    "fold": pl.Int64(),
    "is_latest": pl.Boolean(),
    "train_start": UTC_TS,
    "train_end": UTC_TS,
    "fit_end": UTC_TS,
    "algorithm": pl.String(),
    "seed": pl.Int64(),
    "threads": pl.Int64(),
    "device": pl.String(),
    "profile": pl.String(),
    "timesteps": pl.Int64(),
    "wall_seconds": pl.Float64(),
    "fps": pl.Float64(),
    "data_sha256": pl.String(),
    "model_path": pl.String(),
    "val_net_carry": pl.Float64(),
    "val_reward": pl.Float64(),
    "val_max_drawdown": pl.Float64(),
    "spec": pl.String(),
    "env_config": pl.String(),
    "curve": pl.String(),
    "validation": pl.String(),
    "code_version": pl.String(),
    "trained_at": UTC_TS,
}
"""Columns of `models.registry` and of each `models.<expert>` table (JSON as strings)."""


@dataclass(frozen=True, eq=False)
class FoldData:
    """What one training on one fold needs."""

    fold: FoldSpan
    is_latest: bool
    market: MarketData
    """The market restricted to the fold's train span."""
    windows: WindowSet
    """The fold's `train` windows."""


def market_data(
    market_bars: pl.DataFrame, carry_features: pl.DataFrame, sentiment_windows: pl.DataFrame
) -> MarketData:
    """The env's market (after the warm-up) from the feature stage's tables."""
    return MarketData.from_frame(build_market_frame(market_bars, carry_features, sentiment_windows))


def fold_inputs(
    market: MarketData,
    walk_forward_folds: pl.DataFrame,
    training_windows: pl.DataFrame,
    folds: Iterable[int] | None = None,
) -> list[FoldData]:
    """Per fold (ordered, the latest window last; only `folds` when given): train span, market
    and train windows.

    Raises:
        ValueError: a selected fold is unknown, or has no `train` windows in the manifest.
    """
    rows = walk_forward_folds.sort("fold").to_dicts()
    known = [int(r["fold"]) for r in rows]
    wanted = set(known if folds is None else folds)
    unknown = sorted(wanted - set(known))
    if unknown:
        raise ValueError(f"folds {unknown} are not in walk_forward_folds (folds {known})")
    out = []
    for row in rows:
        if int(row["fold"]) not in wanted:
            continue
        span = FoldSpan.from_row(row)
        manifest = training_windows.filter(
            (pl.col("fold") == span.fold) & (pl.col("segment") == "train")
        )
        if manifest.height != 1:
            raise ValueError(
                f"fold {span.fold}: training_windows has {manifest.height} train rows, expected 1"
            )
        out.append(
            FoldData(
                fold=span,
                is_latest=bool(row["is_latest"]),
                market=train_span_market(market, span),
                windows=WindowSet.from_manifest_row(manifest.row(0, named=True)),
            )
        )
    return out


def registry_frame(records: Iterable[tuple[TrainingRecord, bool]], run_id: str) -> pl.DataFrame:
    """Registry rows of `(record, is_latest)` pairs, in `REGISTRY_SCHEMA`."""
    rows: list[dict[str, Any]] = []
    for rec, is_latest in records:
        val = rec.validation
        rows.append(
            {
                "run_id": run_id,
                "expert": rec.expert,
                "fold": rec.fold,
                "is_latest": is_latest,
                "train_start": rec.train_start,
                "train_end": rec.train_end,
                "fit_end": rec.fit_end,
                "algorithm": rec.algorithm,
                "seed": rec.seed,
                "threads": rec.threads,
                "device": rec.device,
                "profile": rec.profile,
                "timesteps": rec.timesteps,
                "wall_seconds": float(rec.wall_seconds),
                "fps": float(rec.fps),
                "data_sha256": rec.data_sha256,
                "model_path": rec.model_path,
                "val_net_carry": float(val["net_carry"]),
                "val_reward": float(val["reward"]),
                "val_max_drawdown": float(val["max_drawdown"]),
                "spec": json.dumps(rec.spec, sort_keys=True),
                "env_config": json.dumps(rec.env_config, sort_keys=True),
                "curve": json.dumps(rec.curve),
                "validation": json.dumps(val, sort_keys=True),
                "code_version": rec.code_version,
                "trained_at": rec.trained_at,
            }
        )
    return pl.DataFrame(rows, schema=REGISTRY_SCHEMA)


def append_registry(connection: Any, frame: pl.DataFrame) -> int:
    """Append `frame` to `models.registry` (created on first use) in one transaction; return the
    table's row count. Existing rows are never touched; a column the table lacks (one added to
    `REGISTRY_SCHEMA` since it was written, such as `code_version`) is added first, null on the
    rows already there (`duckdb_io.insert_frame`)."""
    schema, table = REGISTRY_TABLE.split(".")
    connection.execute(f"create schema if not exists {schema}").fetchall()
    with transaction(connection):
        meta = insert_frame(connection, schema, table, frame)
    return int(meta["table_row_count"])
