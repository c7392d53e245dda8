"""`walk_forward_folds`: train/test boundaries for walk-forward validation, plus the latest window.

Spans are half-open on bar close times: a fold trains on bars with `train_start <= ts < train_end`
and tests on `test_start <= ts < test_end`, with `test_start - train_end == embargo` (bars in the
embargo belong to neither span, so labels that look a little ahead from the end of training cannot
overlap the test span). The test spans tile the end of the data, oldest fold first, without
overlapping. `anchored` folds all train from the start of the data (after the features' warm-up);
`sliding` folds train on the last `train_span` before their embargo. The latest window (`is_latest`,
fold id = `n_folds`) trains on the most recent data for the production models and has no test span.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import polars as pl

from carry_pipeline.lib.features.timeframes import parse_duration
from carry_pipeline.lib.schemas import UTC_TS

FOLD_SCHEMA: dict[str, pl.DataType] = {
    "fold": pl.Int64(),
    "is_latest": pl.Boolean(),
    "scheme": pl.String(),
    "train_start": UTC_TS,
    "train_end": UTC_TS,
    "test_start": UTC_TS,
    "test_end": UTC_TS,
    "embargo_hours": pl.Float64(),
}
"""Columns of `walk_forward_folds`; the test columns are null on the latest window."""


@dataclass(frozen=True)
class WalkForwardConfig:
    """Shape of the walk-forward folds."""

    scheme: Literal["anchored", "sliding"] = "anchored"
    """`anchored`: every fold trains from the start of the data; `sliding`: on the last
    `train_span`."""
    n_folds: int = 4
    """Number of walk-forward folds (the latest window comes on top)."""
    train_span: str = "180d"
    """Training span of sliding folds and of the latest window, and the minimum of anchored
    folds."""
    test_span: str = "30d"
    """Test span of each fold."""
    embargo: str = "1d"
    """Gap between a fold's train end and test start."""

    def __post_init__(self) -> None:
        if self.scheme not in ("anchored", "sliding"):
            raise ValueError(f"scheme must be 'anchored' or 'sliding', got {self.scheme!r}")
        if self.n_folds < 1:
            raise ValueError(f"n_folds must be >= 1, got {self.n_folds}")
        for text in (self.train_span, self.test_span, self.embargo):
            parse_duration(text)


def make_walk_forward_folds(
    data_start: datetime,
    data_end: datetime,
    bar: timedelta,
    config: WalkForwardConfig | None = None,
) -> pl.DataFrame:
    """Fold boundaries over the usable data `[data_start, data_end]` (bar close times, both
    included).

    Args:
        data_start: first usable bar (the first bar after the features' warm-up).
        data_end: last bar.
        bar: the grid's bar; spans end one bar after `data_end` so that the last bar is inside.
        config: fold shape; defaults to `WalkForwardConfig()`.

    Returns:
        `n_folds` rows with `is_latest` false, ordered by `fold` (0 = oldest), then the latest
        window, in `FOLD_SCHEMA`.

    Raises:
        ValueError: the data is too short for `n_folds` test spans, their embargo and one training
            span.
    """
    cfg = config or WalkForwardConfig()
    train, test, embargo = (parse_duration(x) for x in (cfg.train_span, cfg.test_span, cfg.embargo))
    end = data_end + bar
    needed = train + embargo + cfg.n_folds * test
    if end - data_start < needed:
        raise ValueError(
            f"walk_forward_folds: {end - data_start} of usable data from {data_start} to "
            f"{data_end} is shorter than train_span {cfg.train_span} + embargo {cfg.embargo} + "
            f"{cfg.n_folds} x test_span {cfg.test_span} = {needed}; shorten the spans, use fewer "
            "folds or ingest more"
        )
    rows: list[tuple[int, bool, datetime, datetime, datetime | None, datetime | None]] = []
    for k in range(cfg.n_folds):
        test_start = end - (cfg.n_folds - k) * test
        train_end = test_start - embargo
        train_start = data_start if cfg.scheme == "anchored" else train_end - train
        rows.append((k, False, train_start, train_end, test_start, test_start + test))
    latest_start = data_start if cfg.scheme == "anchored" else end - train
    rows.append((cfg.n_folds, True, latest_start, end, None, None))
    return pl.DataFrame(
        [
            {
                "fold": k,
                "is_latest": latest,
                "scheme": cfg.scheme,
                "train_start": a,
                "train_end": b,
                "test_start": c,
                "test_end": d,
                "embargo_hours": embargo / timedelta(hours=1),
            }
            for k, latest, a, b, c, d in rows
        ],
        schema=FOLD_SCHEMA,
    )


def check_folds(folds: pl.DataFrame) -> list[str]:
    """Problems with fold boundaries: unordered spans, overlaps, or a missing embargo.

    Returns:
        One message per problem; empty when the folds are well formed.
    """
    problems = []
    tested = folds.filter(~pl.col("is_latest")).sort("fold")
    for row in folds.iter_rows(named=True):
        if not row["train_start"] < row["train_end"]:
            problems.append(f"fold {row['fold']}: train_start {row['train_start']} >= train_end")
        if row["is_latest"]:
            continue
        if row["test_start"] is None or not row["test_start"] < row["test_end"]:
            problems.append(f"fold {row['fold']}: empty or missing test span")
            continue
        gap = row["test_start"] - row["train_end"]
        if gap < timedelta(hours=row["embargo_hours"]):
            problems.append(
                f"fold {row['fold']}: test starts {gap} after training ends, less than the "
                f"{row['embargo_hours']} h embargo"
            )
    ends = tested["test_end"].to_list()
    starts = tested["test_start"].to_list()
    for k in range(1, len(starts)):
        if starts[k] < ends[k - 1]:
            problems.append(f"fold {k}: test span starts {starts[k]} before fold {k - 1}'s ends")
    if tested.height and (folds.filter(pl.col("is_latest")).height != 1):
        problems.append("there must be exactly one latest window")
    return problems
