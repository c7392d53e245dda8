"""Ingestion throughput: rows/s of the simulated exchange, of the ccxt path against a loopback
Binance stub, of one Dagster partition end to end (fetch, checks, DuckDB write, GX suites), and of
backfills through Dagster: 4 months x 2 assets and 1 year x 6 assets, one range run per asset (what
`BackfillPolicy.single_run()` and `make run` do), with the venue's own time and the per-partition
overhead shown apart and compared with one run per day x asset.

Run from the repository root: `.venv/bin/python bench/ingest.py [--years 2] [--bar 15m]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(
    0, str(ROOT)
)  # the stub lives with the tests: tests/pipeline/ingestion/binance_stub.py

SIX = ("BTC", "ETH", "SOL", "BNB", "XRP", "DOGE")
# The asset dimension of the partitions is read when the definitions load: list all six first.
os.environ["CARRY_ASSETS"] = ",".join(SIX)
os.environ.setdefault("CARRY_START_DATE", "2023-01-01")

import polars as pl  # noqa: E402

from carry_env import synthetic  # noqa: E402
from carry_pipeline.lib.exchanges import CcxtExchange, SimulatedExchange  # noqa: E402
from tests.pipeline.ingestion.binance_stub import BinanceStub, kline_row  # noqa: E402
from tests.pipeline.ingestion.conftest import binance_markets  # noqa: E402

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


def _raw_and_suites() -> list:
    from carry_pipeline.defs.ingestion import assets, checks

    return [
        assets.raw_spot_ohlcv,
        assets.raw_perp_ohlcv,
        assets.raw_funding_rates,
        assets.raw_order_book,
        checks.raw_spot_ohlcv_suite,
        checks.raw_perp_ohlcv_suite,
        checks.raw_funding_rates_suite,
        checks.raw_order_book_suite,
    ]


def venue_seconds(first: datetime, days: int, bases: tuple[str, ...]) -> float:
    """The simulated venue's own time for the raw tables of `days` days from `first`."""
    end = first + timedelta(days=days)
    ex = SimulatedExchange(seed=0)
    t0 = time.perf_counter()
    for base in bases:
        spot, perp = f"{base}/USDT", f"{base}/USDT:USDT"
        ex.fetch_ohlcv(spot, "spot", "15m", first, end)
        ex.fetch_ohlcv(perp, "perp", "15m", first, end)
        ex.fetch_funding(perp, first, end)
        ex.fetch_order_book(spot, "spot", first, end)
        ex.fetch_order_book(perp, "perp", first, end)
    return time.perf_counter() - t0


def bench_dagster_range(first: datetime, days: int, bases: tuple[str, ...]) -> tuple[int, float]:
    """Backfill `days` days x `bases` of every raw asset and suite: one range run per asset."""
    import dagster as dg
    import duckdb
    from dagster_duckdb import DuckDBResource

    from carry_pipeline.defs.ingestion.resources import ExchangeResource
    from carry_pipeline.lib.duckdb_io import CarryDuckDBIOManager

    last = first + timedelta(days=days - 1)
    with tempfile.TemporaryDirectory() as tmp, dg.DagsterInstance.ephemeral() as instance:
        db = str(Path(tmp) / "bench.duckdb")
        res = {
            "io_manager": CarryDuckDBIOManager(database=db),
            "duckdb": DuckDBResource(database=db),
            "exchange": ExchangeResource(),
        }
        t0 = time.perf_counter()
        for base in bases:
            tags = {
                "dagster/asset_partition_range_start": f"{base}|{first:%Y-%m-%d}",
                "dagster/asset_partition_range_end": f"{base}|{last:%Y-%m-%d}",
            }
            quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
            dg.materialize(
                _raw_and_suites(), resources=res, instance=instance, tags=tags, run_config=quiet
            )
        elapsed = time.perf_counter() - t0
        done = instance.get_materialized_partitions(dg.AssetKey(["raw", "raw_perp_ohlcv"]))
        assert len(done) == days * len(bases), (len(done), days * len(bases))
        with duckdb.connect(db, read_only=True) as con:
            tables = [r[0] for r in con.sql("select table_name from duckdb_tables()").fetchall()]
            rows = sum(con.sql(f"select count(*) from raw.{t}").fetchall()[0][0] for t in tables)
    return rows, elapsed


def report_range(
    label: str, days: int, bases: tuple[str, ...], per_run: float, target: float
) -> None:
    """Print one backfill's figures: total, venue, Dagster overhead per partition, ratios."""
    first = datetime(2024, 1, 1, tzinfo=UTC)
    rows, secs = bench_dagster_range(first, days, bases)
    venue = venue_seconds(first, days, bases)
    partitions = days * len(bases)
    overhead = max(secs - venue, 0.0)
    per_day_runs = partitions * per_run
    print(
        f"dagster backfill {label} ({partitions} day x asset partitions, {len(bases)} runs): "
        f"{rows:,} rows in {secs:.1f} s (target < {target:.0f} s: "
        f"{'met' if secs < target else 'MISSED'}); venue {venue:.1f} s, Dagster + checks + "
        f"DuckDB {overhead:.1f} s = {1000 * overhead / partitions:.0f} ms per partition; "
        f"one run per partition would take ~{per_day_runs:.0f} s ({per_day_runs / secs:.0f}x)"
    )


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--years", type=int, default=2)
    parser.add_argument("--bar", default="15m")
    parser.add_argument("--ccxt-days", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="skip the 1 year x 6 assets backfill")
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
    rows, per_run = bench_dagster_partition()
    print(
        f"dagster partition (4 raw assets + 13 invariants + 4 GX suites -> DuckDB): {rows:,} rows "
        f"in {per_run:.2f} s = {rows / per_run:,.0f} rows/s (the per-run cost of a day x asset run)"
    )
    report_range("4 months x 2 assets", 120, SIX[:2], per_run, 30.0)
    if not args.quick:
        report_range("1 year x 6 assets", 365, SIX, per_run, 120.0)


if __name__ == "__main__":
    main()
