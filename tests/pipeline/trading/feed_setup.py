"""Shared pieces of the feed tests: short-warm-up feature settings, raw history in DuckDB, a
Binance stub loaded with the simulator's hourly market, and a policy that works on any symbols."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl

from carry_env import synthetic
from carry_pipeline.lib.features.bars import MarketBarsConfig
from carry_pipeline.lib.features.carry import CarryFeaturesConfig
from carry_pipeline.lib.trading.feeds import RAW_TABLES
from tests.pipeline.ingestion.binance_stub import BinanceStub, kline_row

BASES = ("BTC", "ETH")
START = datetime(2024, 1, 1, tzinfo=UTC)
# Daily indicators need about two months; with the 4h timeframe only the warm-up is ten days.
CARRY = CarryFeaturesConfig(higher_timeframes=("4h",))
BARS = MarketBarsConfig(bar="1h")


def write_raw(db: Path, raw: dict[str, pl.DataFrame]) -> None:
    """Store raw tables as the ingestion assets do (schema `raw`, one table per key)."""
    con = duckdb.connect(str(db))
    try:
        con.execute("create schema if not exists raw")
        for key, table in RAW_TABLES.items():
            frame = raw[key]  # noqa: F841 - read by DuckDB's replacement scan
            con.execute(f"create or replace table raw.{table} as select * from frame")
    finally:
        con.close()


class CarryRule:
    """Long carry on positive last funding, flat otherwise; SB3's `predict` on any symbols."""

    def __init__(self, names: list[str], symbols: tuple[str, ...]) -> None:
        self.idx = [names.index(f"{s}:funding_bp") for s in symbols]

    def predict(self, observation: np.ndarray, state: Any = None, **_: Any) -> tuple[Any, Any]:
        return np.where(observation[self.idx] > 0.0, 0.5, 0.0).astype(np.float32), state


def load_stub(stub: BinanceStub, start: datetime, days: int) -> None:
    """Hourly spot and perp klines, funding prints and books of the simulator (seed 0)."""
    end = start + timedelta(days=days)
    step = 3_600_000
    for base in BASES:
        for path, symbol, kind in (
            ("/api/v3/klines", f"{base}/USDT", "spot"),
            ("/fapi/v1/klines", f"{base}/USDT:USDT", "perp"),
        ):
            frame = synthetic.simulate_ohlcv([symbol], start, end, "1h", seed=0, market=kind)
            stub.klines[(path, f"{base}USDT", "1h")] = [
                kline_row(
                    int(r["ts"].timestamp() * 1000),
                    step,
                    r["open"],
                    r["high"],
                    r["low"],
                    r["close"],
                    r["volume"],
                )
                for r in frame.iter_rows(named=True)
            ]
        fund = synthetic.simulate_funding([f"{base}/USDT:USDT"], start, end, seed=0)
        stub.funding[f"{base}USDT"] = [
            {
                "symbol": f"{base}USDT",
                "fundingTime": int(r["funding_time"].timestamp() * 1000),
                "fundingRate": f"{r['funding_rate']:.8f}",
                "markPrice": "",
            }
            for r in fund.iter_rows(named=True)
        ]
        last = stub.klines[("/fapi/v1/klines", f"{base}USDT", "1h")][-1]
        mid = float(last[4])
        book = {
            "lastUpdateId": 1,
            "bids": [[f"{mid * (1 - j * 2e-4):.2f}", "50"] for j in range(1, 30)],
            "asks": [[f"{mid * (1 + j * 2e-4):.2f}", "50"] for j in range(1, 30)],
        }
        stub.depth[("/api/v3/depth", f"{base}USDT")] = book
        stub.depth[("/fapi/v1/depth", f"{base}USDT")] = book
