"""Sentiment: scores from a configurable source (`sentiment_scores`) and their bar-grid features
(`sentiment_windows`).

A score is usable only from its `published_at` on. Sources:
- `simulated`: the embedded simulator's hourly market-wide index (`carry_env.synthetic`), the
  offline default;
- `file`: a user CSV or Parquet file with a timestamp column and a score column, and optionally a
  publication time column; without one, `published_at = ts + publication_lag`;
- `http`: a URL answering CSV, or JSON (a list of records, or an object whose `data` key holds one),
  with the same columns as a file.

Scores are in [-1, 1] (-1 extreme fear, +1 extreme greed); sources on another scale (the 0-100 Fear
& Greed index) are mapped with `score_range`.
"""

from __future__ import annotations

import io
import json
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import polars as pl

from carry_pipeline.lib.features.timeframes import bars_in, infer_bar, parse_duration
from carry_pipeline.lib.schemas import SENTIMENT_SCHEMA, UTC_TS


@dataclass(frozen=True)
class SentimentSourceConfig:
    """Where `sentiment_scores` reads its scores from."""

    kind: Literal["simulated", "file", "http"] = "simulated"
    """`simulated` (offline default), `file` (CSV/Parquet at `path`) or `http` (CSV/JSON at
    `url`)."""
    path: str | None = None
    """File to read when `kind` is `file`; `.parquet` is read as Parquet, anything else as CSV."""
    url: str | None = None
    """URL to fetch when `kind` is `http`."""
    timestamp_column: str = "timestamp"
    """Column holding the time the score refers to (ISO-8601 text, a datetime, or epoch seconds)."""
    score_column: str = "score"
    """Column holding the score."""
    published_at_column: str | None = None
    """Column holding the publication time; None derives it as timestamp + `publication_lag`."""
    publication_lag: str = "0s"
    """Delay between a score's timestamp and its publication when the source has no publication
    column (a daily index stamped at midnight but published at 01:00 has a lag of `1h`)."""
    score_range: tuple[float, float] = (-1.0, 1.0)
    """Scale of the source's scores, mapped linearly onto [-1, 1] (`(0, 100)` for Fear & Greed)."""
    timeout_s: float = 30.0
    """HTTP timeout in seconds."""
    seed: int = 0
    """Seed of the simulated index (use the simulated exchange's seed)."""
    name: str | None = None
    """Value of the `source` column; defaults to the kind and path or URL."""

    def __post_init__(self) -> None:
        if self.kind not in ("simulated", "file", "http"):
            raise ValueError(
                f"sentiment source kind must be simulated, file or http, not {self.kind!r}"
            )
        if self.kind == "file" and not self.path:
            raise ValueError("sentiment source kind 'file' needs `path`")
        if self.kind == "http" and not self.url:
            raise ValueError("sentiment source kind 'http' needs `url`")
        lo, hi = self.score_range
        if not hi > lo:
            raise ValueError(f"score_range {self.score_range} must be (low, high) with high > low")
        if self.publication_lag != "0s":
            parse_duration(self.publication_lag)


def load_sentiment(source: SentimentSourceConfig, start: datetime, end: datetime) -> pl.DataFrame:
    """Read the scores of `source` published in `[start, end)`.

    Args:
        source: the source settings.
        start: first publication time wanted (UTC).
        end: end of the wanted window (UTC), exclusive.

    Returns:
        A frame in `SENTIMENT_SCHEMA`, sorted by `published_at` then `ts`.

    Raises:
        ValueError: a column is missing, a value does not parse, or a score falls outside
            `score_range`.
        OSError: the file cannot be read or the URL cannot be fetched.
    """
    if source.kind == "simulated":
        from carry_env.synthetic import simulate_sentiment

        raw = simulate_sentiment(start, end, seed=source.seed)
        frame = raw.select(
            "ts", "published_at", pl.lit(source.name or "simulated").alias("source"), "score"
        )
        return _validated(frame, source, "simulated index")
    if source.kind == "file":
        assert source.path is not None
        path = Path(source.path)
        table = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path)
        where = str(path)
    else:
        assert source.url is not None
        table = _fetch_http(source.url, source.timeout_s)
        where = source.url
    frame = parse_scores(table, source, where=where)
    return frame.filter((pl.col("published_at") >= start) & (pl.col("published_at") < end))


def parse_scores(table: pl.DataFrame, source: SentimentSourceConfig, *, where: str) -> pl.DataFrame:
    """Turn a user table (file or HTTP) into `SENTIMENT_SCHEMA` rows.

    Args:
        table: the table as read.
        source: column names, lag and scale.
        where: the file or URL, for error messages.

    Raises:
        ValueError: a column is missing, a timestamp does not parse, or a score is out of range.
    """
    wanted = [source.timestamp_column, source.score_column]
    if source.published_at_column:
        wanted.append(source.published_at_column)
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise ValueError(
            f"sentiment source {where}: columns {missing} missing (has {table.columns})"
        )
    ts = _as_utc(table[source.timestamp_column], where, source.timestamp_column)
    if source.published_at_column:
        published = _as_utc(table[source.published_at_column], where, source.published_at_column)
    else:
        published = (
            ts + parse_duration(source.publication_lag) if source.publication_lag != "0s" else ts
        )
    lo, hi = source.score_range
    score = table[source.score_column].cast(pl.Float64, strict=False)
    frame = pl.DataFrame(
        {
            "ts": ts,
            "published_at": published,
            "source": source.name or f"{source.kind}:{where}",
            "score": (score - lo) / (hi - lo) * 2.0 - 1.0,
        }
    )
    return _validated(frame, source, where)


def _fetch_http(url: str, timeout_s: float) -> pl.DataFrame:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (configured URL)
        body = response.read()
    text = body.decode("utf-8")
    if text.lstrip().startswith(("{", "[")):
        records = json.loads(text)
        if isinstance(records, dict):
            records = records.get("data")
        if not isinstance(records, list):
            raise ValueError(
                f"sentiment source {url}: JSON is neither a list nor an object with `data`"
            )
        return pl.DataFrame(records)
    return pl.read_csv(io.StringIO(text))


def _as_utc(column: pl.Series, where: str, name: str) -> pl.Series:
    # Datetimes (naive = UTC), ISO text, or epoch seconds as numbers or numeric text.
    if isinstance(column.dtype, pl.Datetime):
        out = column.dt.replace_time_zone("UTC") if column.dtype.time_zone is None else column
        return out.dt.convert_time_zone("UTC").cast(UTC_TS)
    if column.dtype.is_numeric() or (
        column.dtype == pl.String and column.str.contains(r"^\d+(\.\d+)?$").all()
    ):
        seconds = column.cast(pl.Float64)
        return (seconds * 1e6).cast(pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    parsed = column.cast(pl.String).str.to_datetime(time_zone="UTC", time_unit="us", strict=False)
    bad = parsed.is_null() & column.is_not_null()
    if bad.any():
        raise ValueError(
            f"sentiment source {where}: {bad.sum()} values of {name} are not timestamps, "
            f"e.g. {column.filter(bad)[0]!r}"
        )
    return parsed.cast(UTC_TS)


def _validated(frame: pl.DataFrame, source: SentimentSourceConfig, where: str) -> pl.DataFrame:
    frame = frame.select([pl.col(c).cast(t) for c, t in SENTIMENT_SCHEMA.items()])
    nulls = frame.filter(pl.any_horizontal(pl.all().is_null()))
    if nulls.height:
        raise ValueError(
            f"sentiment source {where}: {nulls.height} rows with a null time or score "
            f"(first {nulls.row(0, named=True)})"
        )
    out = frame.filter((pl.col("score") < -1.0 - 1e-9) | (pl.col("score") > 1.0 + 1e-9))
    if out.height:
        raise ValueError(
            f"sentiment source {where}: {out.height} scores outside score_range "
            f"{source.score_range}, first at {out['ts'][0]}"
        )
    early = frame.filter(pl.col("published_at") < pl.col("ts"))
    if early.height:
        raise ValueError(
            f"sentiment source {where}: {early.height} scores published before the time they "
            f"refer to, first ts {early['ts'][0]}"
        )
    return frame.sort("published_at", "ts")


@dataclass(frozen=True)
class SentimentWindowsConfig:
    """Windows of `build_sentiment_windows`."""

    change_window: str = "1d"
    """Lag of `f_sent_change` (level now minus level this long ago)."""
    zscore_window: str = "7d"
    """Window of `f_sent_z`."""
    mean_windows: tuple[str, ...] = ("1d", "7d")
    """Rolling means `f_sent_mean_<w>`."""
    extreme_level: float = 0.6
    """|level| at or beyond which `f_sent_extreme_fear` / `f_sent_extreme_greed` is 1."""
    max_age: str = "2d"
    """Age beyond which the latest score is flagged `f_sent_stale` (it is still carried forward)."""

    def __post_init__(self) -> None:
        for text in (self.change_window, self.zscore_window, *self.mean_windows, self.max_age):
            parse_duration(text)
        if not 0.0 < self.extreme_level <= 1.0:
            raise ValueError(f"extreme_level must be in (0, 1], got {self.extreme_level}")


def build_sentiment_windows(
    scores: pl.DataFrame, grid: pl.Series, config: SentimentWindowsConfig | None = None
) -> pl.DataFrame:
    """Align sentiment scores on the bar grid by publication time and derive window features.

    The level at bar `ts` is the score with the latest `published_at <= ts` (ties: the latest `ts`
    it refers to), so a score never appears before it is published.

    Args:
        scores: `sentiment_scores` (`SENTIMENT_SCHEMA`).
        grid: the bar close times of `market_bars` (any order, duplicates allowed).
        config: windows; defaults to `SentimentWindowsConfig()`.

    Returns:
        One row per grid `ts`: `ts`, `sentiment` (the level, the env's optional column), `warmup`,
        and `f_sent_level`, `f_sent_change`, `f_sent_z`, `f_sent_mean_<w>`, `f_sent_extreme_fear`,
        `f_sent_extreme_greed`, `f_sent_age_hours`, `f_sent_stale`.

    Raises:
        ValueError: no score is published before the end of the grid, or a window is not a multiple
            of the grid's bar.
    """
    cfg = config or SentimentWindowsConfig()
    ts = grid.unique().sort().cast(UTC_TS).alias("ts")
    bar = infer_bar(ts, what="sentiment grid")
    scores = scores.select([pl.col(c).cast(t) for c, t in SENTIMENT_SCHEMA.items()])
    latest = (
        scores.sort("published_at", "ts")
        .group_by("published_at", maintain_order=True)
        .agg(pl.col("score").last())
    )
    frame = pl.DataFrame(ts).join_asof(
        latest, left_on="ts", right_on="published_at", strategy="backward"
    )
    if frame["score"].is_null().all():
        raise ValueError(
            f"sentiment_windows: no score is published by the end of the grid ({ts.max()!s}); "
            f"first publication {scores['published_at'].min()!s}"
        )
    level = pl.col("score")
    n_change = bars_in(cfg.change_window, bar, what="change_window")
    n_z = bars_in(cfg.zscore_window, bar, what="zscore_window")
    mean, std = level.rolling_mean(n_z), level.rolling_std(n_z)
    age_h = (pl.col("ts") - pl.col("published_at")).dt.total_seconds() / 3600.0
    features = frame.select(
        "ts",
        level.alias("sentiment"),
        level.alias("f_sent_level"),
        (level - level.shift(n_change)).alias("f_sent_change"),
        pl.when(std > 0)
        .then((level - mean) / std)
        .otherwise(pl.when(std == 0).then(0.0))
        .alias("f_sent_z"),
        *[
            level.rolling_mean(bars_in(w, bar, what="mean window")).alias(f"f_sent_mean_{w}")
            for w in cfg.mean_windows
        ],
        (level <= -cfg.extreme_level).cast(pl.Float64).alias("f_sent_extreme_fear"),
        (level >= cfg.extreme_level).cast(pl.Float64).alias("f_sent_extreme_greed"),
        age_h.alias("f_sent_age_hours"),
        (age_h > parse_duration(cfg.max_age) / timedelta(hours=1))
        .cast(pl.Float64)
        .alias("f_sent_stale"),
    )
    cols = [c for c in features.columns if c.startswith("f_")]
    complete = pl.all_horizontal([pl.col(c).is_finite().fill_null(False) for c in cols])
    first = features.filter(complete)["ts"].min()
    if first is None:
        raise ValueError(
            f"sentiment_windows: no bar has every sentiment feature defined; the grid "
            f"({ts.len()} bars) is shorter than the longest window ({cfg.zscore_window})"
        )
    return features.with_columns((pl.col("ts") < first).alias("warmup")).select(
        "ts", "sentiment", "warmup", *cols
    )
