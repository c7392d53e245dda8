"""`f_funding_ann` and the settlement clock on 4 h and 1 h funding, not only the 8 h fixtures."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

from carry_pipeline.lib.features.bars import build_market_bars
from carry_pipeline.lib.features.carry import build_carry_features
from carry_pipeline.lib.schemas import FUNDING_SCHEMA
from tests.pipeline.features.raw_frames import INGESTED, START

RATE = 1e-4
"""The same print at every settlement: the annualised value then depends on the interval only."""


def _funding(symbol: str, every_hours: int, days: int) -> pl.DataFrame:
    times = [START + timedelta(hours=every_hours * i) for i in range(1, days * 24 // every_hours)]
    return pl.DataFrame(
        {
            "funding_time": times,
            "exchange": "sim",
            "symbol": symbol,
            "funding_rate": RATE,
            "interval_hours": [None] + [float(every_hours)] * (len(times) - 1),
            "mark_price": None,
            "ingested_at": INGESTED,
        },
        schema=FUNDING_SCHEMA,
    )


@pytest.fixture(scope="module")
def features(raw: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """BTC settles every 4 h, ETH every hour, 1 bp each time."""
    funding = pl.concat([_funding("BTC/USDT:USDT", 4, 60), _funding("ETH/USDT:USDT", 1, 60)])
    bars = build_market_bars(raw["spot"], raw["perp"], funding, raw["order_book"])
    return build_carry_features(bars)


@pytest.mark.parametrize(
    ("symbol", "annualised", "minutes_to_next"),
    [
        # 1 bp six times a day for 365 days: 21.9 %; the next print 240 minutes on.
        ("BTC/USDT:USDT", 0.219, 240.0),
        # 1 bp 24 times a day: 87.6 %; the next print an hour on.
        ("ETH/USDT:USDT", 0.876, 60.0),
    ],
)
def test_funding_ann_and_clock_follow_the_settlement_interval(
    features: pl.DataFrame, symbol: str, annualised: float, minutes_to_next: float
) -> None:
    # Day 10 at 08:00 is a settlement of both schedules, well after any warm-up.
    at = START + timedelta(days=10, hours=8)
    row = features.filter((pl.col("symbol") == symbol) & (pl.col("ts") == at)).row(0, named=True)
    assert row["f_funding_ann"] == pytest.approx(annualised, rel=1e-12)
    assert row["f_minutes_to_funding"] == minutes_to_next
    # Fifteen minutes later the last print is carried and the clock has run 15 minutes.
    later = features.filter(
        (pl.col("symbol") == symbol) & (pl.col("ts") == at + timedelta(minutes=15))
    ).row(0, named=True)
    assert later["f_funding_ann"] == pytest.approx(annualised, rel=1e-12)
    assert later["f_minutes_to_funding"] == minutes_to_next - 15.0
