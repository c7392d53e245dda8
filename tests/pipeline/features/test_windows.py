"""Tests of carry_pipeline/lib/features/windows.py: write once, zero-copy windows, no test
leakage."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from carry_pipeline.lib.features.normalisation import apply_normalisation
from carry_pipeline.lib.features.windows import (
    TrainingWindowsConfig,
    open_windows,
    write_training_windows,
)

BAR = timedelta(minutes=15)


@pytest.fixture(scope="module")
def written(pipeline_out: dict, short_config, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    root = tmp_path_factory.mktemp("windows")
    manifest = write_training_windows(
        pipeline_out["features"],
        pipeline_out["normalisation_stats"],
        pipeline_out["walk_forward_folds"],
        root,
        short_config.windows,
        bar=BAR,
    )
    return root, manifest


def test_manifest_covers_every_fold_and_segment(written, pipeline_out: dict) -> None:  # noqa: ANN001
    _, manifest = written
    folds = pipeline_out["walk_forward_folds"]
    expected = 2 * folds.filter(~pl.col("is_latest")).height + 1
    assert manifest.height == expected
    assert set(manifest["segment"]) == {"train", "test"}
    assert json.loads(manifest["symbols"][0]) == ["BTC/USDT:USDT", "ETH/USDT:USDT"]
    assert all(Path(p).exists() for p in manifest["values_path"])


def test_train_windows_never_reach_the_test_span(written, pipeline_out: dict) -> None:  # noqa: ANN001
    _, manifest = written
    folds = {r["fold"]: r for r in pipeline_out["walk_forward_folds"].iter_rows(named=True)}
    for row in manifest.iter_rows(named=True):
        fold = folds[row["fold"]]
        windows, end_ts = open_windows(row)
        ts = np.load(row["ts_path"])
        assert windows.shape == (
            row["n_windows"],
            row["lookback"],
            row["n_symbols"],
            row["n_features"],
        )
        if row["segment"] == "train":
            # Every row of a train array lies in the train span: no test or embargo bar can leak.
            assert (
                row["last_ts"] < fold["train_end"]
                and row["first_window_end"] >= fold["train_start"]
            )
        else:
            assert row["first_window_end"] == fold["test_start"]
            assert row["last_ts"] < fold["test_end"]
        assert len(end_ts) == row["n_windows"] and end_ts[-1] == ts[-1]


def test_windows_are_zero_copy_views_of_the_normalised_features(
    written,
    pipeline_out: dict,  # noqa: ANN001
) -> None:
    _, manifest = written
    row = manifest.filter((pl.col("fold") == 1) & (pl.col("segment") == "test")).row(0, named=True)
    windows, end_ts = open_windows(row)
    # The view's chain of bases ends in the memory map of the file: nothing was copied.
    chain, base = [], windows
    while base is not None:
        chain.append(base)
        base = getattr(base, "base", None)
    assert any(isinstance(b, np.memmap) or type(b).__name__ == "mmap" for b in chain)
    assert not windows.flags.writeable and not windows.flags.owndata
    # Window k ends at end_ts[k] and holds the lookback bars up to it, normalised with fold 1's
    # stats.
    k = 10
    features = pipeline_out["features"]
    stats = pipeline_out["normalisation_stats"]
    norm = apply_normalisation(features, stats, 1, method="standard", clip=10.0)
    cols = json.loads(row["features"])
    end = pl.Series([int(end_ts[k])]).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")[0]
    expected = (
        norm.filter((pl.col("ts") <= end) & (pl.col("ts") > end - row["lookback"] * BAR))
        .sort("ts", "symbol")
        .select(cols)
        .to_numpy()
        .astype(np.float32)
        .reshape(row["lookback"], row["n_symbols"], len(cols))
    )
    np.testing.assert_array_equal(windows[k], expected)


def test_written_once_and_reused(written, pipeline_out: dict, short_config) -> None:  # noqa: ANN001
    root, manifest = written
    stamps = {p: Path(p).stat().st_mtime_ns for p in manifest["values_path"]}
    again = write_training_windows(
        pipeline_out["features"],
        pipeline_out["normalisation_stats"],
        pipeline_out["walk_forward_folds"],
        root,
        short_config.windows,
        bar=BAR,
    )
    assert again.equals(manifest)
    assert {p: Path(p).stat().st_mtime_ns for p in again["values_path"]} == stamps
    # Other settings are other arrays, in another folder.
    other = write_training_windows(
        pipeline_out["features"],
        pipeline_out["normalisation_stats"],
        pipeline_out["walk_forward_folds"],
        root,
        TrainingWindowsConfig(lookback=8),
        bar=BAR,
    )
    assert other["key"][0] != manifest["key"][0]
    assert not any(p.name.startswith(".") for p in Path(root).iterdir())


def test_normalised_train_arrays_are_standardised(written) -> None:  # noqa: ANN001
    _, manifest = written
    row = manifest.filter((pl.col("fold") == 0) & (pl.col("segment") == "train")).row(0, named=True)
    values = np.load(row["values_path"]).reshape(-1, row["n_features"]).astype(np.float64)
    # Clipping at 10 sigma barely moves the moments of the train span.
    np.testing.assert_allclose(values.mean(axis=0), 0.0, atol=0.02)
    spread = values.std(axis=0)
    assert ((np.abs(spread - 1.0) < 0.02) | (spread == 0.0)).all()


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="lookback must be >= 1"):
        TrainingWindowsConfig(lookback=0)
