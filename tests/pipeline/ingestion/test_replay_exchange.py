"""`ReplayExchange`: user files (CSV/Parquet) served with the raw schemas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from carry_pipeline.lib.exchanges import PermanentExchangeError, ReplayExchange
from carry_pipeline.lib.schemas import FUNDING_SCHEMA, OHLCV_SCHEMA

DAY = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2024, 2, 1, tzinfo=UTC)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    # Spot bars as CSV with naive ISO times (taken as UTC), perp bars as Parquet with epoch ms.
    pl.DataFrame(
        {
            "ts": ["2024-01-01 00:00:00", "2024-01-01 01:00:00", "2024-01-02 00:00:00"],
            "symbol": ["BTC/USDT"] * 3,
            "open": [1.0, 2.0, 3.0],
            "high": [2.0, 3.0, 4.0],
            "low": [0.5, 1.5, 2.5],
            "close": [2.0, 3.0, 3.5],
            "volume": [10.0, 11.0, 12.0],
        }
    ).write_csv(tmp_path / "spot_ohlcv.csv")
    pl.DataFrame(
        {
            "ts": [1704067200000, 1704070800000],
            "symbol": ["BTC/USDT:USDT"] * 2,
            "exchange": ["binanceusdm"] * 2,
            "open": [1.0, 2.0],
            "high": [2.0, 3.0],
            "low": [0.5, 1.5],
            "close": [2.0, 3.0],
            "volume": [1.0, 1.0],
        }
    ).write_parquet(tmp_path / "perp_ohlcv.parquet")
    pl.DataFrame(
        {
            "funding_time": [
                "2023-12-31T16:00:00.021Z",
                "2024-01-01T00:00:00.013Z",
                "2024-01-01T08:00:00Z",
            ],
            "symbol": ["BTC/USDT:USDT"] * 3,
            "funding_rate": [0.0001, -0.0002, 0.0001],
        }
    ).write_csv(tmp_path / "funding_rates.csv")
    return tmp_path


def test_ohlcv_window_and_schema(folder: Path) -> None:
    ex = ReplayExchange(folder, clock=lambda: NOW)
    spot = ex.fetch_ohlcv("BTC/USDT", "spot", "1h", DAY, DAY + timedelta(days=1))
    assert spot.schema == pl.Schema(OHLCV_SCHEMA)
    assert spot["ts"].to_list() == [DAY, DAY + timedelta(hours=1)]  # the next day is outside
    assert spot["exchange"].unique().to_list() == ["replay"]
    perp = ex.fetch_ohlcv("BTC/USDT:USDT", "perp", "1h", DAY, DAY + timedelta(days=1))
    assert perp["ts"].to_list() == [DAY, DAY + timedelta(hours=1)]
    assert perp["exchange"].unique().to_list() == ["binanceusdm"]


def test_funding_floored_with_intervals(folder: Path) -> None:
    ex = ReplayExchange(folder, clock=lambda: NOW)
    f = ex.fetch_funding("BTC/USDT:USDT", DAY, DAY + timedelta(days=1))
    assert f.schema == pl.Schema(FUNDING_SCHEMA)
    assert f["funding_time"].to_list() == [DAY, DAY + timedelta(hours=8)]
    # interval derived from the settlement before the window too
    assert f["interval_hours"].to_list() == [8.0, 8.0]
    assert f["mark_price"].null_count() == 2


def test_errors_name_the_problem(folder: Path, tmp_path: Path) -> None:
    ex = ReplayExchange(folder, clock=lambda: NOW)
    with pytest.raises(PermanentExchangeError, match=r"no rows for \['ETH/USDT'\]"):
        ex.check_symbols(["ETH/USDT"])
    with pytest.raises(PermanentExchangeError, match="shorter than the configured timeframe 1d"):
        ex.fetch_ohlcv("BTC/USDT", "spot", "1d", DAY, DAY + timedelta(days=2))
    with pytest.raises(PermanentExchangeError, match="does not exist"):
        ReplayExchange(tmp_path / "nope")
    assert ex.fetch_order_book("BTC/USDT", "spot", DAY, DAY + timedelta(days=1)).height == 0
