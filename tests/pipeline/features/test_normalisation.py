"""Tests of carry_pipeline/lib/features/normalisation.py: train-span statistics only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from carry_pipeline.lib.features.folds import FOLD_SCHEMA
from carry_pipeline.lib.features.normalisation import (
    IQR_TO_STD,
    apply_normalisation,
    compute_normalisation_stats,
)

START = datetime(2024, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)


def frame() -> pl.DataFrame:
    # Two symbols, ten hourly rows; the first row is warm-up (value 1000 must be ignored).
    ts = [START + i * H for i in range(10)]
    return pl.DataFrame(
        {
            "ts": ts * 2,
            "symbol": ["A"] * 10 + ["B"] * 10,
            "warmup": ([True] + [False] * 9) * 2,
            "f_x": [1000.0, 1, 2, 3, 4, 5, 6, 7, 8, 9] + [1000.0, 2, 4, 6, 8, 10, 12, 14, 16, 18],
            "f_flag": [0.0] * 20,
        }
    )


def folds() -> pl.DataFrame:
    return pl.DataFrame(
        [
            # Trains on rows 0..4 (hours 0-4): after warm-up, A: 1,2,3,4 and B: 2,4,6,8.
            (0, False, "anchored", START, START + 5 * H, START + 6 * H, START + 8 * H, 1.0),
            (1, True, "anchored", START, START + 10 * H, None, None, 1.0),
        ],
        schema=FOLD_SCHEMA,
        orient="row",
    )


def test_stats_hand_computed_on_the_train_span_only() -> None:
    stats = compute_normalisation_stats(frame(), folds())
    x = stats.filter((pl.col("fold") == 0) & (pl.col("feature") == "f_x")).row(0, named=True)
    train = np.array([1, 2, 3, 4, 2, 4, 6, 8], dtype=float)
    assert x["mean"] == pytest.approx(train.mean())  # 3.75
    assert x["std"] == pytest.approx(train.std())
    assert x["median"] == pytest.approx(3.5)
    q75, q25 = np.percentile(train, [75, 25])
    assert x["iqr_std"] == pytest.approx((q75 - q25) / IQR_TO_STD)
    assert x["n"] == 8 and not x["degenerate"]
    # A constant feature gets scale 1 and is flagged, never a division by zero.
    flag = stats.filter((pl.col("fold") == 0) & (pl.col("feature") == "f_flag")).row(0, named=True)
    assert flag["std"] == 1.0 and flag["iqr_std"] == 1.0 and flag["degenerate"]


def test_test_span_values_do_not_move_the_stats() -> None:
    base = compute_normalisation_stats(frame(), folds()).filter(pl.col("fold") == 0)
    bumped = frame().with_columns(
        pl.when(pl.col("ts") >= START + 5 * H).then(pl.col("f_x") * 100).otherwise(pl.col("f_x"))
    )
    assert compute_normalisation_stats(bumped, folds()).filter(pl.col("fold") == 0).equals(base)


def test_normalised_train_features_have_mean_zero_std_one() -> None:
    stats = compute_normalisation_stats(frame(), folds())
    train = frame().filter((pl.col("ts") < START + 5 * H) & ~pl.col("warmup"))
    z = apply_normalisation(train, stats, 0)
    assert z["f_x"].mean() == pytest.approx(0.0, abs=1e-12)
    assert z["f_x"].std(ddof=0) == pytest.approx(1.0)
    robust = apply_normalisation(train, stats, 0, method="robust")
    assert robust["f_x"].median() == pytest.approx(0.0, abs=1e-12)
    clipped = apply_normalisation(frame(), stats, 0, clip=2.0)
    assert clipped["f_x"].max() == 2.0


def test_non_finite_train_values_and_unknown_fold_fail() -> None:
    bad = frame().with_columns(
        pl.when(pl.col("ts") == START + 2 * H)
        .then(float("inf"))
        .otherwise(pl.col("f_x"))
        .alias("f_x")
    )
    with pytest.raises(
        ValueError, match=r"non-finite or null feature values in the train span: \{'f_x': 2\}"
    ):
        compute_normalisation_stats(bad, folds())
    stats = compute_normalisation_stats(frame(), folds())
    with pytest.raises(ValueError, match="no rows for fold 7"):
        apply_normalisation(frame(), stats, 7)
