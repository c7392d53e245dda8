"""The champion's windows on a live feed (`lib/trading/champion.py`) and sentiment carried forward
on it (`lib/trading/feeds.py`, `risk.sentiment_records`), without trained models: an
`ExchangeFeed` polling the seeded simulated exchange past a DuckDB history, windows grown bar by
bar against the pipeline's `fold_tensor` over the whole history at once, a perturbed later bar,
the stored sentiment carried forward, and the `sentiment_stale` risk event and alert."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pytest

from carry_env.config import EnvConfig
from carry_env.env import CarryTradeEnv
from carry_pipeline.lib.exchanges import SimulatedExchange
from carry_pipeline.lib.features.bars import build_market_bars
from carry_pipeline.lib.features.carry import build_carry_features
from carry_pipeline.lib.features.normalisation import compute_normalisation_stats
from carry_pipeline.lib.features.sentiment import SentimentWindowsConfig, build_sentiment_windows
from carry_pipeline.lib.features.windows import (
    MANIFEST_SCHEMA,
    TrainingWindowsConfig,
    fold_tensor,
)
from carry_pipeline.lib.trading.books import ModelBookSource
from carry_pipeline.lib.trading.champion import (
    SAVED_STATS,
    ChampionError,
    WindowSettings,
    grow_windows,
    paper_windows,
    window_settings,
)
from carry_pipeline.lib.trading.feeds import (
    SENTIMENT_HISTORY,
    ExchangeFeed,
    VirtualClock,
    check_stored_sentiment,
    fetch_raw,
    load_raw_history,
    load_sentiment_scores,
)
from carry_pipeline.lib.trading.ledger import Ledger
from carry_pipeline.lib.trading.risk import RiskConfig, RiskState, sentiment_records
from carry_pipeline.lib.trading.session import SessionSpec, run_paper_session
from carry_pipeline.lib.training.observation import WindowSet
from tests.pipeline.trading.feed_setup import BARS, BASES, CARRY, START, CarryRule, write_raw
from tests.pipeline.trading.session_setup import WIDE_RISK

CUT = START + timedelta(days=12)  # DuckDB's raw history ends here; the exchange serves on
HOUR = timedelta(hours=1)
CONFIG = TrainingWindowsConfig(lookback=8)
SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT")


@pytest.fixture(scope="module")
def history_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw tables of the simulated exchange (seed 0) in `[START, CUT)`."""
    db = tmp_path_factory.mktemp("live") / "carry.duckdb"
    write_raw(db, fetch_raw(SimulatedExchange(seed=0, clock=lambda: CUT), BASES, "1h", START, CUT))
    return db


def _feed(
    db: Path,
    exchange: Any = None,
    sentiment: pl.DataFrame | None = None,
    history_start: datetime = START,
) -> ExchangeFeed:
    # A live feed from the DuckDB history on, polling `exchange` (default the seed-0 simulator)
    # on a clock that jumps to each bar's close.
    clock = VirtualClock(CUT + timedelta(seconds=2))
    exchange = exchange or SimulatedExchange(seed=0)
    exchange.clock = clock.now
    history = load_raw_history(db, BASES, history_start, CUT)
    return ExchangeFeed(exchange, BASES, history, clock, BARS, CARRY, sentiment=sentiment)


def _pipeline_carry(end: datetime) -> pl.DataFrame:
    # `carry_features` by the pipeline's functions over the raw rows of [START, end) in one go.
    ex = SimulatedExchange(seed=0, clock=lambda: end)
    raw = fetch_raw(ex, BASES, "1h", START, end)
    bars = build_market_bars(raw["spot"], raw["perp"], raw["funding"], raw["order_book"], BARS)
    return build_carry_features(bars, CARRY)


@pytest.fixture(scope="module")
def settings() -> WindowSettings:
    """Window settings of a fold trained on days 10-11 (statistics from the pipeline's features)."""
    carry = _pipeline_carry(CUT)
    folds = pl.DataFrame(
        {"fold": [0], "train_start": [START + timedelta(days=10)], "train_end": [CUT - HOUR]}
    )
    stats = compute_normalisation_stats(carry, folds)
    features = tuple(c for c in carry.columns if c.startswith("f_"))
    return WindowSettings(0, CONFIG, SYMBOLS, features, stats)


def _grow(feed: ExchangeFeed, settings: WindowSettings, bars: int) -> list[WindowSet]:
    # The paper windows at the start, then after each of `bars` live bars.
    out = [paper_windows(feed.market, settings)]
    n0 = feed.market.n_bars
    for i in range(bars):
        assert feed.bar_ready(n0 + i)
        out.append(grow_windows(out[-1], feed.market, settings))
    return out


def test_windows_grown_bar_by_bar_equal_the_pipelines(
    history_db: Path, settings: WindowSettings
) -> None:
    # Five live bars, each appended as it closes; the result equals, bit for bit, the pipeline's
    # fold_tensor over carry_features computed once over the whole history, and no row written
    # at an earlier bar changes later.
    feed = _feed(history_db)
    grown = _grow(feed, settings, 5)
    final = grown[-1]
    market = feed.market
    assert final.values.shape[0] == market.n_bars == grown[0].values.shape[0] + 5
    np.testing.assert_array_equal(final.ts_us, market.ts // 1000)
    truth = _pipeline_carry(CUT + 7 * HOUR)
    first = datetime.fromtimestamp(int(market.ts[0]) / 1e9, tz=UTC)
    span = {"fold": 0, "test_start": first, "test_end": first + market.n_bars * HOUR}
    values, ts_us, first_row, _ = fold_tensor(truth, settings.stats, span, "test", HOUR, CONFIG)
    np.testing.assert_array_equal(ts_us, final.ts_us)
    np.testing.assert_array_equal(values, final.values)
    assert final.first_window_row == first_row == CONFIG.lookback - 1
    for before in grown[:-1]:
        n = before.values.shape[0]
        np.testing.assert_array_equal(before.values, final.values[:n])


@pytest.mark.slow
def test_a_window_never_reads_a_later_bar(history_db: Path, settings: WindowSettings) -> None:
    # The same live bars, except that the BTC perp kline of the fourth live bar closes 3 % higher:
    # every window ending before that bar is unchanged, bit for bit; the one ending at it is not.
    perturbed_open = CUT + 3 * HOUR  # closes at CUT + 4 h: the fourth live bar

    class Perturbed:
        def __init__(self) -> None:
            self.inner = SimulatedExchange(seed=0)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def __setattr__(self, name: str, value: Any) -> None:
            # The feed's clock goes to the simulator it wraps.
            object.__setattr__(self.inner if name == "clock" else self, name, value)

        def fetch_ohlcv(self, symbol: str, market: str, *args: Any) -> pl.DataFrame:
            frame = self.inner.fetch_ohlcv(symbol, market, *args)
            if market != "perp" or not symbol.startswith("BTC"):
                return frame
            hit = pl.col("ts") == perturbed_open
            return frame.with_columns(
                pl.when(hit).then(pl.col(c) * 1.03).otherwise(pl.col(c)).alias(c)
                for c in ("close", "high")
            )

    clean = _grow(_feed(history_db), settings, 5)[-1]
    moved = _grow(_feed(history_db, Perturbed()), settings, 5)[-1]
    at = int(np.searchsorted(clean.ts_us, int((perturbed_open + HOUR).timestamp() * 1e6)))
    assert clean.ts_us[at] == int((CUT + 4 * HOUR).timestamp() * 1e6)
    windows_before = range(at - clean.first_window_row)  # windows ending at rows < at
    for i in windows_before:
        np.testing.assert_array_equal(clean.window(i), moved.window(i))
    assert not np.array_equal(clean.window(at - clean.first_window_row),
                              moved.window(at - clean.first_window_row))  # fmt: skip


def test_a_market_that_is_not_an_extension_gets_windows_of_its_own(
    history_db: Path, settings: WindowSettings
) -> None:
    # Windows of the live market handed a market of other bar times (a stored frame) are rebuilt
    # over it, not spliced; one they already cover is kept as it is.
    feed = _feed(history_db)
    grown = _grow(feed, settings, 2)
    shorter = _feed(history_db).market  # the first bars of the same market
    assert grow_windows(grown[-1], shorter, settings) is grown[-1]
    later = _feed(history_db, history_start=START + timedelta(days=1)).market
    assert later.ts[0] != shorter.ts[0]
    rebuilt = grow_windows(grown[-1], later, settings)
    np.testing.assert_array_equal(rebuilt.ts_us, later.ts // 1000)
    np.testing.assert_array_equal(rebuilt.values, paper_windows(later, settings).values)


def _scores(end: datetime, extra: list[tuple[datetime, float]] = ()) -> pl.DataFrame:
    # The simulated index published before `end`, and `extra` (published_at, score) rows.
    ex = SimulatedExchange(seed=1, clock=lambda: end)
    frame = ex.fetch_sentiment(START - SENTIMENT_HISTORY, end)
    rows = pl.DataFrame(
        {"ts": [t for t, _ in extra], "published_at": [t for t, _ in extra],
         "source": ["late"] * len(extra), "score": [s for _, s in extra]},
        schema=frame.schema,
    )  # fmt: skip
    return pl.concat([frame, rows])


def _store_scores(db: Path, scores: pl.DataFrame) -> None:
    with duckdb.connect(str(db)) as con:
        con.execute("create schema if not exists features")
        con.execute("create or replace table features.sentiment_scores as select * from scores")


@pytest.mark.slow
def test_live_sentiment_is_the_last_stored_score_carried_forward(tmp_path: Path) -> None:
    # Scores stored up to 40 h before the session: every live bar's level is the last one, its
    # age grows an hour a bar, f_sent_stale turns 1 past 48 h, and the f_sent_ block is what the
    # pipeline's sentiment_windows gives for those bars with the same stored scores.
    db = tmp_path / "carry.duckdb"
    write_raw(db, fetch_raw(SimulatedExchange(seed=0, clock=lambda: CUT), BASES, "1h", START, CUT))
    _store_scores(db, _scores(CUT - 40 * HOUR + timedelta(minutes=1)))
    scores = load_sentiment_scores(db, START - SENTIMENT_HISTORY)
    feed = _feed(db, sentiment=scores)
    n0 = feed.market.n_bars
    assert all(feed.bar_ready(n0 + i) for i in range(10))
    m = feed.market
    names = list(m.feature_names)
    col = {n: m.features[:, 0, names.index(n)] for n in names if n.startswith("f_sent_")}
    live = slice(n0 - 1, m.n_bars)  # the bar at CUT, then ten live bars
    last = scores.sort("published_at")["score"][-1]
    assert (col["f_sent_level"][live] == last).all()
    np.testing.assert_array_equal(col["f_sent_age_hours"][live], 40.0 + np.arange(11))
    np.testing.assert_array_equal(col["f_sent_stale"][live], (40.0 + np.arange(11) > 48.0) * 1.0)
    raw = feed.raw  # the pipeline's bar grid over the feed's raw rows, warm-up included
    grid = build_market_bars(raw["spot"], raw["perp"], raw["funding"], None, BARS)["ts"]
    pipeline = build_sentiment_windows(scores, grid).filter(
        pl.col("ts").dt.epoch("ns").is_in(m.ts.tolist())
    )
    for name, values in col.items():
        np.testing.assert_array_equal(values, pipeline[name].to_numpy(), err_msg=name)


def test_stored_sentiment_windows_of_other_settings_are_refused(tmp_path: Path) -> None:
    # features.sentiment_windows as the pipeline stored it: equal to the live feed's f_sent_
    # features on the bars both hold; built with a 3-day z-score window instead, refused by name.
    db = tmp_path / "carry.duckdb"
    write_raw(db, fetch_raw(SimulatedExchange(seed=0, clock=lambda: CUT), BASES, "1h", START, CUT))
    _store_scores(db, _scores(CUT))
    scores = load_sentiment_scores(db, START - SENTIMENT_HISTORY)
    feed = _feed(db, sentiment=scores)
    raw = feed.raw
    grid = build_market_bars(raw["spot"], raw["perp"], raw["funding"], None, BARS)["ts"]
    pipeline_history = scores.filter(pl.col("published_at") >= START - timedelta(days=7))
    for config, ok in ((None, True), (SentimentWindowsConfig(zscore_window="3d"), False)):
        windows = build_sentiment_windows(pipeline_history, grid, config)  # noqa: F841
        with duckdb.connect(str(db)) as con:
            con.execute(
                "create or replace table features.sentiment_windows as select * from windows"
            )
        if ok:
            assert check_stored_sentiment(db, feed.market) == feed.market.n_bars
        else:
            with pytest.raises(ValueError, match="f_sent_z at 2024-01-11 .* other sentiment_"):
                check_stored_sentiment(db, feed.market)


def test_missing_stored_sentiment_is_named(tmp_path: Path) -> None:
    db = tmp_path / "carry.duckdb"
    write_raw(db, fetch_raw(SimulatedExchange(seed=0, clock=lambda: CUT), BASES, "1h", START, CUT))
    with pytest.raises(ValueError, match="features.sentiment_scores is missing"):
        load_sentiment_scores(db, START)
    _store_scores(db, _scores(START - timedelta(days=1)))
    with pytest.raises(ValueError, match="holds no score published since"):
        load_sentiment_scores(db, START)


def _events(db: Path, session: str) -> tuple[list[Any], list[Any]]:
    with duckdb.connect(str(db), read_only=True) as con:
        events = con.execute(
            "select bar, kind, figures from paper.risk_events where session_id = ? and kind "
            "like 'sentiment%' order by bar",
            [session],
        ).fetchall()
        alerts = con.execute(
            "select bar, kind from paper.alerts where session_id = ? and kind like 'sentiment%'",
            [session],
        ).fetchall()
    return events, alerts


@pytest.mark.slow
def test_session_books_stale_and_fresh_sentiment_once(tmp_path: Path) -> None:
    # Scores end 44 h before the session's first bar (the bar at CUT); one more is stored as
    # published at CUT + 4 h. With a 45 h threshold: stale at CUT + 2 h (46 h), fresh at CUT + 4 h.
    # A resumed session books neither again.
    db = tmp_path / "carry.duckdb"
    write_raw(db, fetch_raw(SimulatedExchange(seed=0, clock=lambda: CUT), BASES, "1h", START, CUT))
    _store_scores(db, _scores(CUT - 44 * HOUR + timedelta(minutes=1), [(CUT + 4 * HOUR, 0.2)]))
    risk = RiskConfig(**{**WIDE_RISK.__dict__, "sentiment_alert_hours": 45.0})

    def run(max_bars: int) -> int:
        feed = _feed(db, sentiment=load_sentiment_scores(db, START - SENTIMENT_HISTORY))
        env = CarryTradeEnv(feed.market, EnvConfig())
        ledger = Ledger(db)
        try:
            start = ledger.session_start("sent")
            start = feed.market.n_bars - 1 if start is None else start
            run_paper_session(
                spec=SessionSpec("sent", EnvConfig(), risk, start=start),
                feed=feed,
                policy=CarryRule(env.observation_names, feed.market.symbols),
                books=ModelBookSource(EnvConfig(), levels=50, span_depths=4.0),
                ledger=ledger,
                max_bars=max_bars,
            )
        finally:
            ledger.close()
        return start

    start = run(3)
    events, alerts = _events(db, "sent")
    assert [(b - start, k) for b, k, _ in events] == [(2, "sentiment_stale")]
    assert json.loads(events[0][2]) == {"age_hours": 46.0, "threshold_hours": 45.0}
    assert [(b - start, k) for b, k in alerts] == [(2, "sentiment_stale")]
    run(6)
    events, alerts = _events(db, "sent")
    assert [(b - start, k) for b, k, _ in events] == [(2, "sentiment_stale"),
                                                     (4, "sentiment_fresh")]  # fmt: skip
    assert [(b - start, k) for b, k in alerts] == [(2, "sentiment_stale")]


NAMES = ("f_x", "f_sent_age_hours")


@pytest.mark.parametrize(
    ("ages", "t", "first", "want"),
    [
        ((10.0, 49.0), 1, False, "sentiment_stale"),  # crosses 48 h between the bars
        ((49.0, 50.0), 1, False, None),  # already stale: booked at the crossing, not again
        ((49.0, 50.0), 1, True, "sentiment_stale"),  # the session's first bar is already stale
        ((50.0, 1.0), 1, False, "sentiment_fresh"),  # a newer score arrived
        ((47.0, 48.0), 1, False, None),  # exactly at the threshold is not over it
        ((49.0,), 0, False, "sentiment_stale"),  # bar 0 has no bar before it
    ],
)
def test_sentiment_records(ages: tuple[float, ...], t: int, first: bool, want: str | None) -> None:
    features = np.zeros((len(ages), 2, 2))
    features[:, :, 1] = np.array(ages)[:, None]
    got = sentiment_records(t, features, NAMES, 48.0, RiskState.NORMAL, first=first)
    assert [r.kind for r in got] == ([want] if want else [])
    if got:
        assert got[0].figures == {"age_hours": ages[t], "threshold_hours": 48.0}


def test_no_sentiment_features_no_records() -> None:
    features = np.full((2, 2, 1), 99.0)
    assert sentiment_records(1, features, ("f_x",), 1.0, RiskState.NORMAL, first=True) == []


def test_the_sentiment_threshold_keeps_old_session_hashes() -> None:
    # Sessions opened before the field existed hash a risk config without it: at its default it
    # stays out of the hashed config; another value is part of the session's identity.
    default = SessionSpec("s", EnvConfig(), RiskConfig()).to_dict()["risk_config"]
    assert "sentiment_alert_hours" not in default and "drawdown_alert" in default
    other = SessionSpec("s", EnvConfig(), RiskConfig(sentiment_alert_hours=12.0)).to_dict()
    assert other["risk_config"]["sentiment_alert_hours"] == 12.0


def _window_tables(db: Path, features: list[str], stats: pl.DataFrame) -> None:
    # A datasets.training_windows train row of fold 0 and datasets.normalisation_stats rows.
    row = {c: None for c in MANIFEST_SCHEMA} | {
        "fold": 0, "segment": "train", "lookback": 8, "method": "standard", "clip": 10.0,
        "symbols": json.dumps(list(SYMBOLS)), "features": json.dumps(features),
    }  # fmt: skip
    manifest = pl.DataFrame([row], schema=MANIFEST_SCHEMA)  # noqa: F841 - DuckDB reads it
    with duckdb.connect(str(db)) as con:
        con.execute("create schema if not exists datasets")
        con.execute("create or replace table datasets.training_windows as select * from manifest")
        con.execute("create or replace table datasets.normalisation_stats as select * from stats")


def test_window_settings_use_the_statistics_saved_beside_the_model(
    tmp_path: Path, settings: WindowSettings
) -> None:
    # DuckDB's fold-0 statistics were rewritten by a later run (means shifted); the model folder
    # keeps the ones it was trained with, and those are used. A folder without them falls back
    # to DuckDB's; saved statistics that lack a window feature are refused by name.
    db, folder = tmp_path / "carry.duckdb", tmp_path / "meta" / "fold0"
    folder.mkdir(parents=True)
    settings.stats.write_parquet(folder / SAVED_STATS)
    rewritten = settings.stats.with_columns(pl.col("mean") + 1.0)
    _window_tables(db, list(settings.features), rewritten)
    got = window_settings(str(db), 0, str(folder))
    assert got.stats.equals(settings.stats) and got.stats_source == str(folder / SAVED_STATS)
    assert got.features == settings.features and got.config == CONFIG
    fallback = window_settings(str(db), 0, str(tmp_path / "elsewhere"))
    assert fallback.stats.equals(rewritten) and fallback.stats_source.startswith("datasets.")
    settings.stats.filter(pl.col("feature") != settings.features[3]).write_parquet(
        folder / SAVED_STATS
    )
    with pytest.raises(ChampionError, match=f"no statistics for \\['{settings.features[3]}'\\]"):
        window_settings(str(db), 0, str(folder))
