"""The champion as a paper-trading policy: its meta-controller and experts on the paper env's bars.

A saved meta-controller acts on windows of normalised features (`WindowSet`), which the pipeline
builds only for the spans it trained and tested on. A paper session trades later bars, so it gets
windows of its own, built here with the pipeline's window function (`fold_tensor`, the `test`
segment logic) over the paper feed's own feature values, normalised with the champion fold's
statistics from `datasets.normalisation_stats`, with that fold's lookback, method and clip from
its `datasets.training_windows` row. The window at a bar ends at the latest bar at or before it
(`window_index`), and every value in it was computed from data stamped at or before that bar: no
look-ahead. The first `lookback - 1` bars of a session have no complete window; the models see
zeros and `window_valid = 0` there, as training saw on such bars.

The paper feed must carry exactly the champion's window features; a missing or extra feature, other
symbols, or a model whose observation space differs is a `ChampionError` naming what and where.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl

from carry_env.env import CarryTradeEnv
from carry_env.market import MarketData
from carry_pipeline.lib.duckdb_io import utc_frame
from carry_pipeline.lib.evaluation.policies import MetaBacktestPolicy, load_meta_policy
from carry_pipeline.lib.features.windows import TrainingWindowsConfig, fold_tensor
from carry_pipeline.lib.training.observation import WindowSet


class ChampionError(ValueError):
    """The champion cannot run on the paper feed: the message names what is missing and where."""


@dataclass(frozen=True)
class ChampionSource:
    """Which saved meta-controller a session runs and the fold whose windows it was trained on.

    Attributes:
        champion_id: the `models.champion` id, or the folder for a model given by path.
        model_path: the meta-controller's folder.
        fold: its fold in `models.meta_controller` (the latest window for a champion).
    """

    champion_id: str
    model_path: str
    fold: int


def _query(database: str, sql: str, params: list[Any], table: str, asset: str) -> pl.DataFrame:
    # A read-only query; a missing table is a ChampionError naming the asset that writes it.
    con = duckdb.connect(database, read_only=True)
    try:
        return utc_frame(con.sql(sql, params=params or None).pl())
    except duckdb.CatalogException as exc:
        raise ChampionError(f"{database} has no {table} table; materialise {asset} first") from exc
    finally:
        con.close()


def champion_source(database: str, champion_id: str | None = None) -> ChampionSource:
    """The `models.champion` row of `champion_id`, or the row promoted last when None.

    Raises:
        ChampionError: no `models.champion` table, no row in it, or none with that id.
    """
    where, params = ("where champion_id = ? ", [champion_id]) if champion_id else ("", [])
    rows = _query(
        database,
        f"select champion_id, model_path, fold from models.champion {where}"
        "order by promoted_at desc limit 1",
        params,
        "models.champion",
        "reports/champion_model",
    )
    if rows.height == 0:
        raise ChampionError(
            f"{database}: models.champion has no row for champion {champion_id!r}"
            if champion_id
            else f"{database}: models.champion is empty; no champion has been promoted"
        )
    r = rows.row(0, named=True)
    return ChampionSource(str(r["champion_id"]), str(r["model_path"]), int(r["fold"]))


def model_folder_source(database: str, model_path: str) -> ChampionSource:
    """A meta-controller given by folder: its fold from `models.meta_controller`.

    Raises:
        ChampionError: the folder does not exist, or no `models.meta_controller` row names it.
    """
    if not Path(model_path).is_dir():
        raise ChampionError(f"model folder {model_path} does not exist")
    rows = _query(
        database,
        "select fold from models.meta_controller where model_path = ? order by fold desc",
        [model_path],
        "models.meta_controller",
        "models/meta_controller",
    )
    if rows.height == 0:
        raise ChampionError(
            f"{database}: no models.meta_controller row has model_path {model_path}; a paper "
            "session needs its fold's normalisation statistics"
        )
    return ChampionSource(model_path, model_path, int(rows["fold"][0]))


@dataclass(frozen=True)
class WindowSettings:
    """The champion fold's window shape and normalisation (its `training_windows` train row)."""

    fold: int
    config: TrainingWindowsConfig
    symbols: tuple[str, ...]
    features: tuple[str, ...]
    stats: pl.DataFrame


def window_settings(database: str, fold: int) -> WindowSettings:
    """The fold's `datasets.training_windows` train row and its `datasets.normalisation_stats`.

    Raises:
        ChampionError: a table is missing, or holds no row for the fold.
    """
    manifest = _query(
        database,
        "select * from datasets.training_windows where fold = ? and segment = 'train'",
        [fold],
        "datasets.training_windows",
        "datasets/training_windows",
    )
    if manifest.height != 1:
        raise ChampionError(
            f"{database}: datasets.training_windows has {manifest.height} train rows for fold "
            f"{fold}, expected 1"
        )
    stats = _query(
        database,
        "select * from datasets.normalisation_stats where fold = ?",
        [fold],
        "datasets.normalisation_stats",
        "datasets/normalisation_stats",
    )
    if stats.height == 0:
        raise ChampionError(f"{database}: datasets.normalisation_stats has no rows for fold {fold}")
    r = manifest.row(0, named=True)
    config = TrainingWindowsConfig(lookback=int(r["lookback"]), method=r["method"], clip=r["clip"])
    symbols, features = tuple(json.loads(r["symbols"])), tuple(json.loads(r["features"]))
    return WindowSettings(fold, config, symbols, features, stats)


def feature_frame(market: MarketData, features: tuple[str, ...]) -> pl.DataFrame:
    """`ts`, `symbol`, `warmup` (False) and the `features` columns, in that order, of `market`.

    Raises:
        ChampionError: the market lacks a feature, or has one the champion was not trained on.
    """
    have = set(market.feature_names)
    missing, extra = sorted(set(features) - have), sorted(have - set(features))
    if missing or extra:
        raise ChampionError(
            f"observation mismatch: the champion's windows have features missing from the paper "
            f"feed {missing} and the feed has features the champion never saw {extra}"
        )
    n_t, n_s = market.n_bars, market.n_symbols
    idx = [market.feature_names.index(f) for f in features]
    values = market.features[:, :, idx].reshape(n_t * n_s, len(idx))
    ts = pl.Series("ts", np.repeat(market.ts.astype(np.int64), n_s)).cast(pl.Datetime("ns"))
    frame = pl.DataFrame(
        {
            "ts": ts.dt.replace_time_zone("UTC").cast(pl.Datetime("us", "UTC")),
            "symbol": list(market.symbols) * n_t,
            "warmup": [False] * (n_t * n_s),
        }
    )
    return frame.with_columns(
        [pl.Series(f, values[:, j], dtype=pl.Float64) for j, f in enumerate(features)]
    )


def paper_windows(market: MarketData, settings: WindowSettings) -> WindowSet:
    """Windows over every bar of `market`, normalised with the champion fold's statistics.

    Raises:
        ChampionError: other symbols or features than the champion's, or fewer bars than one
            window needs.
    """
    if tuple(market.symbols) != settings.symbols:
        raise ChampionError(
            f"observation mismatch: the champion (fold {settings.fold}) trades "
            f"{list(settings.symbols)}, the paper feed {list(market.symbols)}"
        )
    frame = feature_frame(market, settings.features)
    bar = timedelta(seconds=market.bar_seconds)
    first = datetime.fromtimestamp(int(market.ts[0]) / 1e9, tz=UTC)
    last = datetime.fromtimestamp(int(market.ts[-1]) / 1e9, tz=UTC)
    span = {"fold": settings.fold, "test_start": first, "test_end": last + bar}
    try:
        values, ts_us, first_row, (lo, hi) = fold_tensor(
            frame, settings.stats, span, "test", bar, settings.config
        )
    except ValueError as exc:
        raise ChampionError(f"paper windows of fold {settings.fold}: {exc}") from exc
    return WindowSet(
        values=values,
        ts_us=ts_us,
        lookback=settings.config.lookback,
        first_window_row=first_row,
        symbols=settings.symbols,
        features=settings.features,
        fold=settings.fold,
        segment="paper",
        span=(lo, hi),
    )


class ChampionPolicy:
    """A `MetaBacktestPolicy` for the paper session: SB3's `predict`, `reset(env)`, and `explain`
    (the experts' suggestions and the gating weights of the last decision, for `paper.decisions`).
    """

    def __init__(self, meta: MetaBacktestPolicy, source: ChampionSource) -> None:
        self.meta, self.source = meta, source

    def reset(self, env: CarryTradeEnv) -> None:
        """Build the gathers for `env` (see `MetaBacktestPolicy.reset`)."""
        try:
            self.meta.reset(env)
        except ValueError as exc:
            raise ChampionError(f"champion {self.source.champion_id}: {exc}") from exc

    def restart(self) -> None:
        """Start a new episode on the same env (see `MetaBacktestPolicy.restart`)."""
        self.meta.restart()

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """The meta-controller's action at the env's current bar."""
        return self.meta.predict(observation, state, episode_start, deterministic)

    def get_state(self) -> dict[str, Any]:
        """The meta-controller's state between bars (`MetaBacktestPolicy.get_state`)."""
        return self.meta.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a `get_state()` on resume (`MetaBacktestPolicy.set_state`)."""
        try:
            self.meta.set_state(state)
        except ValueError as exc:
            raise ChampionError(f"champion {self.source.champion_id}: {exc}") from exc

    def explain(self, observation: np.ndarray) -> dict[str, Any]:
        """The last decision's expert outputs (and the anomaly multiplier) and gating weights."""
        return self.meta.last_decision()


def load_champion_policy(
    database: str, source: ChampionSource, market: MarketData
) -> ChampionPolicy:
    """The champion's meta-controller and experts on windows of `market` (module docstring).

    Raises:
        ChampionError: the model folder is gone, or the windows' settings or features do not fit.
    """
    settings = window_settings(database, source.fold)
    windows = paper_windows(market, settings)
    try:
        meta = load_meta_policy(source.model_path, windows, fold=source.fold)
    except FileNotFoundError as exc:
        raise ChampionError(f"champion {source.champion_id}: {exc}") from exc
    return ChampionPolicy(meta, source)
