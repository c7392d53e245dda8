"""Paper-trading feeds: where the session's bars come from.

- `simulated_feed` (kind `simulated`, offline): the seeded `SimulatedExchange`'s raw tables turned
  into the env's market frame by the pipeline's own functions (`market_frame_from_raw`), replayed
  bar by bar on an accelerated clock (`seconds_per_bar`, 0 in tests).
- `ExchangeFeed` (kind `ccxt`): polls an `ExchangeClient` (a `CcxtExchange` on public endpoints
  only: closed spot and perp klines, funding settlements, the live order-book snapshot) once per
  bar, appends the new raw rows to a buffer that starts with the DuckDB history
  (`load_raw_history`), and rebuilds the market frame from the whole buffer with the same
  `build_market_bars` / `build_carry_features` / `build_market_frame` the pipeline assets run.
  Because the buffer holds every raw row since `history` began (EWM indicators depend on all of
  it), a live bar's features equal what the pipeline computes for that bar. The feed is `live`:
  the session opens an episode without an end and the env's engine extends its data tensor
  (`Engine.extend_market`) each time the feed's market grows. The history must come from the venue
  the feed polls, in klines of the size it fetches (`raw_timeframe`); a mix is refused, naming
  both. `ccxt_feed` builds one from the DuckDB history and a key-less `CcxtExchange` (public
  endpoints only), with the books the paper executor walks: the venue's live snapshot at the
  feed's clock.

Sentiment on the live feed: no sentiment source is polled. Without `sentiment` scores the frame
has no `f_sent_` columns (a rule policy's session). With them (`ccxt_feed(sentiment=True)`, for a
champion whose windows hold `f_sent_` features) the scores stored in `features.sentiment_scores`
when the session starts are carried forward: `build_sentiment_windows`, the pipeline's function,
aligns them on the live grid by publication time, so every live bar's level is the last stored
score, `f_sent_age_hours` grows by a bar's hours per bar and `f_sent_stale` turns 1 past the
windows' `max_age` (2 days), as the pipeline computes those bars while no newer score is stored.
Scores stored while the session runs are read when it is restarted (a resume rebuilds the frame).
The session books a `sentiment_stale` risk event and alert when the age crosses
`RiskConfig.sentiment_alert_hours` (`session.py`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl

from carry_env.market import MarketData
from carry_pipeline.lib.exchanges.base import ExchangeClient, Pair
from carry_pipeline.lib.exchanges.ccxt_exchange import CcxtExchange
from carry_pipeline.lib.exchanges.simulated import SimulatedExchange
from carry_pipeline.lib.features.bars import MarketBarsConfig, build_market_bars
from carry_pipeline.lib.features.carry import CarryFeaturesConfig, build_carry_features
from carry_pipeline.lib.features.pipeline import build_market_frame
from carry_pipeline.lib.features.sentiment import SentimentWindowsConfig, build_sentiment_windows
from carry_pipeline.lib.features.timeframes import parse_duration
from carry_pipeline.lib.schemas import SENTIMENT_SCHEMA
from carry_pipeline.lib.trading.books import SimulatedExchangeBooks
from carry_pipeline.lib.trading.session import ReplayFeed

RAW_TABLES = {
    "spot": "raw_spot_ohlcv",
    "perp": "raw_perp_ohlcv",
    "funding": "raw_funding_rates",
    "order_book": "raw_order_book",
}
"""Raw-table dict key -> table of the DuckDB schema `raw`."""

SENTIMENT_HISTORY = timedelta(days=14)
"""Sentiment scores fetched before the first bar: covers the 7-day z-score window's warm-up."""


def market_frame_from_raw(
    raw: dict[str, pl.DataFrame],
    bars: MarketBarsConfig,
    carry: CarryFeaturesConfig | None = None,
    sentiment_scores: pl.DataFrame | None = None,
    sentiment_config: SentimentWindowsConfig | None = None,
) -> pl.DataFrame:
    """The env's market frame (warm-up dropped) from raw tables, by the pipeline's functions;
    with `sentiment_scores`, also the `sentiment` column and the `f_sent_` window features
    (`build_sentiment_windows` with `sentiment_config`, default its defaults)."""
    market_bars = build_market_bars(
        raw["spot"], raw["perp"], raw["funding"], raw.get("order_book"), bars
    )
    features = build_carry_features(market_bars, carry or CarryFeaturesConfig())
    sentiment = None
    if sentiment_scores is not None:
        sentiment = build_sentiment_windows(sentiment_scores, market_bars["ts"], sentiment_config)
    return build_market_frame(market_bars, features, sentiment)


def fetch_raw(
    exchange: ExchangeClient,
    bases: tuple[str, ...],
    timeframe: str,
    start: datetime,
    end: datetime,
    book_window: tuple[datetime, datetime] | None = None,
    funding_window: tuple[datetime, datetime] | None = None,
) -> dict[str, pl.DataFrame]:
    """Raw spot, perp, funding and order-book rows of `bases` in `[start, end)` from `exchange`;
    order books in `book_window` when given (a live venue serves only "now", which it must hold),
    settlements in `funding_window` when given; no klines when `start >= end`."""
    book_start, book_end = book_window or (start, end)
    fund_start, fund_end = funding_window or (start, end)
    parts: dict[str, list[pl.DataFrame]] = {k: [] for k in RAW_TABLES}
    for base in bases:
        pair = Pair(base)
        if start < end:
            parts["spot"].append(exchange.fetch_ohlcv(pair.spot, "spot", timeframe, start, end))
            parts["perp"].append(exchange.fetch_ohlcv(pair.perp, "perp", timeframe, start, end))
        if fund_start < fund_end:
            parts["funding"].append(exchange.fetch_funding(pair.perp, fund_start, fund_end))
        for leg in ("spot", "perp"):
            parts["order_book"].append(
                exchange.fetch_order_book(pair.symbol(leg), leg, book_start, book_end)  # type: ignore[arg-type]
            )
    return {k: pl.concat(v, how="vertical_relaxed") for k, v in parts.items() if v}


def load_raw_history(
    database: str | Path, bases: tuple[str, ...], start: datetime, end: datetime
) -> dict[str, pl.DataFrame]:
    """The DuckDB raw tables' rows of `bases` in `[start, end)` (read-only connection).

    Raises:
        ValueError: a raw table is missing or holds no row for an asset in the window.
    """
    spots = [Pair(b).spot for b in bases]
    perps = [Pair(b).perp for b in bases]
    con = duckdb.connect(str(database), read_only=True)
    out: dict[str, pl.DataFrame] = {}
    try:
        for key, table in RAW_TABLES.items():
            time_col = "funding_time" if key == "funding" else "ts"
            symbols = spots + perps if key == "order_book" else (spots if key == "spot" else perps)
            try:
                result = con.sql(
                    f"select * from raw.{table} where symbol in (select unnest(?)) "
                    f"and {time_col} >= ? and {time_col} < ? order by symbol, {time_col}",
                    params=[symbols, start, end],
                )
                frame = pl.from_arrow(result.to_arrow_table())
                assert isinstance(frame, pl.DataFrame)
            except duckdb.CatalogException as exc:
                if key == "order_book":
                    continue  # books are optional: bars then use the proxy depth
                raise ValueError(f"{database}: raw.{table} is missing; run ingest_job") from exc
            missing = set(symbols) - set(frame["symbol"].unique().to_list())
            if missing and key != "order_book":
                raise ValueError(
                    f"{database}: raw.{table} has no rows for {sorted(missing)} in "
                    f"[{start}, {end}); ingest that history before a live session"
                )
            # DuckDB hands timestamps back as Etc/UTC; the raw schemas say UTC.
            out[key] = frame.with_columns(pl.col(pl.Datetime).dt.convert_time_zone("UTC"))
    finally:
        con.close()
    return out


def load_sentiment_scores(database: str | Path, start: datetime) -> pl.DataFrame:
    """The `features.sentiment_scores` rows published from `start` on (read-only connection).

    Raises:
        ValueError: the table is missing or holds no score published from `start` on.
    """
    con = duckdb.connect(str(database), read_only=True)
    try:
        result = con.sql(
            "select ts, published_at, source, score from features.sentiment_scores "
            "where published_at >= ? order by published_at, ts",
            params=[start],
        )
        frame = pl.from_arrow(result.to_arrow_table())
        assert isinstance(frame, pl.DataFrame)
    except duckdb.CatalogException as exc:
        raise ValueError(
            f"{database}: features.sentiment_scores is missing; the champion's windows hold "
            "f_sent_ features, which a live session builds from the stored scores: materialise "
            "features/sentiment_scores first"
        ) from exc
    finally:
        con.close()
    if frame.height == 0:
        raise ValueError(
            f"{database}: features.sentiment_scores holds no score published since {start}; "
            "materialise features/sentiment_scores over the session's history"
        )
    return frame.with_columns(pl.col(pl.Datetime).dt.convert_time_zone("UTC")).select(
        [pl.col(c).cast(t) for c, t in SENTIMENT_SCHEMA.items()]
    )


def check_stored_sentiment(database: str | Path, market: MarketData, atol: float = 1e-9) -> int:
    """Compare `market`'s `f_sent_` features with `features.sentiment_windows` (what the champion's
    training windows were built from) on the bars both hold outside the stored warm-up; the
    number of bars compared (0 when the table is missing).

    Raises:
        ValueError: a feature differs by more than `atol` (the stored windows were built with
            other `sentiment_*` settings than the feed's defaults, or from other scores), naming
            the feature and the first bar.
    """
    names = [n for n in market.feature_names if n.startswith("f_sent_")]
    con = duckdb.connect(str(database), read_only=True)
    try:
        cols = ", ".join(names)
        stored = pl.from_arrow(
            con.sql(
                f"select epoch_ns(ts) as ts_ns, {cols} from features.sentiment_windows "
                "where not warmup order by ts"
            ).to_arrow_table()
        )
    except duckdb.CatalogException:
        return 0
    finally:
        con.close()
    assert isinstance(stored, pl.DataFrame)
    ts = market.ts.astype(np.int64)
    stored = stored.filter(pl.col("ts_ns").is_in(ts.tolist()))
    rows = np.searchsorted(ts, stored["ts_ns"].to_numpy())
    for name in names:
        live = market.features[rows, 0, list(market.feature_names).index(name)]
        bad = np.flatnonzero(~np.isclose(live, stored[name].to_numpy(), rtol=0.0, atol=atol))
        if bad.size:
            when = datetime.fromtimestamp(int(ts[rows[bad[0]]]) / 1e9, tz=UTC)
            raise ValueError(
                f"{database}: {name} at {when} is {live[bad[0]]!r} on the live feed, "
                f"{stored[name][int(bad[0])]!r} in features.sentiment_windows ({bad.size} bars "
                "differ): the stored windows were built with other sentiment_* settings than "
                "the feed's defaults, or from other scores"
            )
    return stored.height


class SimulatedFeed(ReplayFeed):
    """`ReplayFeed` of the simulated exchange's market that tracks the paper clock.

    `now()` is the close of the last polled bar, the clock `SimulatedExchangeBooks` reads.
    """

    def __init__(self, data: MarketData, seconds_per_bar: float = 0.0) -> None:
        super().__init__(data, seconds_per_bar)
        self._now = self._close(0)

    def _close(self, t: int) -> datetime:
        ts_ns = int(self.data.ts[min(t, self.data.n_bars - 1)])
        return datetime.fromtimestamp(ts_ns / 1e9 + self.data.bar_seconds, tz=UTC)

    def poll(self, t: int) -> str:
        """Move the clock to bar t's close, then `ReplayFeed.poll`."""
        self._now = self._close(t)
        return super().poll(t)

    def now(self) -> datetime:
        """The paper clock: close of the last polled bar."""
        return self._now


class FrameBooks:
    """Order-book snapshots fetched once, served by window like an exchange's
    `fetch_order_book` (the simulator re-simulates on every call, ~0.5 s each)."""

    def __init__(self, snapshots: pl.DataFrame) -> None:
        self.snapshots = snapshots

    def fetch_order_book(
        self, symbol: str, market: str, start: datetime, end: datetime
    ) -> pl.DataFrame:
        """Snapshots of `symbol`'s `market` leg taken in `[start, end)`."""
        s = self.snapshots
        return s.filter(
            (pl.col("symbol") == symbol)
            & (pl.col("market") == market)
            & (pl.col("ts") >= start)
            & (pl.col("ts") < end)
        )


def simulated_feed(
    bases: tuple[str, ...],
    start: datetime,
    end: datetime,
    *,
    timeframe: str = "1h",
    seed: int = 0,
    seconds_per_bar: float = 0.0,
    carry: CarryFeaturesConfig | None = None,
    sentiment: bool = False,
) -> tuple[SimulatedFeed, FrameBooks]:
    """The seeded simulated exchange over `[start, end)` as a feed, and its order-book snapshots
    (hand them to `SimulatedExchangeBooks(books, feed.now)`).

    The bars are what the pipeline would build from the same raw tables (warm-up dropped); with
    `sentiment`, the exchange's sentiment index from `SENTIMENT_HISTORY` before `start` gives the
    `f_sent_` features, as the pipeline's `sentiment_windows` does.
    """
    exchange = SimulatedExchange(seed=seed, clock=lambda: end)
    raw = fetch_raw(exchange, bases, timeframe, start, end)
    scores = exchange.fetch_sentiment(start - SENTIMENT_HISTORY, end) if sentiment else None
    frame = market_frame_from_raw(raw, MarketBarsConfig(bar=timeframe), carry, scores)
    return SimulatedFeed(MarketData.from_frame(frame), seconds_per_bar), FrameBooks(
        raw["order_book"]
    )


@dataclass
class VirtualClock:
    """A clock that jumps instead of sleeping: the accelerated clock of tests and replays."""

    now_: datetime
    waits: list[datetime] = field(default_factory=list)

    def now(self) -> datetime:
        """The current virtual time."""
        return self.now_

    def sleep_until(self, when: datetime) -> None:
        """Jump to `when` (never backwards)."""
        self.waits.append(when)
        self.now_ = max(self.now_, when)


class WallClock:
    """The real clock: `sleep_until` sleeps."""

    def now(self) -> datetime:
        """UTC now."""
        return datetime.now(UTC)

    def sleep_until(self, when: datetime) -> None:
        """Sleep until `when`."""
        time.sleep(max(0.0, (when - self.now()).total_seconds()))


class ExchangeFeed:
    """A live feed polling `exchange` once per bar (see the module docstring).

    Args:
        exchange: the market-data client (public endpoints only are called).
        bases: assets ("BTC", "ETH").
        history: raw tables to start from (`load_raw_history`), ending before `clock.now()`.
        clock: `now()` and `sleep_until(t)` (`WallClock`, or `VirtualClock` in tests).
        bars: the pipeline's `market_bars` settings (`bar` is the poll interval).
        carry: the pipeline's `carry_features` settings.
        settle_s: seconds after a bar's close before it is fetched (venues publish late).
        max_wait_bars: bars `bar_ready` waits for a bar before giving up (False: the feed stopped).
        raw_timeframe: kline size fetched (resampled to `bars.bar`); default the bar.
        sentiment: stored sentiment scores (`SENTIMENT_SCHEMA`) carried forward into the `f_sent_`
            features (module docstring); None builds none.
        sentiment_config: the `sentiment_windows` settings (default the pipeline's defaults).
    """

    live = True

    def __init__(
        self,
        exchange: ExchangeClient,
        bases: tuple[str, ...],
        history: dict[str, pl.DataFrame],
        clock: Any,
        bars: MarketBarsConfig,
        carry: CarryFeaturesConfig | None = None,
        settle_s: float = 2.0,
        max_wait_bars: int = 3,
        raw_timeframe: str | None = None,
        sentiment: pl.DataFrame | None = None,
        sentiment_config: SentimentWindowsConfig | None = None,
    ) -> None:
        self.raw_timeframe = raw_timeframe or bars.bar
        self.sentiment = sentiment
        self.sentiment_config = sentiment_config
        self.exchange = exchange
        self.bases = bases
        self.clock = clock
        self.bars = bars
        self.carry = carry or CarryFeaturesConfig()
        self.bar = parse_duration(bars.bar)
        self.settle = timedelta(seconds=settle_s)
        self.max_wait_bars = max_wait_bars
        _check_history(history, exchange, self.raw_timeframe)
        self.raw = {k: v for k, v in history.items()}
        self.errors = 0
        """Failed refreshes (network or exchange errors, malformed answers) so far."""
        self.last_error = ""
        self._market = MarketData.from_frame(self._frame())
        self._funding_from = self._raw_end()  # settlements before it come with the history
        self._funding_checked: datetime | None = None  # the last close fetched through
        self.refresh()

    @property
    def market(self) -> MarketData:
        """The bars so far (a new object each time bars are appended)."""
        return self._market

    def refresh(self) -> int:
        """Fetch every raw row since the buffer's last and rebuild the market; new bar count.

        Klines are fetched up to the last closed one; settlements up to and including that
        kline's close (the pipeline books a settlement on the bar it closes, so the bar is
        complete only with it; the history, cut at `[start, end)`, lacks the one at its end).
        """
        now = self.clock.now()
        since = self._raw_end()
        end = _floor(now, parse_duration(self.raw_timeframe))  # every kline before it has closed
        if since >= end and self._funding_checked == end:
            return 0
        # From the last close checked (re-fetched rows are deduplicated) to a minute past this
        # one: a settlement stamped at `end` is in (the simulator serves whole minutes only).
        funding_window = (self._funding_from, end + timedelta(minutes=1))
        hour = _floor(now, timedelta(hours=1))  # the hour holding now: the simulator's book grid
        new = fetch_raw(
            self.exchange,
            self.bases,
            self.raw_timeframe,
            since,
            end,
            (hour, hour + timedelta(hours=1)),
            funding_window,
        )
        for key, frame in new.items():
            if frame.height:
                self.raw[key] = _append(self.raw.get(key), frame, key)
        self._funding_from, self._funding_checked = end, end
        market = MarketData.from_frame(self._frame())
        grown = market.n_bars - self._market.n_bars
        if grown >= 0:
            if not np.array_equal(market.ts[: self._market.n_bars], self._market.ts):
                raise ValueError("ExchangeFeed: history changed under the feed (bars re-stamped)")
            self._market = market
        return max(grown, 0)

    def _frame(self) -> pl.DataFrame:
        # The pipeline's market frame over the whole buffer (and the stored sentiment, if any).
        return market_frame_from_raw(
            self.raw, self.bars, self.carry, self.sentiment, self.sentiment_config
        )

    def _raw_end(self) -> datetime:
        # Start of the next perp bar to fetch: every leg's buffer is kept to the same grid.
        last = self.raw["perp"]["ts"].max()
        return last + parse_duration(self.raw_timeframe)  # type: ignore[operator, return-value]

    def bar_ready(self, t: int) -> bool:
        """Wait (on the clock) until bar t has closed and been fetched; False after
        `max_wait_bars` bars without it. Fetch errors are counted and retried at the next bar."""
        waited = 0
        while t >= self._market.n_bars:
            if waited >= self.max_wait_bars:
                return False
            next_close = self._next_close()
            self.clock.sleep_until(next_close + self.settle)
            waited += 1
            try:
                self.refresh()
            except Exception as e:  # noqa: BLE001 - counted, retried; the session books the gap
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
        return True

    def _next_close(self) -> datetime:
        # When the next bar of the pipeline's grid has closed: one bar after the first raw kline
        # not yet fetched opened.
        return self._raw_end() + self.bar

    def poll(self, t: int) -> str:
        """ "" once bar t is in the market with positive finite prices, else why not."""
        if not self.bar_ready(t):
            return f"no data for bar {t} after {self.max_wait_bars} bars ({self.last_error})"
        return ReplayFeed(self._market).poll(t)


def _check_history(
    history: dict[str, pl.DataFrame], exchange: ExchangeClient, raw_timeframe: str
) -> None:
    # The buffer splices the history with what the feed fetches: same venue, same kline size.
    for key, leg in (("spot", "spot"), ("perp", "perp")):
        frame = history.get(key)
        if frame is None or frame.height == 0:
            raise ValueError(f"ExchangeFeed: the history has no raw_{leg}_ohlcv rows")
        venue = exchange.exchange_name(leg)  # type: ignore[arg-type]
        others = sorted(set(frame["exchange"].unique().to_list()) - {venue})
        if others:
            raise ValueError(
                f"ExchangeFeed: raw_{leg}_ohlcv history comes from {others}, the feed polls "
                f"{venue}; ingest that venue's history (ingest_job with exchange kind ccxt)"
            )
        gaps = frame.sort("symbol", "ts").select(
            pl.col("ts").diff().over("symbol").dt.total_seconds().alias("gap")
        )["gap"]
        step = gaps.filter(gaps > 0).min()
        want = parse_duration(raw_timeframe).total_seconds()
        if step is not None and float(step) != want:  # type: ignore[arg-type]
            raise ValueError(
                f"ExchangeFeed: raw_{leg}_ohlcv history holds klines {float(step):.0f} s apart "  # type: ignore[arg-type]
                f"({raw_timeframe} = {want:.0f} s is fetched); set the feed's raw_timeframe to "
                "the size ingestion stored"
            )


def ccxt_feed(
    database: str | Path,
    bases: tuple[str, ...],
    clock: Any,
    *,
    history_start: datetime,
    bars: MarketBarsConfig,
    carry: CarryFeaturesConfig | None = None,
    raw_timeframe: str | None = None,
    spot_exchange: str = "binance",
    perp_exchange: str = "binanceusdm",
    api_url: str | None = None,
    timeout_ms: int = 10_000,
    max_retries: int = 5,
    settle_s: float = 2.0,
    max_wait_bars: int = 3,
    sentiment: bool = False,
) -> tuple[ExchangeFeed, SimulatedExchangeBooks]:
    """An `ExchangeFeed` on a key-less `CcxtExchange`, warmed up from the DuckDB raw history
    `[history_start, now)` (`load_raw_history`), and the venue's live books at the feed's clock.
    With `sentiment`, the `features.sentiment_scores` published from `SENTIMENT_HISTORY` before
    `history_start` on are carried forward into the `f_sent_` features (module docstring), which
    must equal the stored `features.sentiment_windows` where both have bars
    (`check_stored_sentiment`).

    The client holds no key, so only public endpoints can answer; it is never the live
    executor's client. The history's start fixes the bar index of every bar: a session resumed
    with the same `history_start` finds its bars where it left them.

    Raises:
        ValueError: no history for an asset, history from another venue or of another kline size,
            or (with `sentiment`) no stored sentiment scores or windows that differ from them.
        PermanentExchangeError: an exchange id ccxt does not know.
    """
    raw_tf = raw_timeframe or bars.bar
    exchange = CcxtExchange(
        spot_exchange,
        perp_exchange,
        api_url=api_url,
        timeout_ms=timeout_ms,
        max_retries=max_retries,
        clock=clock.now,
    )
    end = _floor(clock.now(), parse_duration(raw_tf))
    history = load_raw_history(database, bases, history_start, end)
    scores = (
        load_sentiment_scores(database, history_start - SENTIMENT_HISTORY) if sentiment else None
    )
    feed = ExchangeFeed(
        exchange, bases, history, clock, bars, carry, settle_s, max_wait_bars, raw_tf, scores
    )
    if sentiment:
        check_stored_sentiment(database, feed.market)
    return feed, SimulatedExchangeBooks(exchange, clock.now)


def _floor(t: datetime, step: timedelta) -> datetime:
    # `t` rounded down to a multiple of `step` since midnight UTC.
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    return day + ((t - day) // step) * step


def _append(old: pl.DataFrame | None, new: pl.DataFrame, key: str) -> pl.DataFrame:
    # Buffer plus new rows, deduplicated on the row's identity (a re-fetched bar is kept once).
    if old is None:
        return new
    ident = {
        "spot": ["symbol", "ts"],
        "perp": ["symbol", "ts"],
        "funding": ["symbol", "funding_time"],
        "order_book": ["symbol", "market", "ts"],
    }[key]
    both = pl.concat([old, new.select(old.columns)], how="vertical_relaxed")
    return both.unique(ident, keep="first", maintain_order=True).sort(ident)
