"""The point-in-time proof: perturb every input known after a time t and show that nothing stamped
at or before t changes.

"Known after t" follows the raw contracts: a raw bar opening at `o` is known at its close `o + raw
bar`; a funding rate at its settlement time (floored to the second, as the schema normalises it); an
order-book snapshot at its `ts`; a sentiment score at its `published_at`. `perturb_after` rescales
every such value known after t with seeded noise (prices of a bar by one factor, so OHLC stays
consistent; funding shifted; depth, spreads, volumes rescaled; sentiment shifted), keeping the
timestamps, so the grid, the warm-up and the folds are the same and any difference at or before t
can only be look-ahead.

`compare_at_or_before` then checks market bars, carry features and sentiment windows at `ts <= t`,
the normalisation statistics of every fold whose train span ends at or before t, and those folds'
normalised arrays up to t. The tests run it on the full pipeline; the `carry_features` asset runs
`sample_point_in_time` on a few sampled timestamps as a blocking check.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from carry_pipeline.lib.features.pipeline import FeaturePipelineConfig, run_feature_pipeline
from carry_pipeline.lib.features.timeframes import infer_bar, parse_duration, ts_bounds


def perturb_after(
    raw: dict[str, pl.DataFrame], t: datetime, *, seed: int = 0
) -> dict[str, pl.DataFrame]:
    """Copies of the raw tables with every value known after `t` perturbed.

    Args:
        raw: raw tables keyed `spot`, `perp`, `funding`, and optionally `order_book`, `sentiment`.
        t: the cut-off (UTC).
        seed: noise seed.

    Returns:
        The same tables, same rows and timestamps, values after `t` changed.
    """
    rng = np.random.default_rng(seed)
    out = dict(raw)
    for key in ("spot", "perp"):
        frame = raw[key]
        parts = []
        for (_,), part in frame.group_by("symbol", maintain_order=True):
            raw_bar = infer_bar(part["ts"], what=key)
            after = (part["ts"] + raw_bar > t).to_numpy()
            factor = np.where(after, np.exp(rng.normal(0.0, 0.05, part.height)), 1.0)
            vol = np.where(after, rng.uniform(0.2, 5.0, part.height), 1.0)
            parts.append(
                part.with_columns(
                    *[pl.col(c) * pl.Series(factor) for c in ("open", "high", "low", "close")],
                    pl.col("volume") * pl.Series(vol),
                )
            )
        out[key] = pl.concat(parts)
    funding = raw["funding"]
    after = (funding["funding_time"].dt.truncate("1s") > t).to_numpy()
    out["funding"] = funding.with_columns(
        pl.col("funding_rate")
        + pl.Series(np.where(after, rng.normal(0.0, 1e-3, funding.height), 0.0))
    )
    book = raw.get("order_book")
    if book is not None and book.height:
        after = (book["ts"] > t).to_numpy()
        scale = pl.Series(np.where(after, rng.uniform(0.1, 3.0, book.height), 1.0))
        out["order_book"] = book.with_columns(
            pl.col("spread_bps") * scale,
            *[pl.col(c) * scale for c in book.columns if c.endswith("_usd")],
        )
    sentiment = raw.get("sentiment")
    if sentiment is not None and sentiment.height:
        after = (sentiment["published_at"] > t).to_numpy()
        shift = pl.Series(np.where(after, rng.normal(0.0, 0.5, sentiment.height), 0.0))
        out["sentiment"] = sentiment.with_columns((pl.col("score") + shift).clip(-1.0, 1.0))
    return out


def _frame_diff(a: pl.DataFrame, b: pl.DataFrame, t: datetime, name: str) -> list[str]:
    # Rows at or before t must be identical, value for value (nulls and NaN in the same places).
    a, b = a.filter(pl.col("ts") <= t), b.filter(pl.col("ts") <= t)
    if a.shape != b.shape:
        return [f"{name}: {a.height} rows at or before {t} became {b.height}"]
    problems = []
    for column in a.columns:
        x, y = a[column], b[column]
        if x.dtype.is_float():
            xs, ys = x.to_numpy(), y.to_numpy()
            same = (xs == ys) | (np.isnan(xs) & np.isnan(ys))
        else:
            same = ((x == y) | (x.is_null() & y.is_null())).fill_null(False).to_numpy()
        if not same.all():
            first = int(np.argmin(same))
            problems.append(
                f"{name}.{column} changed at {a['ts'][first]} ({int((~same).sum())} values) after "
                f"perturbing inputs known after {t}: look-ahead"
            )
    return problems


def compare_at_or_before(
    base: dict[str, object], perturbed: dict[str, object], t: datetime
) -> list[str]:
    """Every difference at or before `t` between two `run_feature_pipeline` outputs.

    Returns:
        One message per changed column, statistic or array; empty when point-in-time holds.
    """
    problems: list[str] = []
    for name in ("market_bars", "carry_features", "sentiment_windows"):
        a, b = base.get(name), perturbed.get(name)
        if isinstance(a, pl.DataFrame) and isinstance(b, pl.DataFrame):
            problems += _frame_diff(a, b, t, name)
    folds = base["walk_forward_folds"]
    assert isinstance(folds, pl.DataFrame)
    if not folds.equals(perturbed["walk_forward_folds"]):  # type: ignore[arg-type]
        problems.append("walk_forward_folds changed after perturbing inputs after t")
        return problems
    closed = folds.filter(pl.col("train_end") <= t)["fold"].to_list()
    stats_a, stats_b = base["normalisation_stats"], perturbed["normalisation_stats"]
    assert isinstance(stats_a, pl.DataFrame) and isinstance(stats_b, pl.DataFrame)
    sa = stats_a.filter(pl.col("fold").is_in(closed))
    sb = stats_b.filter(pl.col("fold").is_in(closed))
    if not sa.equals(sb):
        problems.append(f"normalisation_stats of folds {closed} (train spans end by {t}) changed")
    t_us = (t - datetime(1970, 1, 1, tzinfo=t.tzinfo)) // timedelta(microseconds=1)
    tensors_a, tensors_b = base["tensors"], perturbed["tensors"]
    assert isinstance(tensors_a, dict) and isinstance(tensors_b, dict)
    for (fold, segment), (values, ts) in tensors_a.items():
        if fold not in closed:
            continue
        other, _ = tensors_b[(fold, segment)]
        upto = int(np.searchsorted(ts, t_us, side="right"))
        if not np.array_equal(values[:upto], other[:upto], equal_nan=True):
            problems.append(f"training windows of fold {fold} {segment} changed at or before {t}")
    return problems


def check_point_in_time(
    raw: dict[str, pl.DataFrame],
    t: datetime,
    config: FeaturePipelineConfig | None = None,
    *,
    seed: int = 0,
) -> list[str]:
    """Run the pipeline on `raw` and on `raw` perturbed after `t`, and report differences at or
    before t.

    Args:
        raw: raw tables (see `perturb_after`).
        t: the cut-off.
        config: pipeline settings.
        seed: perturbation seed.

    Returns:
        Problems found; empty when every output at or before `t` is unchanged.
    """
    base = run_feature_pipeline(raw, config)
    perturbed = run_feature_pipeline(perturb_after(raw, t, seed=seed), config)
    return compare_at_or_before(base, perturbed, t)


@dataclass(frozen=True)
class PointInTimeSample:
    """One sampled cut-off and what changed at or before it."""

    t: datetime
    """The cut-off."""
    problems: tuple[str, ...]
    """Differences found; empty when point-in-time holds."""


def slice_raw(
    raw: dict[str, pl.DataFrame], start: datetime, end: datetime
) -> dict[str, pl.DataFrame]:
    """The raw rows whose event time lies in `[start, end)` (publication time for sentiment)."""
    keys = {
        "spot": "ts",
        "perp": "ts",
        "funding": "funding_time",
        "order_book": "ts",
        "sentiment": "published_at",
    }
    out = {}
    for name, frame in raw.items():
        if frame is None:
            continue
        col = pl.col(keys[name])
        out[name] = frame.filter((col >= start) & (col < end))
    return out


def sample_point_in_time(
    raw: dict[str, pl.DataFrame],
    config: FeaturePipelineConfig,
    *,
    n_samples: int = 2,
    history: str = "60d",
    future: str = "3d",
    seed: int = 0,
) -> list[PointInTimeSample]:
    """The point-in-time check on a few sampled cut-offs, cheap enough for a blocking asset check.

    Each sample takes the raw rows in `[t - history, t + future)` (the same slice before and after
    the perturbation) and compares market bars, carry features and sentiment windows at or before
    `t`; the folds and statistics are left to the full test, since they need the whole history.

    Args:
        raw: the full raw tables.
        config: pipeline settings (folds are not built here).
        n_samples: cut-offs to draw.
        history: data before each cut-off; longer than the features' warm-up.
        future: data after each cut-off, to perturb.
        seed: draws the cut-offs and the noise.

    Returns:
        One `PointInTimeSample` per cut-off.

    Raises:
        ValueError: the raw data is shorter than `history + future`.
    """
    from carry_pipeline.lib.features.bars import build_market_bars
    from carry_pipeline.lib.features.carry import build_carry_features
    from carry_pipeline.lib.features.sentiment import build_sentiment_windows

    bar = parse_duration(config.bars.bar)
    before, after = parse_duration(history), parse_duration(future)
    spot_first, spot_last = ts_bounds(raw["spot"]["ts"], what="raw_spot_ohlcv")
    perp_first, perp_last = ts_bounds(raw["perp"]["ts"], what="raw_perp_ohlcv")
    first, last = max(spot_first, perp_first), min(spot_last, perp_last)
    lo, hi = first + before, last - after
    if lo > hi:
        raise ValueError(
            f"point-in-time check: raw data {first}..{last} is shorter than history {history} + "
            f"future {future}"
        )
    rng = np.random.default_rng(seed)
    n_bars = (hi - lo) // bar
    samples = []
    for k in sorted(rng.integers(0, n_bars + 1, n_samples)):
        t = lo + int(k) * bar
        part = slice_raw(raw, t - before, t + after)
        runs = []
        for tables in (part, perturb_after(part, t, seed=seed + int(k))):
            bars = build_market_bars(
                tables["spot"],
                tables["perp"],
                tables["funding"],
                tables.get("order_book"),
                config.bars,
            )
            out: dict[str, object] = {
                "market_bars": bars,
                "carry_features": build_carry_features(bars, config.carry),
            }
            if tables.get("sentiment") is not None:
                out["sentiment_windows"] = build_sentiment_windows(
                    tables["sentiment"], bars["ts"], config.sentiment
                )
            runs.append(out)
        problems = []
        for name in ("market_bars", "carry_features", "sentiment_windows"):
            if name in runs[0]:
                problems += _frame_diff(runs[0][name], runs[1][name], t, name)  # type: ignore[arg-type]
        samples.append(PointInTimeSample(t=t, problems=tuple(problems)))
    return samples
