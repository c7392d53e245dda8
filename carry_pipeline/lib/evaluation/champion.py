"""The `models.champion` table: the history of promoted meta-controllers, append-only.

A promotion appends one row (`CHAMPION_SCHEMA`) in one DuckDB transaction; no row is ever updated
or deleted, so a run that does not promote, or fails anywhere, leaves the current champion exactly
where it was. The current champion is the row promoted last (`current_champion`); the paper trader
reads that row's `model_path`.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
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
meta-controller's model folder, its (latest-window) fold id, the hash of its training data and when
it was trained, its out-of-sample fold rows of `reports.backtest_metrics` (JSON list), the decision
(JSON: each condition's pass, value and bound) and the rule's bounds (JSON)."""


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
