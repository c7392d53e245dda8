"""Feature assets (DuckDB schema `features`): `market_bars`, `carry_features`, `sentiment_scores`,
`sentiment_windows`.

Thin wrappers over `carry_pipeline/lib/features/`: each reads its inputs through the IO manager,
calls one function with the `feature_settings` resource's configuration and returns a polars frame.
They are not partitioned: rolling windows and EWMs need the whole history, and five years of
15-minute bars for six symbols rebuild in a few seconds (`bench/features.py`). A lib `ValueError`
(bad input, too little history) fails the step at once with its message; retrying would not help.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext

from carry_pipeline.defs.features.resources import FeatureSettings
from carry_pipeline.defs.ingestion.resources import ExchangeResource
from carry_pipeline.lib.exchanges import PermanentExchangeError
from carry_pipeline.lib.features.bars import build_market_bars
from carry_pipeline.lib.features.carry import build_carry_features
from carry_pipeline.lib.features.sentiment import build_sentiment_windows, load_sentiment
from carry_pipeline.lib.features.timeframes import parse_duration, share, ts_bounds
from carry_pipeline.lib.schemas import SENTIMENT_SCHEMA

SCHEMA = "features"
GROUP = "features"
RAW = {
    "raw_spot_ohlcv": dg.AssetKey(["raw", "raw_spot_ohlcv"]),
    "raw_perp_ohlcv": dg.AssetKey(["raw", "raw_perp_ohlcv"]),
    "raw_funding_rates": dg.AssetKey(["raw", "raw_funding_rates"]),
    "raw_order_book": dg.AssetKey(["raw", "raw_order_book"]),
}
"""Keys of the ingestion stage's raw assets."""
TS_ONLY = {"columns": ["ts"]}
"""Input metadata that loads only the `ts` column of a table."""


@contextmanager
def failing_clearly() -> Iterator[None]:
    """Turn a lib `ValueError` (bad data or settings) into a non-retried `dg.Failure`."""
    try:
        yield
    except ValueError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc


def _span(frame: pl.DataFrame) -> str:
    if frame.height == 0:
        return "empty"
    lo, hi = ts_bounds(frame["ts"], what="frame")
    return f"{lo} .. {hi}"


@dg.asset(
    key_prefix=SCHEMA,
    group_name=GROUP,
    ins={name: dg.AssetIn(key=key) for name, key in RAW.items()},
    kinds={"duckdb", "polars"},
)
def market_bars(
    context: AssetExecutionContext,
    feature_settings: FeatureSettings,
    raw_spot_ohlcv: pl.DataFrame,
    raw_perp_ohlcv: pl.DataFrame,
    raw_funding_rates: pl.DataFrame,
    raw_order_book: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """Spot and perp bars, settled funding, depth and spread on one grid per symbol (the env's
    market frame: `ts` = bar close, `symbol` = perp symbol, null funding where none settles)."""
    cfg = feature_settings.pipeline()
    with failing_clearly():
        bars = build_market_bars(
            raw_spot_ohlcv, raw_perp_ohlcv, raw_funding_rates, raw_order_book, cfg.bars
        )
    context.log.info(f"market_bars: {bars.height} rows, {bars['symbol'].n_unique()} symbols")
    return dg.Output(
        bars,
        metadata={
            "rows": bars.height,
            "symbols": ", ".join(sorted(bars["symbol"].unique().to_list())),
            "grid": _span(bars),
            "bar": cfg.bars.bar,
            "stale_share": share(bars["stale"]),
            "book_proxy_share": share(bars["book_proxy"]),
            "settlements": int(bars["funding_rate"].is_not_null().sum()),
        },
    )


@dg.asset(
    key_prefix=SCHEMA,
    group_name=GROUP,
    ins={"market_bars": dg.AssetIn(key=dg.AssetKey([SCHEMA, "market_bars"]))},
    kinds={"duckdb", "polars"},
)
def carry_features(
    feature_settings: FeatureSettings, market_bars: pl.DataFrame
) -> dg.Output[pl.DataFrame]:
    """Point-in-time carry, risk, microstructure, indicator (bar, closed 4h and 1d), time and
    cross-asset features (`f_` columns) with the `warmup` flag."""
    with failing_clearly():
        features = build_carry_features(market_bars, feature_settings.pipeline().carry)
    live = features.filter(~pl.col("warmup"))
    cols = [c for c in features.columns if c.startswith("f_")]
    return dg.Output(
        features,
        metadata={
            "rows": features.height,
            "features": len(cols),
            "feature_names": ", ".join(cols),
            "warmup_ends": str(live["ts"].min()),
            "usable_rows": live.height,
        },
    )


@dg.asset(
    key_prefix=SCHEMA,
    group_name=GROUP,
    ins={"market_bars": dg.AssetIn(key=dg.AssetKey([SCHEMA, "market_bars"]), metadata=TS_ONLY)},
    kinds={"duckdb", "polars"},
)
def sentiment_scores(
    context: AssetExecutionContext,
    feature_settings: FeatureSettings,
    exchange: ExchangeResource,
    market_bars: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """Sentiment scores (`SENTIMENT_SCHEMA`) covering the bar grid, from the configured source, each
    with the time it was published."""
    with failing_clearly():
        first, last = ts_bounds(market_bars["ts"], what="market_bars")
    start = first - parse_duration(feature_settings.sentiment_history)
    # Sources take whole-minute windows, end exclusive: one minute past the last bar includes it.
    end = last + timedelta(minutes=1)
    if feature_settings.sentiment_source == "exchange":
        try:
            client = exchange.client()
        except PermanentExchangeError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        fetch = getattr(client, "fetch_sentiment", None)
        if fetch is None:
            raise dg.Failure(
                description=f"the {type(client).__name__} exchange serves no sentiment index; set "
                "feature_settings.sentiment_source to 'file' or 'http'",
                allow_retries=False,
            )
        scores = fetch(start, end)
    else:
        with failing_clearly():
            scores = load_sentiment(feature_settings.sentiment_source_config(), start, end)
    context.log.info(f"sentiment_scores: {scores.height} scores published {start} .. {end}")
    scores = scores.select([pl.col(c).cast(t) for c, t in SENTIMENT_SCHEMA.items()])
    return dg.Output(
        scores,
        metadata={
            "rows": scores.height,
            "source": feature_settings.sentiment_source,
            "published": f"{scores['published_at'].min()} .. {scores['published_at'].max()}",
        },
    )


@dg.asset(
    key_prefix=SCHEMA,
    group_name=GROUP,
    ins={
        "sentiment_scores": dg.AssetIn(key=dg.AssetKey([SCHEMA, "sentiment_scores"])),
        "market_bars": dg.AssetIn(key=dg.AssetKey([SCHEMA, "market_bars"]), metadata=TS_ONLY),
    },
    kinds={"duckdb", "polars"},
)
def sentiment_windows(
    feature_settings: FeatureSettings, sentiment_scores: pl.DataFrame, market_bars: pl.DataFrame
) -> dg.Output[pl.DataFrame]:
    """Sentiment on the bar grid by publication time: level, change, z-score, rolling means,
    extreme flags, age and staleness."""
    with failing_clearly():
        windows = build_sentiment_windows(
            sentiment_scores, market_bars["ts"], feature_settings.pipeline().sentiment
        )
    return dg.Output(
        windows,
        metadata={
            "rows": windows.height,
            "stale_share": share(windows["f_sent_stale"]),
            "warmup_ends": str(windows.filter(~pl.col("warmup"))["ts"].min()),
        },
    )
