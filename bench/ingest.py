"""Ingestion throughput: rows/s of the simulated exchange, of the ccxt path against a loopback
Binance stub, and of one Dagster partition end to end (fetch, checks, DuckDB write, GX suites).

Run from the repository root: `.venv/bin/python bench/ingest.py [--years 2] [--bar 15m]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(
    0, str(ROOT)
)  # the stub lives with the tests: tests/pipeline/ingestion/binance_stub.py

import polars as pl  # noqa: E402

from carry_env import synthetic  # noqa: E402
from carry_pipeline.lib.exchanges import CcxtExchange, SimulatedExchange  # noqa: E402
from tests.pipeline.ingestion.binance_stub import BinanceStub, kline_row  # noqa: E402
from tests.pipeline.ingestion.conftest import binance_markets  # noqa: E402

SIX = ("BTC", "ETH", "SOL", "BNB", "XRP", "DOGE")
START = datetime(2022, 1, 1, tzinfo=UTC)


def bench_simulated(years: int, bar: str) -> tuple[int, float]:
    """Fetch spot + perp OHLCV, funding and hourly books for six assets over `years` years."""
    end = START + timedelta(days=365 * years)
    ex = SimulatedExchange(seed=0, clock=lambda: end + timedelta(days=1))
    t0 = time.perf_counter()
    rows = 0
    for base in SIX:
        spot, perp = f"{base}/USDT", f"{base}/USDT:USDT"
        rows += ex.fetch_ohlcv(spot, "spot", bar, START, end).height
        rows += ex.fetch_ohlcv(perp, "perp", bar, START, end).height
        rows += ex.fetch_funding(perp, START, end).height
        rows += ex.fetch_order_book(perp, "perp", START, end).height
    return rows, time.perf_counter() - t0


def bench_ccxt(days: int) -> tuple[int, float, int]:
    """Fetch `days` of 5-minute spot klines through ccxt from the stub, 1000 rows per page."""
    stub = BinanceStub()
    frame = synthetic.simulate_ohlcv(["BTC/USDT"], START, START + timedelta(days=days), "5m")
    stub.klines[("/api/v3/klines", "BTCUSDT", "5m")] = [
        kline_row(
            int(r["ts"].timestamp() * 1000),
            300_000,
            r["open"],
            r["high"],
            r["low"],
            r["close"],
            r["volume"],
        )
        for r in frame.iter_rows(named=True)
    ]
    stub.start()
    try:
        now = START + timedelta(days=days + 1)
        client = CcxtExchange(api_url=stub.url, page_limit=1000, clock=lambda: now)
        client.client("spot").enableRateLimit = False  # the stub has no rate limit to respect
        binance_markets(client)
        t0 = time.perf_counter()
        out = client.fetch_ohlcv("BTC/USDT", "spot", "5m", START, START + timedelta(days=days))
        elapsed = time.perf_counter() - t0
        assert out.height == frame.height, (out.height, frame.height)
        return out.height, elapsed, stub.count("/api/v3/klines")
    finally:
        stub.stop()


def bench_dagster_partition() -> tuple[int, float]:
    """One day x asset partition of every raw asset and check, in process, into a temp DuckDB."""
    import dagster as dg
    from dagster_duckdb import DuckDBResource

    from carry_pipeline.defs.ingestion import assets, checks
    from carry_pipeline.defs.ingestion.resources import ExchangeResource
    from carry_pipeline.lib.duckdb_io import CarryDuckDBIOManager

    raw = [
        assets.raw_spot_ohlcv,
        assets.raw_perp_ohlcv,
        assets.raw_funding_rates,
        assets.raw_order_book,
    ]
    suites = [
        checks.raw_spot_ohlcv_suite,
        checks.raw_perp_ohlcv_suite,
        checks.raw_funding_rates_suite,
        checks.raw_order_book_suite,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.duckdb")
        res = {
            "io_manager": CarryDuckDBIOManager(database=db),
            "duckdb": DuckDBResource(database=db),
            "exchange": ExchangeResource(),
        }
        key = dg.MultiPartitionKey({"asset": "BTC", "date": "2024-01-02"})
        dg.materialize(raw + suites, resources=res, partition_key=key)  # warm-up: imports, GX
        t0 = time.perf_counter()
        result = dg.materialize(raw + suites, resources=res, partition_key=key)
        elapsed = time.perf_counter() - t0
        rows = sum(
            int(m.metadata["dagster/row_count"].value)
            for m in result.get_asset_materialization_events()
            for m in [m.event_specific_data.materialization]  # type: ignore[union-attr]
        )
    return rows, elapsed


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--years", type=int, default=2)
    parser.add_argument("--bar", default="15m")
    parser.add_argument("--ccxt-days", type=int, default=60)
    args = parser.parse_args()
    pl.Config.set_tbl_rows(20)

    rows, secs = bench_simulated(args.years, args.bar)
    print(
        f"simulated exchange, {args.years} y of {args.bar} bars x 6 assets "
        f"(spot+perp OHLCV, funding, hourly books): {rows:,} rows in {secs:.2f} s "
        f"= {rows / secs:,.0f} rows/s"
    )
    rows, secs, pages = bench_ccxt(args.ccxt_days)
    print(
        f"ccxt (binance) via loopback stub, {args.ccxt_days} d of 5m klines: {rows:,} rows, "
        f"{pages} pages in {secs:.2f} s = {rows / secs:,.0f} rows/s"
    )
    rows, secs = bench_dagster_partition()
    print(
        f"dagster partition (4 raw assets + 13 invariants + 4 GX suites -> DuckDB): {rows:,} rows "
        f"in {secs:.2f} s = {rows / secs:,.0f} rows/s"
    )


if __name__ == "__main__":
    main()
