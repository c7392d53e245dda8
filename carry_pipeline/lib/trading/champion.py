"""The champion as a paper-trading policy: its meta-controller and experts on the paper env's bars.

A saved meta-controller acts on windows of normalised features (`WindowSet`), which the pipeline
builds only for the spans it trained and tested on. A paper session trades later bars, so it gets
windows of its own, built here with the pipeline's window function (`fold_tensor`, the `test`
segment logic) over the paper feed's own feature values, normalised with the statistics the
champion was trained with (`normalisation_stats.parquet` saved beside the model; for a folder
without one, its fold's rows of `datasets.normalisation_stats`), with that fold's lookback, method
and clip from its `datasets.training_windows` row. The window at a bar ends at the latest bar at
or before it (`window_index`), and every value in it was computed from data stamped at or before
that bar: no look-ahead. The first `lookback - 1` bars of a session have no complete window; the
models see zeros and `window_valid = 0` there, as training saw on such bars.

Live feeds: the env of a live session trades a market that grows by a bar at each step
(`env.engine.market`; `env.market` stays the market it opened with). Before each decision
`ChampionPolicy` checks whether the engine's market has bars its windows do not cover; if so it
appends their rows (`grow_windows`: the same `fold_tensor` over the new bars and the `lookback - 1`
bars before them, with the same statistics) and rebuilds the meta-controller's gathers over the
grown windows, carrying its state (the experts' LSTM states, running statistics, usage) across.
So the observation at a live bar is the one the pipeline computes for that bar once its raw rows
are ingested.

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

from carry_env.config import EnvConfig
from carry_env.env import CarryTradeEnv
from carry_env.market import MarketData
from carry_pipeline.lib.duckdb_io import utc_frame
from carry_pipeline.lib.evaluation.policies import MetaBacktestPolicy, load_meta_policy
from carry_pipeline.lib.features.windows import TrainingWindowsConfig, fold_tensor
from carry_pipeline.lib.training.observation import US_PER_NS, WindowSet

SAVED_STATS = "normalisation_stats.parquet"
"""The fold's statistics `train.save_expert` writes beside every model."""


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
    """The champion fold's window shape and normalisation (its `training_windows` train row).

    Attributes:
        stats_source: where `stats` came from: the model folder's `normalisation_stats.parquet`
            or `datasets.normalisation_stats`.
    """

    fold: int
    config: TrainingWindowsConfig
    symbols: tuple[str, ...]
    features: tuple[str, ...]
    stats: pl.DataFrame
    stats_source: str = "datasets.normalisation_stats"


def window_settings(database: str, fold: int, model_path: str | None = None) -> WindowSettings:
    """The fold's `datasets.training_windows` train row and the statistics the model was trained
    with: `<model_path>/normalisation_stats.parquet` when the folder holds one (a later run may
    have rewritten `datasets.normalisation_stats` for the same fold number), else the fold's rows
    of `datasets.normalisation_stats`.

    Raises:
        ChampionError: a table is missing, holds no row for the fold, or the statistics lack a
            feature of the fold's windows.
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
    saved = Path(model_path) / SAVED_STATS if model_path else None
    if saved is not None and saved.is_file():
        stats, source = pl.read_parquet(saved).filter(pl.col("fold") == fold), str(saved)
    else:
        source = "datasets.normalisation_stats"
        stats = _query(
            database,
            "select * from datasets.normalisation_stats where fold = ?",
            [fold],
            source,
            "datasets/normalisation_stats",
        )
    if stats.height == 0:
        raise ChampionError(f"{database}: {source} has no rows for fold {fold}")
    r = manifest.row(0, named=True)
    config = TrainingWindowsConfig(lookback=int(r["lookback"]), method=r["method"], clip=r["clip"])
    symbols, features = tuple(json.loads(r["symbols"])), tuple(json.loads(r["features"]))
    lacking = sorted(set(features) - set(stats["feature"].to_list()))
    if lacking:
        raise ChampionError(
            f"{source} (fold {fold}) has no statistics for {lacking}, features of the fold's "
            "datasets.training_windows row: the windows were rebuilt with other features since "
            "the model was trained"
        )
    return WindowSettings(fold, config, symbols, features, stats, source)


def feature_frame(
    market: MarketData, features: tuple[str, ...], first_bar: int = 0
) -> pl.DataFrame:
    """`ts`, `symbol`, `warmup` (False) and the `features` columns, in that order, of `market`'s
    bars from `first_bar` on.

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
    bar_ts = market.ts[first_bar:].astype(np.int64)
    n_t, n_s = bar_ts.size, market.n_symbols
    idx = [market.feature_names.index(f) for f in features]
    values = market.features[first_bar:, :, idx].reshape(n_t * n_s, len(idx))
    ts = pl.Series("ts", np.repeat(bar_ts, n_s)).cast(pl.Datetime("ns"))
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


def grow_windows(windows: WindowSet, market: MarketData, settings: WindowSettings) -> WindowSet:
    """`windows` (paper windows over `market`'s first bars) extended to every bar of `market`.

    A live feed's market gains bars at its end. The rows of the new bars, and of the
    `lookback - 1` bars before them that the new bars' windows read, are computed by `fold_tensor`
    (a `test` segment starting at the first new bar) from `market`'s features with the champion
    fold's statistics, exactly as `paper_windows` computes every row; the rows before them are
    kept. The recomputed old rows equal the kept ones unless the venue revised a bar the feed had
    fetched (a late funding print): later windows then read the revised values, as the pipeline
    would. A row is normalised from its own bar's features only, and a window ends at the bar it
    serves, so no window reads a later bar.

    Returns `windows` itself when it already covers `market`, and `paper_windows(market)` when
    `market` is not `windows`' bars extended (other bar times).

    Raises:
        ChampionError: the market's bars are not on one grid, or features do not fit.
    """
    n_old = windows.values.shape[0]
    ts_us: np.ndarray = market.ts.astype(np.int64) // US_PER_NS
    n = min(n_old, ts_us.size)
    if tuple(market.symbols) != windows.symbols or not np.array_equal(ts_us[:n], windows.ts_us[:n]):
        return paper_windows(market, settings)
    if ts_us.size <= n_old:
        return windows
    first = max(n_old - (settings.config.lookback - 1), 0)
    frame = feature_frame(market, settings.features, first_bar=first)
    bar = timedelta(seconds=market.bar_seconds)
    span = {
        "fold": settings.fold,
        "test_start": _utc(ts_us[n_old]),
        "test_end": _utc(ts_us[-1]) + bar,
    }
    try:
        values, tail_ts, _, (_, hi) = fold_tensor(
            frame, settings.stats, span, "test", bar, settings.config
        )
    except ValueError as exc:
        raise ChampionError(f"paper windows of fold {settings.fold}: {exc}") from exc
    if not np.array_equal(tail_ts, ts_us[first:]):
        raise ChampionError(
            f"paper windows of fold {settings.fold}: the feed's bars from {_utc(ts_us[first])} "
            f"are not on one {bar} grid"
        )
    lo = windows.span[0] if windows.span is not None else _utc(ts_us[0])
    return WindowSet(
        values=np.concatenate([np.asarray(windows.values[:first]), values]),
        ts_us=np.concatenate([windows.ts_us[:first], tail_ts]),
        lookback=windows.lookback,
        first_window_row=windows.first_window_row,
        symbols=windows.symbols,
        features=windows.features,
        fold=windows.fold,
        segment=windows.segment,
        span=(lo, hi),
    )


def _utc(ts_us: Any) -> datetime:
    # An int64 microsecond stamp as a UTC datetime.
    return datetime.fromtimestamp(int(ts_us) / 1e6, tz=UTC)


class _EngineView:
    # The env as the meta-controller reads it, with the market its engine trades now: a live
    # feed's env keeps `env.market` at the bars it opened with while `env.engine.market` grows.
    def __init__(self, env: CarryTradeEnv) -> None:
        self.env = env

    @property
    def market(self) -> MarketData:
        return self.env.engine.market

    @property
    def observation_names(self) -> list[str]:
        return self.env.observation_names

    @property
    def engine(self) -> Any:
        return self.env.engine

    @property
    def config(self) -> EnvConfig:
        return self.env.config


class ChampionPolicy:
    """A `MetaBacktestPolicy` for the paper session: SB3's `predict`, `reset(env)`, and `explain`
    (the experts' suggestions and the gating weights of the last decision, for `paper.decisions`).

    With `settings`, its windows grow with the env's market (module docstring): `reset(env)` and
    every `predict` on a market with bars the windows lack append those bars' rows first.
    """

    def __init__(
        self,
        meta: MetaBacktestPolicy,
        source: ChampionSource,
        settings: WindowSettings | None = None,
    ) -> None:
        self.meta, self.source, self.settings = meta, source, settings
        self._view: _EngineView | None = None

    @property
    def windows(self) -> WindowSet:
        """The windows the meta-controller and its experts read now."""
        return self.meta.windows

    def reset(self, env: CarryTradeEnv) -> None:
        """Grow the windows to `env`'s market and build the gathers for it (see
        `MetaBacktestPolicy.reset`)."""
        self._view = _EngineView(env)
        self._regather(carry_state=False)

    def _regather(self, *, carry_state: bool) -> None:
        # Windows over the engine's market now, and the meta-controller's gathers over them.
        assert self._view is not None
        windows = self.meta.windows
        if self.settings is not None:
            windows = grow_windows(windows, self._view.market, self.settings)
        state = self.meta.get_state() if carry_state else None
        meta = self.meta
        if windows is not meta.windows:
            meta = MetaBacktestPolicy(
                meta.meta, meta.experts, meta.anomaly, windows,
                fold=meta.fold, path=meta.path, name=meta.name,
            )  # fmt: skip
        try:
            meta.reset(self._view)  # type: ignore[arg-type]  # reads market, names, engine
            if state is not None:
                meta.set_state(state)
        except ValueError as exc:
            raise ChampionError(f"champion {self.source.champion_id}: {exc}") from exc
        self.meta = meta

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
        """The meta-controller's action at the env's current bar, after growing the windows to
        the bars the env's market gained since the last decision."""
        view = self._view
        if view is not None and view.market.n_bars > self.meta.windows.values.shape[0]:
            self._regather(carry_state=True)
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
        """The expert outputs (and the anomaly multiplier) and gating weights of the decision
        the last `predict` made; empty when it held the book between decision bars."""
        return self.meta.last_decision() if self.meta.decided else {}


def load_champion_policy(
    database: str, source: ChampionSource, market: MarketData
) -> ChampionPolicy:
    """The champion's meta-controller and experts on windows of `market` (module docstring).

    Raises:
        ChampionError: the model folder is gone, or the windows' settings or features do not fit.
    """
    settings = window_settings(database, source.fold, source.model_path)
    windows = paper_windows(market, settings)
    try:
        meta = load_meta_policy(source.model_path, windows, fold=source.fold)
    except FileNotFoundError as exc:
        raise ChampionError(f"champion {source.champion_id}: {exc}") from exc
    return ChampionPolicy(meta, source, settings)
