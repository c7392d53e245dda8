"""Checks of the feature assets, each named for the invariant that passes.

All are blocking: a failure stops the dataset and training assets downstream in the same run, and
the metadata names what failed.
"""

import dagster as dg
import polars as pl

from carry_pipeline.defs.features.assets import (
    RAW,
    SCHEMA,
    carry_features,
    market_bars,
    sentiment_windows,
)
from carry_pipeline.defs.features.resources import FeatureSettings
from carry_pipeline.lib.features.carry import check_same_grid
from carry_pipeline.lib.features.point_in_time import sample_point_in_time
from carry_pipeline.lib.features.timeframes import share


def non_finite_after_warmup(frame: pl.DataFrame) -> dict[str, int]:
    """Null, NaN or infinite values per `f_` column outside the warm-up (non-zero counts only)."""
    cols = [c for c in frame.columns if c.startswith("f_")]
    live = frame.filter(~pl.col("warmup"))
    if live.height == 0:
        return {"<no rows after the warm-up>": frame.height}
    counts = live.select(pl.col(cols).is_finite().not_().fill_null(True).sum()).row(0, named=True)
    return {c: n for c, n in counts.items() if n}


@dg.asset_check(asset=market_bars, blocking=True)
def every_symbol_on_same_grid(market_bars: pl.DataFrame) -> dg.AssetCheckResult:
    """Every symbol has the same regular grid of bar closes, with prices, depth and spread."""
    problems: list[str] = []
    try:
        check_same_grid(market_bars, what="market_bars")
    except ValueError as exc:
        problems.append(str(exc))
    required = ["spot_price", "perp_price", "spot_depth_usd", "perp_depth_usd", "spread_bps"]
    nulls = market_bars.select(pl.col(required).null_count()).row(0, named=True)
    problems += [f"{c}: {n} nulls" for c, n in nulls.items() if n]
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems) or "one regular grid, no missing prices, depth or spread",
        metadata={"symbols": market_bars["symbol"].n_unique(), "rows": market_bars.height},
    )


@dg.asset_check(asset=carry_features, blocking=True)
def no_nan_after_warmup(carry_features: pl.DataFrame) -> dg.AssetCheckResult:
    """No null, NaN or infinite feature after the warm-up, and one grid for every symbol."""
    bad = non_finite_after_warmup(carry_features)
    try:
        check_same_grid(carry_features, what="carry_features")
    except ValueError as exc:
        bad["<grid>"] = 1
        return dg.AssetCheckResult(passed=False, description=str(exc), metadata={"bad": str(bad)})
    return dg.AssetCheckResult(
        passed=not bad,
        description=f"non-finite values after the warm-up: {bad}" if bad else "all finite",
        metadata={"bad_columns": len(bad), "rows_checked": carry_features.height},
    )


@dg.asset_check(asset=sentiment_windows, blocking=True)
def sentiment_finite_after_warmup(sentiment_windows: pl.DataFrame) -> dg.AssetCheckResult:
    """No null, NaN or infinite sentiment feature after the warm-up."""
    bad = non_finite_after_warmup(sentiment_windows)
    return dg.AssetCheckResult(
        passed=not bad,
        description=f"non-finite values after the warm-up: {bad}" if bad else "all finite",
        metadata={"stale_share": share(sentiment_windows["f_sent_stale"])},
    )


@dg.asset_check(
    asset=carry_features,
    blocking=True,
    additional_ins={
        **{name: dg.AssetIn(key=key) for name, key in RAW.items()},
        "sentiment_scores": dg.AssetIn(key=dg.AssetKey([SCHEMA, "sentiment_scores"])),
    },
)
def point_in_time_on_sampled_cutoffs(
    feature_settings: FeatureSettings,
    raw_spot_ohlcv: pl.DataFrame,
    raw_perp_ohlcv: pl.DataFrame,
    raw_funding_rates: pl.DataFrame,
    raw_order_book: pl.DataFrame,
    sentiment_scores: pl.DataFrame,
) -> dg.AssetCheckResult:
    """Perturbing every input known after a sampled cut-off t changes no market bar, carry feature
    or sentiment window at or before t (see `lib/features/point_in_time.py`)."""
    raw = {
        "spot": raw_spot_ohlcv,
        "perp": raw_perp_ohlcv,
        "funding": raw_funding_rates,
        "order_book": raw_order_book,
        "sentiment": sentiment_scores,
    }
    try:
        samples = sample_point_in_time(
            raw,
            feature_settings.pipeline(),
            n_samples=feature_settings.pit_samples,
            history=feature_settings.pit_history,
            future=feature_settings.pit_future,
            seed=feature_settings.pit_seed,
        )
    except ValueError as exc:
        return dg.AssetCheckResult(passed=False, description=f"could not run the check: {exc}")
    problems = [f"t={s.t}: {p}" for s in samples for p in s.problems]
    return dg.AssetCheckResult(
        passed=not problems,
        description="; ".join(problems[:10]) or "no output at or before any cut-off changed",
        metadata={"cutoffs": ", ".join(str(s.t) for s in samples), "problems": len(problems)},
    )
