"""`training_windows`: normalised feature tensors per fold, written once as `.npy` files that
training memory-maps, with a manifest.

For each fold and segment the features are normalised with that fold's train statistics and stacked
into a float32 array of shape `(T, S, F)` (time, symbol, feature; symbols and features in the
manifest's order), saved with its bar close times (`int64` microseconds since the epoch). A window
is `lookback` consecutive rows; `open_windows` returns them all as a read-only, zero-copy view
`(n_windows, lookback, S, F)` over the memory-mapped file.

Segments: `train` holds only rows of the train span (so no window of it sees a bar of the test span,
nor of the embargo); `test` holds the test span plus the `lookback - 1` bars before it (past data,
which a window ending at the first test bar needs); the latest window has a `train` segment only.

Files live under `<root>/<key>/`, where `key` hashes the features, statistics, folds and settings:
the same inputs are written once and reused, new inputs get a new folder, and a half-written folder
is never visible (it is renamed into place when complete).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from carry_pipeline.lib.features.normalisation import apply_normalisation, feature_columns
from carry_pipeline.lib.schemas import UTC_TS

MANIFEST_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.String(),
    "fold": pl.Int64(),
    "segment": pl.String(),
    "values_path": pl.String(),
    "ts_path": pl.String(),
    "n_rows": pl.Int64(),
    "n_symbols": pl.Int64(),
    "n_features": pl.Int64(),
    "lookback": pl.Int64(),
    "n_windows": pl.Int64(),
    "first_window_row": pl.Int64(),
    "first_window_end": UTC_TS,
    "last_ts": UTC_TS,
    "span_start": UTC_TS,
    "span_end": UTC_TS,
    "method": pl.String(),
    "clip": pl.Float64(),
    "symbols": pl.String(),
    "features": pl.String(),
}
"""Columns of the `training_windows` manifest; `symbols` and `features` are JSON lists."""


@dataclass(frozen=True)
class TrainingWindowsConfig:
    """Shape and normalisation of the training windows."""

    lookback: int = 64
    """Bars per window (64 fifteen-minute bars = 16 hours)."""
    method: Literal["standard", "robust"] = "standard"
    """Which statistics normalise the features: mean/std or median/IQR."""
    clip: float | None = 10.0
    """Normalised values are clipped to [-clip, clip]; None keeps them as they are."""

    def __post_init__(self) -> None:
        if self.lookback < 1:
            raise ValueError(f"lookback must be >= 1, got {self.lookback}")
        if self.method not in ("standard", "robust"):
            raise ValueError(f"method must be 'standard' or 'robust', got {self.method!r}")
        if self.clip is not None and self.clip <= 0:
            raise ValueError(f"clip must be > 0 or None, got {self.clip}")


def fold_tensor(
    features: pl.DataFrame,
    stats: pl.DataFrame,
    fold: dict,
    segment: Literal["train", "test"],
    bar: timedelta,
    config: TrainingWindowsConfig,
) -> tuple[np.ndarray, np.ndarray, int, tuple[datetime, datetime]]:
    """The normalised `(T, S, F)` array of one fold's segment.

    Args:
        features: `ts`, `symbol`, `warmup` and `f_` columns, every symbol on the same grid.
        stats: `normalisation_stats`.
        fold: one row of `walk_forward_folds` as a dict.
        segment: `train` or `test`.
        bar: the grid's bar.
        config: lookback and normalisation.

    Returns:
        `(values, ts_us, first_window_row, (span_start, span_end))`: float32 values, int64 bar close
        times, the row at which the first window of the segment ends, and the segment's span.

    Raises:
        ValueError: the segment has fewer rows than `lookback`.
    """
    if segment == "train":
        lo, hi = fold["train_start"], fold["train_end"]
        rows_from = lo
    else:
        lo, hi = fold["test_start"], fold["test_end"]
        rows_from = lo - (config.lookback - 1) * bar
    part = features.filter(
        (pl.col("ts") >= rows_from) & (pl.col("ts") < hi) & ~pl.col("warmup")
    ).sort("ts", "symbol")
    part = apply_normalisation(part, stats, fold["fold"], method=config.method, clip=config.clip)
    symbols = sorted(part["symbol"].unique().to_list())
    cols = feature_columns(part)
    n_t = part["ts"].n_unique()
    values = part.select(cols).to_numpy().astype(np.float32).reshape(n_t, len(symbols), len(cols))
    ts = part["ts"].unique(maintain_order=True).dt.epoch("us").to_numpy()
    first_row = int(np.searchsorted(ts, _dt_to_us(lo)))
    first_row = max(first_row, config.lookback - 1)
    if n_t < config.lookback or first_row >= n_t:
        raise ValueError(
            f"fold {fold['fold']} {segment}: {n_t} bars in {lo}..{hi} after the warm-up, "
            f"fewer than a {config.lookback}-bar window needs"
        )
    return values, ts, first_row, (lo, hi)


def write_training_windows(
    features: pl.DataFrame,
    stats: pl.DataFrame,
    folds: pl.DataFrame,
    root: str | Path,
    config: TrainingWindowsConfig | None = None,
    *,
    bar: timedelta,
) -> pl.DataFrame:
    """Write every fold's normalised arrays once under `root` and return the manifest.

    Args:
        features: `ts`, `symbol`, `warmup` and `f_` columns (carry and sentiment features joined).
        stats: `normalisation_stats`.
        folds: `walk_forward_folds`.
        root: folder for the arrays (e.g. `data/windows`).
        config: lookback and normalisation; defaults to `TrainingWindowsConfig()`.
        bar: the grid's bar.

    Returns:
        The manifest, one row per (fold, segment), in `MANIFEST_SCHEMA`.
    """
    cfg = config or TrainingWindowsConfig()
    root = Path(root)
    key = windows_key(features, stats, folds, cfg)
    target = root / key
    manifest_path = target / "manifest.parquet"
    if manifest_path.exists():
        return _read_manifest(manifest_path)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        rows = []
        symbols = sorted(features["symbol"].unique().to_list())
        cols = feature_columns(features)
        for fold in folds.sort("fold").iter_rows(named=True):
            segments: tuple[Literal["train", "test"], ...] = (
                ("train",) if fold["is_latest"] else ("train", "test")
            )
            for segment in segments:
                values, ts, first_row, (lo, hi) = fold_tensor(
                    features, stats, fold, segment, bar, cfg
                )
                name = f"fold{fold['fold']}_{segment}"
                np.save(staging / f"{name}.npy", values)
                np.save(staging / f"{name}_ts.npy", ts)
                rows.append(
                    {
                        "key": key,
                        "fold": fold["fold"],
                        "segment": segment,
                        "values_path": str(target / f"{name}.npy"),
                        "ts_path": str(target / f"{name}_ts.npy"),
                        "n_rows": values.shape[0],
                        "n_symbols": values.shape[1],
                        "n_features": values.shape[2],
                        "lookback": cfg.lookback,
                        "n_windows": values.shape[0] - first_row,
                        "first_window_row": first_row,
                        "first_window_end": _us_to_dt(ts[first_row]),
                        "last_ts": _us_to_dt(ts[-1]),
                        "span_start": lo,
                        "span_end": hi,
                        "method": cfg.method,
                        "clip": cfg.clip,
                        "symbols": json.dumps(symbols),
                        "features": json.dumps(cols),
                    }
                )
        manifest = pl.DataFrame(rows, schema=MANIFEST_SCHEMA)
        manifest.write_parquet(staging / "manifest.parquet")
        try:
            os.rename(staging, target)
        except OSError:
            # Another run wrote the same key first: its files are identical; keep them.
            if not manifest_path.exists():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return _read_manifest(manifest_path)


def windows_exist(root: str | Path, key: str) -> bool:
    """Whether `<root>/<key>/` holds a complete set of windows (its manifest is written last)."""
    return (Path(root) / key / "manifest.parquet").is_file()


def open_windows(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map one manifest row's array and return its windows without copying.

    Args:
        row: a manifest row as a dict.

    Returns:
        `(windows, end_ts)`: a read-only view of shape `(n_windows, lookback, S, F)` and the bar
        close time (int64 microseconds) at which each window ends.
    """
    values = np.load(row["values_path"], mmap_mode="r")
    ts = np.load(row["ts_path"], mmap_mode="r")
    lookback, first = row["lookback"], row["first_window_row"]
    view = np.lib.stride_tricks.sliding_window_view(values, lookback, axis=0)
    windows = np.moveaxis(view, -1, 1)[first - lookback + 1 :]
    return windows, ts[first:]


def windows_key(
    features: pl.DataFrame,
    stats: pl.DataFrame,
    folds: pl.DataFrame,
    cfg: TrainingWindowsConfig | None = None,
) -> str:
    """The folder name `write_training_windows` writes these inputs under: a hash of the
    features (row by row, in order), the statistics, the folds and the settings."""
    cfg = cfg or TrainingWindowsConfig()
    digest = hashlib.sha256()
    digest.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    digest.update(json.dumps(features.columns).encode())
    digest.update(str(features.height).encode())
    digest.update(features.hash_rows(seed=0).to_numpy().tobytes())
    digest.update(stats.write_csv().encode())
    digest.update(folds.write_csv().encode())
    return digest.hexdigest()[:16]


def _read_manifest(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path).select([pl.col(c).cast(t) for c, t in MANIFEST_SCHEMA.items()])


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _dt_to_us(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


def _us_to_dt(us: int | np.integer) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))
