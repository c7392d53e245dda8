"""`normalisation_stats`: per fold and feature, statistics of that fold's train span only.

Two variants per feature: `standard` (mean, population std) and `robust` (median, IQR / 1.349, which
equals the std for normal data). Both are computed over every symbol's rows in `[train_start,
train_end)` outside the warm-up. A feature that is constant over the train span (std or IQR 0, e.g.
a flag that never fires) gets a scale of 1, recorded in `degenerate`, so applying the statistics
never divides by zero.
"""

from __future__ import annotations

from typing import Literal

import polars as pl

from carry_pipeline.lib.schemas import UTC_TS

STATS_SCHEMA: dict[str, pl.DataType] = {
    "fold": pl.Int64(),
    "feature": pl.String(),
    "mean": pl.Float64(),
    "std": pl.Float64(),
    "median": pl.Float64(),
    "iqr_std": pl.Float64(),
    "n": pl.Int64(),
    "degenerate": pl.Boolean(),
    "train_start": UTC_TS,
    "train_end": UTC_TS,
}
"""Columns of `normalisation_stats`."""

IQR_TO_STD = 1.3489795003921634  # IQR of a standard normal


def feature_columns(frame: pl.DataFrame) -> list[str]:
    """The `f_` columns of a frame, in order."""
    return [c for c in frame.columns if c.startswith("f_")]


def train_rows(features: pl.DataFrame, fold: dict) -> pl.DataFrame:
    """Rows of `features` in a fold's train span, outside the warm-up."""
    return features.filter(
        (pl.col("ts") >= fold["train_start"])
        & (pl.col("ts") < fold["train_end"])
        & ~pl.col("warmup")
    )


def compute_normalisation_stats(features: pl.DataFrame, folds: pl.DataFrame) -> pl.DataFrame:
    """Statistics of every `f_` feature over each fold's train span.

    Args:
        features: `ts`, `symbol`, `warmup` and `f_` columns (all symbols).
        folds: `walk_forward_folds`.

    Returns:
        One row per (fold, feature) in `STATS_SCHEMA`.

    Raises:
        ValueError: a fold's train span holds no row after the warm-up, or a feature has a null or
            non-finite value there (the warm-up should have excluded it).
    """
    cols = feature_columns(features)
    out = []
    for fold in folds.iter_rows(named=True):
        rows = train_rows(features, fold).select(cols)
        if rows.height == 0:
            raise ValueError(
                f"fold {fold['fold']}: no feature rows after the warm-up in its train span "
                f"{fold['train_start']}..{fold['train_end']}"
            )
        bad = rows.select(pl.col(cols).is_finite().not_().sum()).row(0, named=True)
        bad = {c: n for c, n in bad.items() if n}
        if bad:
            raise ValueError(
                f"fold {fold['fold']}: non-finite or null feature values in the train span: {bad}"
            )
        stats = rows.select(
            pl.concat_list(
                pl.col(c).mean(),
                pl.col(c).std(ddof=0),
                pl.col(c).median(),
                (pl.col(c).quantile(0.75, "linear") - pl.col(c).quantile(0.25, "linear"))
                / IQR_TO_STD,
            ).alias(c)
            for c in cols
        ).row(0, named=True)
        for c in cols:
            mean, std, median, iqr = stats[c]
            degenerate = not (std > 1e-12 and iqr > 1e-12)
            out.append(
                {
                    "fold": fold["fold"],
                    "feature": c,
                    "mean": mean,
                    "std": std if std > 1e-12 else 1.0,
                    "median": median,
                    "iqr_std": iqr if iqr > 1e-12 else (std if std > 1e-12 else 1.0),
                    "n": rows.height,
                    "degenerate": degenerate,
                    "train_start": fold["train_start"],
                    "train_end": fold["train_end"],
                }
            )
    return pl.DataFrame(out, schema=STATS_SCHEMA)


def apply_normalisation(
    features: pl.DataFrame,
    stats: pl.DataFrame,
    fold: int,
    *,
    method: Literal["standard", "robust"] = "standard",
    clip: float | None = None,
) -> pl.DataFrame:
    """Normalise the `f_` columns of `features` with one fold's statistics.

    Args:
        features: frame with the `f_` columns the statistics cover (other columns pass through).
        stats: `normalisation_stats`.
        fold: the fold whose statistics to use.
        method: `standard` ((x - mean) / std) or `robust` ((x - median) / (IQR / 1.349)).
        clip: if set, clip normalised values to [-clip, clip].

    Returns:
        `features` with its `f_` columns replaced by normalised Float64 values.

    Raises:
        ValueError: the fold has no statistics or a feature of `features` has none.
    """
    rows = stats.filter(pl.col("fold") == fold)
    if rows.height == 0:
        raise ValueError(f"normalisation_stats has no rows for fold {fold}")
    center_col, scale_col = ("mean", "std") if method == "standard" else ("median", "iqr_std")
    table = {r["feature"]: (r[center_col], r[scale_col]) for r in rows.iter_rows(named=True)}
    cols = feature_columns(features)
    missing = [c for c in cols if c not in table]
    if missing:
        raise ValueError(f"normalisation_stats of fold {fold} lacks features {missing}")
    exprs = []
    for c in cols:
        center, scale = table[c]
        z = (pl.col(c) - center) / scale
        exprs.append((z.clip(-clip, clip) if clip is not None else z).alias(c))
    return features.with_columns(exprs)
