"""Market frames for the evaluation tests: hand-made ones from `tests/env/conftest.py` and the real
Binance BTCUSDT 1 h files in `../shared/data` (read at test time, never copied)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from tests.env.conftest import make_frame, random_frame  # noqa: F401 - re-exported for the tests

RAW = Path(__file__).resolve().parents[4] / "shared/data/real/gobbles404_perp_arb/raw_fe434800"


def _closes(name: str, column: str) -> pl.DataFrame:
    # 1 h klines stamped with their open time: the close is known at open + 1 h.
    return pl.read_csv(RAW / name, try_parse_dates=True).select(
        ts=(pl.col("Timestamp") + timedelta(hours=1)).dt.replace_time_zone("UTC"),
        **{column: pl.col("Close")},
    )


@pytest.fixture(scope="session")
def real_btc() -> pl.DataFrame:
    """Real BTCUSDT 1 h market frame (spot and perp closes, 8 h prints), 2023-06 .. 2025-03."""
    if not RAW.exists():
        pytest.skip("../shared/data is not beside the repo")
    funding = pl.read_csv(RAW / "BTCUSDT_8h_funding_rates.csv", try_parse_dates=True).select(
        ts=pl.col("Timestamp").dt.replace_time_zone("UTC"), funding_rate=pl.col("Rate")
    )
    bars = _closes("BTCUSDT_1h_spot.csv", "spot_price").join(
        _closes("BTCUSDT_1h_perps.csv", "perp_price"), on="ts", how="inner"
    )
    bars = bars.head(bars.height - 1)  # the last kline was still open when the files were fetched
    return bars.join(funding, on="ts", how="left").with_columns(symbol=pl.lit("BTC/USDT:USDT"))
