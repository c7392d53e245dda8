"""Tests of carry_pipeline/lib/features/folds.py: hand-computed boundaries, ordering, embargo."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from carry_pipeline.lib.features.folds import (
    WalkForwardConfig,
    check_folds,
    make_walk_forward_folds,
)

D = timedelta(days=1)
START = datetime(2024, 1, 1, tzinfo=UTC)
BAR = timedelta(hours=1)
# 100 days of usable hourly bars: the last bar closes at day 100 - 1h, so spans end at day 100.
END = START + 100 * D - BAR


def test_anchored_folds_hand_computed() -> None:
    cfg = WalkForwardConfig(
        scheme="anchored", n_folds=3, train_span="30d", test_span="10d", embargo="2d"
    )
    folds = make_walk_forward_folds(START, END, BAR, cfg)
    rows = (
        folds.filter(~pl.col("is_latest"))
        .select("train_start", "train_end", "test_start", "test_end")
        .rows()
    )
    # Tests tile days 70..100; each trains from day 0 up to 2 days before its test.
    assert rows == [
        (START, START + 68 * D, START + 70 * D, START + 80 * D),
        (START, START + 78 * D, START + 80 * D, START + 90 * D),
        (START, START + 88 * D, START + 90 * D, START + 100 * D),
    ]
    latest = folds.filter(pl.col("is_latest")).row(0, named=True)
    assert (latest["fold"], latest["train_start"], latest["train_end"]) == (
        3,
        START,
        START + 100 * D,
    )
    assert latest["test_start"] is None
    assert check_folds(folds) == []


def test_sliding_folds_hand_computed() -> None:
    cfg = WalkForwardConfig(
        scheme="sliding", n_folds=2, train_span="30d", test_span="10d", embargo="1d"
    )
    folds = make_walk_forward_folds(START, END, BAR, cfg)
    rows = folds.select("train_start", "train_end", "test_start", "test_end").rows()
    assert rows == [
        (START + 49 * D, START + 79 * D, START + 80 * D, START + 90 * D),
        (START + 59 * D, START + 89 * D, START + 90 * D, START + 100 * D),
        (START + 70 * D, START + 100 * D, None, None),  # latest: the last 30 days
    ]
    assert check_folds(folds) == []


def test_folds_are_ordered_non_overlapping_with_embargo() -> None:
    folds = make_walk_forward_folds(
        START, END, BAR, WalkForwardConfig(n_folds=5, train_span="20d", test_span="7d")
    )
    tested = folds.filter(~pl.col("is_latest")).sort("fold")
    assert (tested["test_start"] - tested["train_end"]).unique().to_list() == [D]
    assert (tested["test_start"].shift(-1) >= tested["test_end"]).drop_nulls().all()
    assert (tested["train_start"] < tested["train_end"]).all()


def test_too_little_data_fails_with_the_arithmetic() -> None:
    with pytest.raises(ValueError, match=r"shorter than train_span 180d \+ embargo 1d \+ 4 x"):
        make_walk_forward_folds(START, END, BAR, WalkForwardConfig())


def test_check_folds_catches_overlap_and_missing_embargo() -> None:
    folds = make_walk_forward_folds(
        START, END, BAR, WalkForwardConfig(n_folds=2, train_span="30d", test_span="10d")
    )
    broken = folds.with_columns(
        pl.when(pl.col("fold") == 1)
        .then(pl.col("test_start") - timedelta(days=5))
        .otherwise(pl.col("test_start"))
        .alias("test_start")
    )
    problems = check_folds(broken)
    assert any("less than the 24.0 h embargo" in p for p in problems)
    assert any("before fold 0's ends" in p for p in problems)
