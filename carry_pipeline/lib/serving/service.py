"""The champion behind the inference service: loaded from DuckDB, asked per request, reloaded when
the store changes.

- `store_version(database)`: what the file holds now: the `models.champion` row promoted last
  (`champion_source`) and the last bar time and row count of `features.market_bars`. Two short
  read-only connections, cheap enough to run every few seconds.
- `load_market(database)`: the env's market from the features tables, built as the models and
  reports stages build it (`build_market_frame`, warm-up dropped; `registry.market_data`).
- `load_served_champion(database, version)`: that market, the champion on it
  (`load_champion_policy`: the paper trader's windows over every stored bar, normalised with the
  champion fold's statistics) and a `CarryTradeEnv` over it (`PIPELINE_ENV_CONFIG`, as the paper job
  and the backtest use) that is never stepped.
- `ServedChampion.decide(bar, observation)`: the env is reset at `bar` with a fresh account and
  an open end (`reset(options={"start": bar, "open_end": True})`, as a live paper session opens
  at its first bar; the open end lets the last stored bar be asked), the observation is the env's
  own or the posted one, and the champion decides with its windows and clock at that bar. Each
  request is the first decision of an episode (`ChampionPolicy.restart`): the experts' running
  reward and Sharpe, the gating usage and any recurrent expert's LSTM state start afresh, so an
  answer depends on the request only, never on earlier requests. `ChampionPolicy.predict` passes
  its `state` argument through unused (the recurrent states live inside the policy), so a request
  carries no state.
- `ChampionService`: the champion being served and the store's health. `refresh()` compares
  `store_version` with the served one and loads and switches when the champion or the bars
  changed; `start(poll_seconds)` runs it on a background thread. A file locked by a writer (DuckDB
  has one writing process), a missing table, or a new champion that does not load never stops the
  service: the loaded champion keeps answering and `problem` says what went wrong; a failed
  version is not retried until the store changes again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import numpy as np
import polars as pl

from carry_env.env import CarryTradeEnv
from carry_env.feeds import Fills, Orders
from carry_env.market import MarketData
from carry_pipeline.lib.duckdb_io import utc_frame
from carry_pipeline.lib.env_config import PIPELINE_ENV_CONFIG
from carry_pipeline.lib.evaluation.stage import INFERENCE_THREADS
from carry_pipeline.lib.features.pipeline import build_market_frame
from carry_pipeline.lib.serving.requests import Decision, bar_index
from carry_pipeline.lib.trading.champion import (
    ChampionError,
    ChampionPolicy,
    ChampionSource,
    champion_source,
    load_champion_policy,
)
from carry_pipeline.lib.training.policy import pinned_threads

log = logging.getLogger(__name__)

FEATURE_TABLES = ("market_bars", "carry_features", "sentiment_windows")
"""Tables of the DuckDB schema `features` the market is built from (`sentiment_windows` may be
absent)."""


@dataclass(frozen=True)
class StoreVersion:
    """Which champion and which bars the DuckDB file holds."""

    source: ChampionSource
    last_bar: datetime | None
    """The last `ts` of `features.market_bars` (None when it is empty)."""
    bar_rows: int


def _read(database: str, sql: str) -> pl.DataFrame | None:
    # One read-only query; None when the table does not exist.
    con = duckdb.connect(database, read_only=True)
    try:
        return utc_frame(con.sql(sql).pl())
    except duckdb.CatalogException:
        return None
    finally:
        con.close()


def store_version(database: str) -> StoreVersion:
    """The champion promoted last and the extent of `features.market_bars`.

    Raises:
        ChampionError: no champion has been promoted, or no `features.market_bars` table.
        duckdb.Error: the file cannot be opened (missing, or locked by a writing process).
    """
    source = champion_source(database)
    bars = _read(database, "select max(ts) as last, count(*) as n from features.market_bars")
    if bars is None:
        raise ChampionError(
            f"{database} has no features.market_bars table; materialise features/market_bars"
        )
    return StoreVersion(source, bars["last"][0], int(bars["n"][0]))


def load_market(database: str) -> MarketData:
    """The env's market from `features.market_bars`, `carry_features` and `sentiment_windows`.

    Raises:
        ChampionError: `market_bars` or `carry_features` is missing.
        ValueError: the tables do not fit together (`build_market_frame`).
    """
    tables = {name: _read(database, f"select * from features.{name}") for name in FEATURE_TABLES}
    bars, carry, sentiment = (tables[name] for name in FEATURE_TABLES)
    if bars is None or carry is None:
        missing = [n for n in FEATURE_TABLES[:2] if tables[n] is None]
        raise ChampionError(
            f"{database} has no features.{missing[0]} table; materialise features/{missing[0]}"
        )
    return MarketData.from_frame(build_market_frame(bars, carry, sentiment))


class _NeverFills:
    # The served env is reset, never stepped: a step would be a bug, so it fails loudly.
    def execute(self, orders: Orders) -> Fills:
        raise RuntimeError("the inference service's env never trades")


class ServedChampion:
    """The champion on the stored market, answering one bar at a time (module docstring).

    Args:
        version: the store version it was loaded from.
        policy: the champion, `reset` on `env`.
        env: the never-stepped env over the market.
    """

    def __init__(self, version: StoreVersion, policy: ChampionPolicy, env: CarryTradeEnv) -> None:
        self.version, self.policy, self.env = version, policy, env
        self.loaded_at = datetime.now(UTC)
        self._lock = threading.Lock()

    @property
    def source(self) -> ChampionSource:
        """The `models.champion` row being served."""
        return self.version.source

    @property
    def market(self) -> MarketData:
        """The stored bars the champion answers on."""
        return self.env.market

    @property
    def observation_names(self) -> list[str]:
        """What each entry of a posted observation means, in order."""
        return list(self.env.observation_names)

    def bar(self, when: datetime | None) -> int:
        """The bar index of `when` (`RequestError` if not a stored bar), the last bar for None."""
        m = self.market
        return m.n_bars - 1 if when is None else bar_index(m.ts, when, m.bar_seconds)

    def decide(self, bar: int, observation: np.ndarray | None = None) -> Decision:
        """The champion's first decision of an episode at `bar`, on `observation` (float32, the
        env's size) or, when None, the env's observation of a fresh account at that bar."""
        with self._lock, pinned_threads(INFERENCE_THREADS):
            obs, _ = self.env.reset(seed=0, options={"start": int(bar), "open_end": True})
            if observation is not None:
                obs = observation
            self.policy.restart()
            action, _ = self.policy.predict(obs, deterministic=True)
            explained = self.policy.explain(obs)
        outputs = dict(explained["expert_outputs"])
        multiplier = outputs.pop("exposure")
        return Decision(
            champion_id=self.source.champion_id,
            bar=int(bar),
            ts_ns=int(self.market.ts[bar]),
            symbols=tuple(self.market.symbols),
            observation=np.asarray(obs, dtype=np.float32).copy(),
            action=np.asarray(action, dtype=np.float64),
            expert_outputs=outputs,
            gating_weights=dict(explained["gating_weights"]),
            anomaly_multiplier=list(multiplier),
        )


def load_served_champion(database: str, version: StoreVersion) -> ServedChampion:
    """The champion of `version` on the stored market (module docstring).

    Raises:
        ChampionError: a table is missing, the model folder is gone, or the champion does not fit
            the stored features (the message names what).
        ValueError: the features tables do not fit together.
    """
    market = load_market(database)
    policy = load_champion_policy(database, version.source, market)
    env = CarryTradeEnv(market, PIPELINE_ENV_CONFIG, executor=_NeverFills())
    policy.reset(env)
    return ServedChampion(version, policy, env)


Listener = Callable[[str, Any], None]
"""`(event, value)`: `"reload"` with `(ServedChampion, reason)`, `"problem"` with the message."""


class ChampionService:
    """The served champion and the state of its store (module docstring).

    Args:
        database: the DuckDB file.
        listener: told of every reload and every failed check (the metrics).
    """

    def __init__(self, database: str, listener: Listener | None = None) -> None:
        self.database = database
        self.listener = listener
        self.current: ServedChampion | None = None
        self.problem: str | None = None
        """Why the last check could not read the store or load its champion (None when fine)."""
        self.checked_at: datetime | None = None
        self.reloads = 0
        self._failed: StoreVersion | None = None
        self._refresh = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Check the store; load its champion and switch to it when the champion or the bars
        changed. Returns True when it switched. Store trouble is kept in `problem`, not raised."""
        with self._refresh:
            self.checked_at = datetime.now(UTC)
            try:
                version = store_version(self.database)
            except ChampionError as exc:  # names the file and what it lacks
                return self._trouble(str(exc))
            except duckdb.Error as exc:  # missing file, or locked by a writing process
                return self._trouble(f"{self.database} cannot be read: {exc}")
            current = self.current
            if current is not None and current.version == version:
                self.problem = None
                return False
            if version == self._failed:
                return False  # the same broken version: `problem` still says why
            try:
                served = load_served_champion(self.database, version)
            except (ChampionError, ValueError, FileNotFoundError, duckdb.Error) as exc:
                self._failed = version
                return self._trouble(
                    f"champion {version.source.champion_id} could not be loaded: {exc}"
                )
            reason = (
                "first"
                if current is None
                else "champion"
                if current.source != version.source
                else "bars"
            )
            self.current, self.problem, self._failed = served, None, None
            self.reloads += 1
            log.info(f"serving champion {version.source.champion_id} ({reason})")
            if self.listener is not None:
                self.listener("reload", (served, reason))
            return True

    def _trouble(self, message: str) -> bool:
        self.problem = message
        log.warning(message)
        if self.listener is not None:
            self.listener("problem", message)
        return False

    def start(self, poll_seconds: float) -> None:
        """Run `refresh` every `poll_seconds` on a daemon thread until `stop`."""
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds={poll_seconds} must be > 0")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._poll, args=(poll_seconds,), name="champion-poll", daemon=True
        )
        self._thread.start()

    def _poll(self, poll_seconds: float) -> None:
        while not self._stop.wait(poll_seconds):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - a bug here must not end reloading; it is reported
                log.exception("champion refresh failed")
                self._trouble(f"refresh failed: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        """Stop the polling thread (waits for a refresh in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
