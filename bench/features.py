"""Benchmark: `market_bars` + `carry_features` on five years of 15-minute bars for six symbols.

Prints the time of each part and the ratio to the 5-second budget of ARCHITECTURE.md. The raw tables
are generated here with numpy (seeded geometric random walks, 8-hourly funding, a half-hourly order
book) in the raw schemas; generation is not timed.

    .venv/bin/python bench/features.py [--years 5] [--symbols 6] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from carry_pipeline.lib.features.bars import MarketBarsConfig, build_market_bars
from carry_pipeline.lib.features.carry import build_carry_features
from carry_pipeline.lib.schemas import FUNDING_SCHEMA, OHLCV_SCHEMA, ORDER_BOOK_SCHEMA

BUDGET_S = 5.0
BASES = ("BTC", "ETH", "SOL", "BNB", "XRP", "DOGE", "ADA", "AVAX")
START = datetime(2020, 1, 1, tzinfo=UTC)


def _times(start: datetime, step: timedelta, n: int) -> pl.Series:
    return pl.datetime_range(
        start, start + step * (n - 1), step, eager=True, time_unit="us", time_zone="UTC"
    )


def _ohlcv(symbol: str, ts: pl.Series, close: np.ndarray, rng: np.random.Generator) -> pl.DataFrame:
    n = close.size
    opens = np.concatenate([[close[0]], close[:-1]])
    wick = np.abs(rng.normal(0.0, 0.0015, (2, n)))
    return pl.DataFrame(
        {
            "ts": ts,
            "exchange": "bench",
            "symbol": symbol,
            "open": opens,
            "high": np.maximum(opens, close) * (1 + wick[0]),
            "low": np.minimum(opens, close) * (1 - wick[1]),
            "close": close,
            "volume": rng.lognormal(3.0, 0.5, n),
            "ingested_at": START,
        },
        schema=OHLCV_SCHEMA,
    )


def raw_tables(years: int, n_symbols: int, seed: int = 0) -> dict[str, pl.DataFrame]:
    """Seeded raw spot, perp, funding and order-book tables of `years` years of 15-minute bars."""
    rng = np.random.default_rng(seed)
    bar = timedelta(minutes=15)
    n = int(timedelta(days=365 * years) / bar)
    ts = _times(START, bar, n)
    settle = _times(START + timedelta(hours=8), timedelta(hours=8), 365 * years * 3 - 1)
    snaps = _times(START + timedelta(minutes=7), timedelta(minutes=30), n // 2)
    spot, perp, funding, book = [], [], [], []
    for base in BASES[:n_symbols]:
        symbol = f"{base}/USDT:USDT"
        close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.003, n)))
        basis = 1e-4 * np.sin(np.arange(n) / 200.0) + rng.normal(0.0, 5e-5, n)
        spot.append(_ohlcv(f"{base}/USDT", ts, close, rng))
        perp.append(_ohlcv(symbol, ts, close * (1 + basis), rng))
        funding.append(
            pl.DataFrame(
                {
                    "funding_time": settle,
                    "exchange": "bench",
                    "symbol": symbol,
                    "funding_rate": rng.normal(1e-4, 1.5e-4, settle.len()),
                    "interval_hours": 8.0,
                    "mark_price": None,
                    "ingested_at": START,
                },
                schema=FUNDING_SCHEMA,
            )
        )
        for market, sym in (("spot", f"{base}/USDT"), ("perp", symbol)):
            m = snaps.len()
            book.append(
                pl.DataFrame(
                    {
                        "ts": snaps,
                        "exchange": "bench",
                        "symbol": sym,
                        "market": market,
                        "best_bid": 100.0,
                        "best_ask": 100.01,
                        "mid": 100.005,
                        "spread_bps": rng.uniform(0.1, 2.0, m),
                        "bid_depth_10bps_usd": rng.uniform(1e5, 1e6, m),
                        "ask_depth_10bps_usd": rng.uniform(1e5, 1e6, m),
                        "bid_depth_50bps_usd": rng.uniform(1e6, 1e7, m),
                        "ask_depth_50bps_usd": rng.uniform(1e6, 1e7, m),
                        "ingested_at": START,
                    },
                    schema=ORDER_BOOK_SCHEMA,
                )
            )
    return {
        "spot": pl.concat(spot),
        "perp": pl.concat(perp),
        "funding": pl.concat(funding),
        "order_book": pl.concat(book),
    }


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--years", type=int, default=5)
    parser.add_argument("--symbols", type=int, default=6, choices=range(1, len(BASES) + 1))
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported")
    args = parser.parse_args()

    t0 = time.perf_counter()
    raw = raw_tables(args.years, args.symbols)
    print(
        f"raw tables: {raw['spot'].height:,} spot + {raw['perp'].height:,} perp bars, "
        f"{raw['funding'].height:,} settlements, {raw['order_book'].height:,} book snapshots "
        f"(generated in {time.perf_counter() - t0:.1f} s, not timed)"
    )
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        bars = build_market_bars(
            raw["spot"], raw["perp"], raw["funding"], raw["order_book"], MarketBarsConfig(bar="15m")
        )
        t1 = time.perf_counter()
        features = build_carry_features(bars)
        t2 = time.perf_counter()
        for part, seconds in (
            ("market_bars", t1 - t0),
            ("carry_features", t2 - t1),
            ("total", t2 - t0),
        ):
            best[part] = min(best.get(part, float("inf")), seconds)
    n_features = sum(c.startswith("f_") for c in features.columns)
    print(
        f"market_bars:    {bars.height:,} rows x {bars.width} columns   {best['market_bars']:.2f} s"
    )
    print(
        f"carry_features: {features.height:,} rows x {n_features} features  "
        f"{best['carry_features']:.2f} s"
    )
    print(
        f"total:          {best['total']:.2f} s  (budget {BUDGET_S:.0f} s, ratio "
        f"{best['total'] / BUDGET_S:.2f}; best of {args.repeat})"
    )
    print(f"throughput:     {bars.height / best['total']:,.0f} bar-rows/s")


if __name__ == "__main__":
    main()
