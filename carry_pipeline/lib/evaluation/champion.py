"""The `models.champion` table: the history of promoted meta-controllers, append-only.

A promotion appends one row (`CHAMPION_SCHEMA`) in one DuckDB transaction; no row is ever updated
or deleted, so a run that does not promote, or fails anywhere, leaves the current champion exactly
where it was. The current champion is the row promoted last (`current_champion`); the paper trader
and the inference service read that row's `model_path`.

A promotion first copies the model into a folder of its own (`install_champion`), because the
training folders `<models_root>/meta/fold<k>/` and `<models_root>/<expert>/fold<k>/` are overwritten
by the next retrain whether or not its candidate is promoted:

    <models_root>/champions/<champion>/meta/           the meta-controller (spec.json rewritten)
    <models_root>/champions/<champion>/experts/<name>/ each expert it gates
    <models_root>/champions/<champion>/anomaly/        its anomaly expert, if any
    <models_root>/champions/<champion>/source.json     the training folders it was copied from

The copy is filled in a hidden sibling folder, its files made read-only, and renamed into place, so
a champion folder is complete or absent; no code writes into it again. The row's
`model_path` is the copy's `meta/` folder. Rows written before champions were copied name the
training folder itself; they still load (`load_meta_controller` reads whatever folder a row names).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from carry_pipeline.lib.duckdb_io import insert_frame, transaction, utc_frame
from carry_pipeline.lib.evaluation.promotion import PromotionDecision, PromotionRule
from carry_pipeline.lib.schemas import UTC_TS

CHAMPION_TABLE = ("models", "champion")
CHAMPION_SCHEMA: dict[str, pl.DataType] = {
    "champion_id": pl.String(),
    "run_id": pl.String(),
    "promoted_at": UTC_TS,
    "policy": pl.String(),
    "model_path": pl.String(),
    "fold": pl.Int64(),
    "data_sha256": pl.String(),
    "trained_at": UTC_TS,
    "fold_metrics": pl.String(),
    "decision": pl.String(),
    "rule": pl.String(),
}
"""`models.champion`: `champion_id` (`<run_id>:<policy>`), the run that promoted it and when, the
meta-controller's model folder (its champion copy, `install_champion`), its (latest-window) fold
id, the hash of its training data and when it was trained, its out-of-sample fold rows of
`reports.backtest_metrics` (JSON list), the decision (JSON: each condition's pass, value and bound)
and the rule's bounds (JSON)."""


def champion_row(
    *,
    run_id: str,
    model: dict[str, Any],
    fold_metrics: pl.DataFrame,
    decision: PromotionDecision,
    rule: PromotionRule,
    promoted_at: datetime | None = None,
) -> pl.DataFrame:
    """One `CHAMPION_SCHEMA` row for the promoted model.

    Args:
        model: the candidate's `models.meta_controller` row (`fold`, `model_path`, `data_sha256`,
            `trained_at`).
        fold_metrics: the candidate's `aggregate = "fold"` rows of `reports.backtest_metrics`.

    Raises:
        ValueError: the decision did not promote.
    """
    if not decision.promote:
        raise ValueError(
            f"champion_row: {decision.candidate!r} was not promoted (failed: {decision.failed})"
        )
    rows = [{k: _json_value(v) for k, v in r.items()} for r in fold_metrics.to_dicts()]
    return pl.DataFrame(
        [
            {
                "champion_id": f"{run_id}:{decision.candidate}",
                "run_id": run_id,
                "promoted_at": promoted_at or datetime.now(UTC),
                "policy": decision.candidate,
                "model_path": str(model["model_path"]),
                "fold": int(model["fold"]),
                "data_sha256": str(model["data_sha256"]),
                "trained_at": model["trained_at"],
                "fold_metrics": json.dumps(rows, sort_keys=True),
                "decision": json.dumps(
                    [vars(c) for c in decision.conditions], sort_keys=True, default=_json_value
                ),
                "rule": json.dumps(vars(rule), sort_keys=True),
            }
        ],
        schema=CHAMPION_SCHEMA,
    )


def _json_value(value: Any) -> Any:
    # JSON has no NaN/inf: they are written as strings so the row stays valid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def append_champion(connection: duckdb.DuckDBPyConnection, row: pl.DataFrame) -> int:
    """Append `row` to `models.champion` (created on first use) in one transaction; return the
    table's row count. Existing rows are never touched.

    Raises:
        ValueError: `row` is not one row, or its champion id is already in the table.
    """
    if row.height != 1:
        raise ValueError(f"append_champion: expected one row, got {row.height}")
    schema, table = CHAMPION_TABLE
    champion_id = row["champion_id"][0]
    connection.execute(f"create schema if not exists {schema}").fetchall()
    with transaction(connection):
        if (
            _exists(connection)
            and connection.execute(
                f"select count(*) from {schema}.{table} where champion_id = ?", [champion_id]
            ).fetchall()[0][0]
        ):
            raise ValueError(f"models.champion already holds champion {champion_id!r}")
        meta = insert_frame(connection, schema, table, row)
    return int(meta["table_row_count"])


def _exists(connection: duckdb.DuckDBPyConnection) -> bool:
    schema, table = CHAMPION_TABLE
    return bool(
        connection.execute(
            "select 1 from information_schema.tables where table_schema = ? and table_name = ?",
            [schema, table],
        ).fetchall()
    )


def champion_history(connection: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Every row of `models.champion`, oldest first (empty, in `CHAMPION_SCHEMA`, if none)."""
    if not _exists(connection):
        return pl.DataFrame(schema=CHAMPION_SCHEMA)
    frame = connection.sql("select * from models.champion order by promoted_at").pl()
    return utc_frame(frame)


def current_champion(connection: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
    """The row promoted last, or None when nothing was ever promoted."""
    history = champion_history(connection)
    return history.row(-1, named=True) if history.height else None


CHAMPIONS_DIR = "champions"
"""Sub-folder of the model store that holds one immutable folder per promoted champion."""


def champion_folder(models_root: str | Path, champion_id: str) -> Path:
    """`<models_root>/champions/<champion_id>/`, the id's characters other than letters, digits,
    `.`, `_` and `-` replaced by `_` (`run:meta_controller` -> `run_meta_controller`)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", champion_id)
    if name.strip(".") == "":
        raise ValueError(f"champion id {champion_id!r} gives no usable folder name")
    return Path(models_root) / CHAMPIONS_DIR / name


def _meta_references(meta_folder: Path) -> tuple[dict[str, Any], dict[str, str], str | None]:
    # The saved meta's spec.json and the expert (and anomaly) folders it names.
    for name in ("spec.json", "model.zip"):
        if not (meta_folder / name).is_file():
            raise FileNotFoundError(f"{meta_folder} holds no {name}: not a saved meta-controller")
    spec = json.loads((meta_folder / "spec.json").read_text())
    if not isinstance(spec.get("experts"), dict) or "anomaly" not in spec:
        raise ValueError(f"{meta_folder}/spec.json names no experts and anomaly folders")
    experts = {str(k): str(v) for k, v in spec["experts"].items()}
    for name, folder in experts.items():
        if name in ("", ".", "..") or Path(name).name != name:
            raise ValueError(f"{meta_folder}/spec.json: expert name {name!r} is not a folder name")
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{meta_folder}: expert {name!r} folder {folder} is gone")
    anomaly = spec["anomaly"]
    if anomaly is not None and not Path(anomaly).is_dir():
        raise FileNotFoundError(f"{meta_folder}: anomaly expert folder {anomaly} is gone")
    return spec, experts, None if anomaly is None else str(anomaly)


def _make_read_only(folder: Path) -> None:
    # Files only: read-only folders would stop a user's `rm -rf` of the store.
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def install_champion(meta_folder: str | Path, models_root: str | Path, champion_id: str) -> Path:
    """Copy the meta-controller in `meta_folder` and every expert folder its `spec.json` names
    into `champion_folder(models_root, champion_id)` (module docstring), the copied `spec.json`
    pointing at the copied experts; return the copy's `meta/` folder.

    Raises:
        FileNotFoundError: the meta-controller or one of its experts is not where it was saved.
        FileExistsError: the champion folder exists already (champion folders are never replaced).
        ValueError: the meta's `spec.json` names no experts.
    """
    source = Path(meta_folder)
    spec, experts, anomaly = _meta_references(source)
    final = champion_folder(models_root, champion_id).resolve()
    if final.exists():
        raise FileExistsError(f"champion folder {final} exists already; it is never replaced")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        shutil.copytree(source, staging / "meta")
        for name, folder in experts.items():
            shutil.copytree(folder, staging / "experts" / name)
        if anomaly is not None:
            shutil.copytree(anomaly, staging / "anomaly")
        spec["experts"] = {name: str(final / "experts" / name) for name in experts}
        spec["anomaly"] = None if anomaly is None else str(final / "anomaly")
        copied = staging / "meta" / "spec.json"
        copied.unlink()  # the copy keeps the source's mode, which may be read-only
        copied.write_text(json.dumps(spec, indent=2))
        provenance = {"champion_id": champion_id, "meta": str(source), "experts": experts,
                      "anomaly": anomaly}  # fmt: skip
        (staging / "source.json").write_text(json.dumps(provenance, indent=2))
        _make_read_only(staging)
        staging.chmod(0o755)
        os.rename(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final / "meta"


def promote_champion(
    connection: duckdb.DuckDBPyConnection, row: pl.DataFrame, models_root: str | Path
) -> tuple[pl.DataFrame, int]:
    """Install `row`'s model as a champion folder (`install_champion`) and append `row`, its
    `model_path` replaced by the copy, to `models.champion`; return the appended row and the
    table's row count.

    A folder left by an earlier attempt of the same champion that never got its row (a crash
    between the copy and the insert) is no champion and is replaced; if the insert fails, the new
    folder is removed again, so every champion folder belongs to a row.

    Raises:
        ValueError: `row` is not one row, or its champion id is already in the table.
        FileNotFoundError: the model or one of its experts is not where it was saved.
    """
    if row.height != 1:
        raise ValueError(f"promote_champion: expected one row, got {row.height}")
    champion_id = str(row["champion_id"][0])
    if champion_history(connection).filter(pl.col("champion_id") == champion_id).height:
        raise ValueError(f"models.champion already holds champion {champion_id!r}")
    orphan = champion_folder(models_root, champion_id)
    if orphan.exists():
        shutil.rmtree(orphan)
    meta = install_champion(str(row["model_path"][0]), models_root, champion_id)
    installed = row.with_columns(pl.lit(str(meta)).alias("model_path"))
    try:
        total = append_champion(connection, installed)
    except BaseException:
        shutil.rmtree(meta.parent, ignore_errors=True)
        raise
    return installed, total
