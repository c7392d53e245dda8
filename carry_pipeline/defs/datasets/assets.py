"""Dataset assets (DuckDB schema `datasets`): `walk_forward_folds`, `normalisation_stats`,
`training_windows`.

The training stage reads the fold boundaries, applies each fold's statistics (computed on that
fold's train span only) and memory-maps the windows listed in `training_windows`. The windows are
written once per content hash of their inputs: a re-run over unchanged features, statistics and
folds reuses the folder already written (metadata `reused: true`) and writes nothing.
"""

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext

from carry_pipeline.defs.features.assets import failing_clearly
from carry_pipeline.defs.features.resources import FeatureSettings
from carry_pipeline.lib.features.folds import make_walk_forward_folds
from carry_pipeline.lib.features.normalisation import compute_normalisation_stats
from carry_pipeline.lib.features.pipeline import combine_features, usable_span
from carry_pipeline.lib.features.timeframes import parse_duration
from carry_pipeline.lib.features.windows import (
    windows_exist,
    windows_key,
    write_training_windows,
)

SCHEMA = "datasets"
GROUP = "datasets"
CARRY = dg.AssetKey(["features", "carry_features"])
SENTIMENT = dg.AssetKey(["features", "sentiment_windows"])
FEATURE_INS = {
    "carry_features": dg.AssetIn(key=CARRY),
    "sentiment_windows": dg.AssetIn(key=SENTIMENT),
}


def markdown_table(frame: pl.DataFrame) -> str:
    """A small frame as a markdown table, for Dagster metadata."""
    rows = [" | ".join(frame.columns), " | ".join("---" for _ in frame.columns)]
    rows += [" | ".join("" if v is None else str(v) for v in row) for row in frame.iter_rows()]
    return "\n".join(f"| {r} |" for r in rows)


@dg.asset(
    key_prefix=SCHEMA,
    group_name=GROUP,
    ins={
        "carry_features": dg.AssetIn(key=CARRY, metadata={"columns": ["ts", "symbol", "warmup"]}),
        "sentiment_windows": dg.AssetIn(key=SENTIMENT, metadata={"columns": ["ts", "warmup"]}),
    },
    kinds={"duckdb", "polars"},
)
def walk_forward_folds(
    feature_settings: FeatureSettings, carry_features: pl.DataFrame, sentiment_windows: pl.DataFrame
) -> dg.Output[pl.DataFrame]:
    """Train/test boundaries of the walk-forward folds (half-open on bar close times) and the latest
    window for the production models (`is_latest`, no test span)."""
    cfg = feature_settings.pipeline()
    with failing_clearly():
        features = combine_features(carry_features, sentiment_windows)
        start, end = usable_span(features)
        folds = make_walk_forward_folds(start, end, parse_duration(cfg.bars.bar), cfg.folds)
    return dg.Output(
        folds,
        metadata={
            "folds": folds.height - 1,
            "scheme": cfg.folds.scheme,
            "usable_data": f"{start} .. {end}",
            "boundaries": dg.MetadataValue.md(markdown_table(folds)),
        },
    )


@dg.asset(
    key_prefix=SCHEMA,
    group_name=GROUP,
    ins={
        **FEATURE_INS,
        "walk_forward_folds": dg.AssetIn(key=dg.AssetKey([SCHEMA, "walk_forward_folds"])),
    },
    kinds={"duckdb", "polars"},
)
def normalisation_stats(
    carry_features: pl.DataFrame, sentiment_windows: pl.DataFrame, walk_forward_folds: pl.DataFrame
) -> dg.Output[pl.DataFrame]:
    """Per fold and feature: mean/std and median/IQR-std over that fold's train span only."""
    with failing_clearly():
        stats = compute_normalisation_stats(
            combine_features(carry_features, sentiment_windows), walk_forward_folds
        )
    return dg.Output(
        stats,
        metadata={
            "rows": stats.height,
            "features": stats["feature"].n_unique(),
            "degenerate_features": ", ".join(
                sorted(stats.filter(pl.col("degenerate"))["feature"].unique().to_list())
            )
            or "none",
        },
    )


@dg.asset(
    key_prefix=SCHEMA,
    group_name=GROUP,
    ins={
        **FEATURE_INS,
        "walk_forward_folds": dg.AssetIn(key=dg.AssetKey([SCHEMA, "walk_forward_folds"])),
        "normalisation_stats": dg.AssetIn(key=dg.AssetKey([SCHEMA, "normalisation_stats"])),
    },
    kinds={"duckdb", "polars", "numpy"},
)
def training_windows(
    context: AssetExecutionContext,
    feature_settings: FeatureSettings,
    carry_features: pl.DataFrame,
    sentiment_windows: pl.DataFrame,
    walk_forward_folds: pl.DataFrame,
    normalisation_stats: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """Manifest of the normalised per-fold feature arrays written once as `.npy` under
    `feature_settings.windows_root`; open them with `lib.features.windows.open_windows`."""
    cfg = feature_settings.pipeline()
    root = feature_settings.windows_root
    with failing_clearly():
        features = combine_features(carry_features, sentiment_windows)
        key = windows_key(features, normalisation_stats, walk_forward_folds, cfg.windows)
        reused = windows_exist(root, key)
        manifest = write_training_windows(
            features,
            normalisation_stats,
            walk_forward_folds,
            root,
            cfg.windows,
            bar=parse_duration(cfg.bars.bar),
        )
    done = "reused (same inputs, nothing written)" if reused else "written"
    context.log.info(f"training windows {done} in {root}/{key}")
    return dg.Output(
        manifest,
        metadata={
            "key": key,
            "reused": reused,
            "folder": dg.MetadataValue.path(
                f"{feature_settings.windows_root}/{manifest['key'][0]}"
            ),
            "arrays": manifest.height,
            "windows": int(manifest["n_windows"].sum()),
            "lookback": cfg.windows.lookback,
        },
    )
