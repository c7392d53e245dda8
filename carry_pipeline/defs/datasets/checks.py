"""Checks of the dataset assets, each named for the invariant that passes (all blocking)."""

import json

import dagster as dg
import numpy as np
import polars as pl

from carry_pipeline.defs.datasets.assets import (
    FEATURE_INS,
    normalisation_stats,
    training_windows,
    walk_forward_folds,
)
from carry_pipeline.lib.features.folds import check_folds
from carry_pipeline.lib.features.normalisation import (
    apply_normalisation,
    compute_normalisation_stats,
    train_rows,
)
from carry_pipeline.lib.features.pipeline import combine_features
from carry_pipeline.lib.features.windows import open_windows

FOLDS_IN = {"walk_forward_folds": dg.AssetIn(key=walk_forward_folds.key)}
TOLERANCE = 1e-6


@dg.asset_check(asset=walk_forward_folds, blocking=True)
def folds_ordered_without_overlap(walk_forward_folds: pl.DataFrame) -> dg.AssetCheckResult:
    """Train spans end an embargo before their test spans; test spans are ordered, disjoint."""
    problems = check_folds(walk_forward_folds)
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or "ordered, non-overlapping, embargo respected",
        metadata={"folds": walk_forward_folds.height},
    )


@dg.asset_check(
    asset=normalisation_stats, blocking=True, additional_ins={**FEATURE_INS, **FOLDS_IN}
)
def train_features_standardised(
    normalisation_stats: pl.DataFrame,
    carry_features: pl.DataFrame,
    sentiment_windows: pl.DataFrame,
    walk_forward_folds: pl.DataFrame,
) -> dg.AssetCheckResult:
    """Each fold's train features, normalised with its statistics, have mean ~0 and std ~1, and the
    statistics equal those recomputed from the rows before the fold's train end only."""
    features = combine_features(carry_features, sentiment_windows)
    problems = []
    for fold in walk_forward_folds.iter_rows(named=True):
        k = fold["fold"]
        stats = normalisation_stats.filter(pl.col("fold") == k)
        live = stats.filter(~pl.col("degenerate"))["feature"].to_list()
        z = apply_normalisation(train_rows(features, fold), normalisation_stats, k).select(live)
        means = np.abs(z.mean().to_numpy()).max(initial=0.0)
        stds = np.abs(z.std(ddof=0).to_numpy() - 1.0).max(initial=0.0)
        if means > TOLERANCE or stds > TOLERANCE:
            problems.append(f"fold {k}: max |mean| {means:.2e}, max |std - 1| {stds:.2e}")
        # Recompute from rows before the fold's train end: identical if nothing later leaked in.
        past = features.filter(pl.col("ts") < fold["train_end"])
        again = compute_normalisation_stats(past, walk_forward_folds.filter(pl.col("fold") == k))
        cols = ["mean", "std", "median", "iqr_std"]
        if not np.allclose(
            again.select(cols).to_numpy(), stats.select(cols).to_numpy(), rtol=1e-12
        ):
            problems.append(f"fold {k}: statistics depend on rows after its train end")
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or "mean 0, std 1 on every fold's train span; no leakage",
        metadata={"folds": walk_forward_folds.height},
    )


@dg.asset_check(
    asset=training_windows,
    blocking=True,
    additional_ins={
        **FEATURE_INS,
        **FOLDS_IN,
        "normalisation_stats": dg.AssetIn(key=normalisation_stats.key),
    },
)
def windows_leak_free(
    training_windows: pl.DataFrame,
    carry_features: pl.DataFrame,
    sentiment_windows: pl.DataFrame,
    walk_forward_folds: pl.DataFrame,
    normalisation_stats: pl.DataFrame,
) -> dg.AssetCheckResult:
    """Train arrays end before their fold's train end, test arrays start their windows at the test
    start, and the last window of every array equals the normalised features it claims to hold."""
    features = combine_features(carry_features, sentiment_windows)
    folds = {r["fold"]: r for r in walk_forward_folds.iter_rows(named=True)}
    problems = []
    for row in training_windows.iter_rows(named=True):
        fold, name = folds[row["fold"]], f"fold {row['fold']} {row['segment']}"
        if row["segment"] == "train" and not row["last_ts"] < fold["train_end"]:
            problems.append(
                f"{name}: holds {row['last_ts']}, at or after train end {fold['train_end']}"
            )
        if row["segment"] == "test" and row["first_window_end"] != fold["test_start"]:
            problems.append(
                f"{name}: first window ends {row['first_window_end']}, not the test start"
            )
        windows, _ = open_windows(row)
        grid = features["ts"].unique().sort()
        end = grid.search_sorted(row["last_ts"])
        span = grid[end - row["lookback"] + 1 : end + 1]
        expected = apply_normalisation(
            features.filter(pl.col("ts").is_in(span.implode())).sort("ts", "symbol"),
            normalisation_stats,
            row["fold"],
            method=row["method"],
            clip=row["clip"],
        ).select(json.loads(row["features"]))
        got = np.asarray(windows[-1]).reshape(-1, row["n_features"])
        if not np.array_equal(got, expected.to_numpy().astype(np.float32)):
            problems.append(f"{name}: last window differs from the normalised features")
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems)
        or "windows match the features; no test bar in a train array",
        metadata={"arrays": training_windows.height},
    )
