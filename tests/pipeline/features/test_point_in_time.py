"""Tests of carry_pipeline/lib/features/point_in_time.py: the perturbation proof on the full feature
set, and that it catches look-ahead when there is some."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from carry_pipeline.lib.features import carry as carry_module
from carry_pipeline.lib.features.point_in_time import (
    _frame_diff,
    check_point_in_time,
    perturb_after,
    sample_point_in_time,
)


def cutoffs(pipeline_out: dict) -> list:
    folds = pipeline_out["walk_forward_folds"]
    fold1 = folds.filter(pl.col("fold") == 1).row(0, named=True)
    features = pipeline_out["features"]
    first_live = features.filter(~pl.col("warmup"))["ts"].min()
    return [
        # Inside the warm-up: only bars and partial features exist.
        first_live - timedelta(days=3, minutes=45),
        # Right after fold 0's train span and before its test span: its stats and windows are fixed.
        fold1["train_end"] - timedelta(days=6),
        # After fold 1's train end, 7 minutes past a bar close (between two bars).
        fold1["train_end"] + timedelta(hours=5, minutes=7),
        # On a funding settlement (00:00 UTC), inside fold 2's test span.
        folds.filter(pl.col("fold") == 2)["test_start"][0].replace(hour=0, minute=0)
        + timedelta(days=2),
    ]


@pytest.mark.slow
def test_nothing_at_or_before_t_changes_when_the_future_does(
    raw_long: dict,
    short_config,
    pipeline_out: dict,  # noqa: ANN001
) -> None:
    folds = pipeline_out["walk_forward_folds"]
    checked_stats = 0
    for k, t in enumerate(cutoffs(pipeline_out)):
        assert check_point_in_time(raw_long, t, short_config, seed=k) == []
        checked_stats += folds.filter(pl.col("train_end") <= t).height
    # The cut-offs do reach folds whose statistics and windows are compared.
    assert checked_stats >= 3


def test_perturbation_changes_everything_after_t(raw_long: dict, pipeline_out: dict) -> None:
    t = pipeline_out["features"]["ts"][5000]
    moved = perturb_after(raw_long, t, seed=1)
    for key, col, time_col in (
        ("spot", "close", "ts"),
        ("funding", "funding_rate", "funding_time"),
        ("sentiment", "score", "published_at"),
        ("order_book", "spread_bps", "ts"),
    ):
        before = raw_long[key].filter(pl.col(time_col) <= t - timedelta(minutes=15))
        after = raw_long[key].filter(pl.col(time_col) > t)
        m_before = moved[key].filter(pl.col(time_col) <= t - timedelta(minutes=15))
        m_after = moved[key].filter(pl.col(time_col) > t)
        assert before[col].equals(m_before[col]), key
        assert (after[col] != m_after[col]).mean() > 0.5, key


def test_a_leaky_feature_is_caught(
    raw_long: dict,
    short_config,
    pipeline_out: dict,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    real = carry_module._symbol_features

    def leaky(lf, bar, cfg):  # noqa: ANN001, ANN202
        # A centred rolling mean: uses the next bars' closes.
        out = real(lf, bar, cfg)
        return out.with_columns(
            pl.col("f_basis_bps").rolling_mean(5, center=True).alias("f_smooth_basis")
        )

    monkeypatch.setattr(carry_module, "_symbol_features", leaky)
    t = cutoffs(pipeline_out)[1]
    problems = check_point_in_time(raw_long, t, short_config, seed=3)
    assert any("carry_features.f_smooth_basis changed" in p for p in problems)
    assert any("normalisation_stats" in p for p in problems) or any(
        "training windows" in p for p in problems
    )


def test_sampled_check_is_cheap_and_clean(raw_long: dict, short_config) -> None:  # noqa: ANN001
    samples = sample_point_in_time(raw_long, short_config, n_samples=2, seed=4)
    assert len(samples) == 2
    assert all(s.problems == () for s in samples)


def test_sampled_check_needs_enough_history(raw_long: dict, short_config) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="shorter than history 200d"):
        sample_point_in_time(raw_long, short_config, history="200d")


def test_market_frame_is_accepted_by_the_env(pipeline_out: dict) -> None:
    from carry_env.market import MarketData
    from carry_pipeline.lib.features.pipeline import build_market_frame

    frame = build_market_frame(
        pipeline_out["market_bars"],
        pipeline_out["carry_features"],
        pipeline_out["sentiment_windows"],
    )
    market = MarketData.from_frame(frame)
    n_features = sum(c.startswith("f_") for c in frame.columns)
    assert market.symbols == ("BTC/USDT:USDT", "ETH/USDT:USDT")
    assert market.features.shape == (frame.height // 2, 2, n_features)
    # Funding is passed through, null (NaN) where nothing settles, never 0-filled.
    settled = frame.filter(pl.col("symbol") == "BTC/USDT:USDT")["funding_rate"].is_not_null()
    assert int(np.isfinite(market.funding[:, 0]).sum()) == int(settled.sum())
    assert np.isfinite(market.features).all() and np.isfinite(market.sentiment).all()


def test_frame_diff_sees_a_new_nan_and_the_cutoff_bar() -> None:
    bar = timedelta(minutes=15)
    t = datetime(2024, 1, 2, tzinfo=UTC)
    ts = [t - 2 * bar, t - bar, t, t + bar]
    a = pl.DataFrame({"ts": ts, "f_x": [1.0, 2.0, 3.0, 4.0], "f_y": [1.0, float("nan"), 1.0, 1.0]})
    assert _frame_diff(a, a, t, "f") == []
    # f_x changes at t exactly; f_y turns NaN at t - 2 bars and stops being NaN at t - 1 bar.
    b = a.with_columns(
        pl.Series("f_x", [1.0, 2.0, 3.5, 9.0]), pl.Series("f_y", [float("nan"), 1.0, 1.0, 1.0])
    )
    problems = _frame_diff(a, b, t, "f")
    assert any(p.startswith(f"f.f_x changed at {t}") for p in problems), problems
    assert any(p.startswith(f"f.f_y changed at {t - 2 * bar} (2 values)") for p in problems)
    # Only the value after t changed: no problem.
    assert _frame_diff(a, a.with_columns(pl.Series("f_x", [1.0, 2.0, 3.0, 9.0])), t, "f") == []
