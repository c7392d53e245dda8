"""Tests of carry_pipeline/lib/features/bars.py: grid, as-of funding, fills, book and proxies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from carry_pipeline.lib.features.bars import (
    MARKET_BAR_COLUMNS,
    MarketBarsConfig,
    build_market_bars,
    spot_symbol_of,
)
from carry_pipeline.lib.schemas import FUNDING_SCHEMA, ORDER_BOOK_SCHEMA
from tests.pipeline.features.raw_frames import INGESTED, START, make_raw, ohlcv

BTC, ETH = "BTC/USDT:USDT", "ETH/USDT:USDT"
M15 = timedelta(minutes=15)


def funding_rows(
    times: list[datetime], rates: list[float], symbol: str = BTC, interval: float = 8.0
) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "funding_time": times,
            "exchange": "sim",
            "symbol": symbol,
            "funding_rate": rates,
            "interval_hours": [interval] * len(times),
            "mark_price": None,
            "ingested_at": INGESTED,
        },
        schema=FUNDING_SCHEMA,
    )


def one_symbol(n: int = 96, bar: timedelta = M15) -> tuple[pl.DataFrame, pl.DataFrame]:
    closes = 100.0 + np.arange(n, dtype=float)
    return ohlcv("BTC/USDT", closes, bar=bar), ohlcv(BTC, closes + 0.5, bar=bar)


def test_ts_is_bar_close_and_prices_are_closes() -> None:
    spot, perp = one_symbol(8)
    bars = build_market_bars(spot, perp, funding_rows([], []))
    # The bar opening at 00:00 closes at 00:15: its row is stamped 00:15 with close 100.
    assert bars["ts"][0] == START + M15
    assert bars["spot_price"][0] == 100.0 and bars["perp_price"][0] == 100.5
    assert bars["spot_open"][0] == spot["open"][0]
    assert bars.columns == MARKET_BAR_COLUMNS
    assert bars.height == 8


@pytest.mark.parametrize(
    ("settled", "expected_close"),
    [
        # Exactly on the boundary: the bar closing at 08:00 carries it.
        (datetime(2024, 1, 1, 8, 0, 0, tzinfo=UTC), datetime(2024, 1, 1, 8, 0, tzinfo=UTC)),
        # Binance jitter of 19 ms is floored to the second: still the 08:00 bar.
        (
            datetime(2024, 1, 1, 8, 0, 0, 19_000, tzinfo=UTC),
            datetime(2024, 1, 1, 8, 0, tzinfo=UTC),
        ),
        # One second late: known only after 08:00, so it lands on the bar closing 08:15.
        (datetime(2024, 1, 1, 8, 0, 1, tzinfo=UTC), datetime(2024, 1, 1, 8, 15, tzinfo=UTC)),
        # One second early: known before the 08:00 close.
        (datetime(2024, 1, 1, 7, 59, 59, tzinfo=UTC), datetime(2024, 1, 1, 8, 0, tzinfo=UTC)),
    ],
)
def test_funding_as_of_join_at_the_settlement_boundary(
    settled: datetime, expected_close: datetime
) -> None:
    spot, perp = one_symbol()
    bars = build_market_bars(spot, perp, funding_rows([settled], [0.0003]))
    paid = bars.filter(pl.col("funding_rate").is_not_null())
    assert paid["ts"].to_list() == [expected_close]
    assert paid["funding_rate"][0] == 0.0003
    # Every other bar has null funding, never 0.
    assert bars["funding_rate"].null_count() == bars.height - 1


def test_two_settlements_in_one_bar_are_summed() -> None:
    spot, perp = one_symbol(24, bar=timedelta(hours=1))
    times = [START + timedelta(hours=2), START + timedelta(hours=3)]
    funding = funding_rows(times, [1e-4, 2e-4], interval=1.0)
    bars = build_market_bars(spot, perp, funding, config=MarketBarsConfig(bar="4h"))
    # 1h settlements at 02:00 and 03:00 both fall in the 4h bar closing 04:00: 3e-4 paid there,
    # covering 2 hours of funding (so annualising uses 2h, not 1h).
    paid = bars.filter(pl.col("ts") == START + timedelta(hours=4)).row(0, named=True)
    assert paid["funding_rate"] == pytest.approx(3e-4)
    assert paid["funding_interval_hours"] == 2.0


def test_finer_raw_bars_are_aggregated_and_partial_last_bar_dropped() -> None:
    closes = np.arange(1.0, 36.0)  # 35 one-minute bars: two full 15m bars and a partial third
    spot = ohlcv("BTC/USDT", closes, bar=timedelta(minutes=1))
    perp = ohlcv(BTC, closes, bar=timedelta(minutes=1))
    bars = build_market_bars(spot, perp, funding_rows([], []))
    assert bars["ts"].to_list() == [START + M15, START + 2 * M15]
    # First 15m bar: opens at the first minute's open, closes at minute 15's close (15.0).
    assert bars["spot_close"].to_list() == [15.0, 30.0]
    assert bars["spot_high"][0] == spot["high"][:15].max()
    assert bars["spot_low"][0] == spot["low"][:15].min()
    assert bars["spot_volume"][0] == pytest.approx(spot["volume"][:15].sum())


def test_coarser_raw_bars_than_grid_fail() -> None:
    spot, perp = one_symbol(10, bar=timedelta(hours=1))
    with pytest.raises(ValueError, match="does not divide the 0:15:00 bar"):
        build_market_bars(spot, perp, funding_rows([], []), config=MarketBarsConfig(bar="15m"))


def test_short_gap_is_forward_filled_and_flagged_stale() -> None:
    spot, perp = one_symbol(20)
    spot = spot.filter(~pl.col("ts").is_in([START + 5 * M15, START + 6 * M15]))
    bars = build_market_bars(spot, perp, funding_rows([], []))
    filled = bars.filter(pl.col("spot_stale"))
    # Bars opening 05 and 06 (closing 06 and 07) are missing: they repeat the close of bar 04 (104).
    assert filled["ts"].to_list() == [START + 6 * M15, START + 7 * M15]
    assert filled["spot_close"].to_list() == [104.0, 104.0]
    assert filled["spot_high"].to_list() == [104.0, 104.0]
    assert filled["spot_volume"].to_list() == [0.0, 0.0]
    assert filled["stale"].all() and not filled["perp_stale"].any()
    assert bars.height == 20


def test_long_gap_fails_with_symbol_and_time() -> None:
    spot, perp = one_symbol(30)
    gap = [START + k * M15 for k in range(5, 11)]  # six missing bars
    perp = perp.filter(~pl.col("ts").is_in(gap))
    with pytest.raises(
        ValueError, match=r"perp leg of BTC/USDT:USDT: 2 bars missing beyond the 4-bar"
    ):
        build_market_bars(spot, perp, funding_rows([], []))


def test_every_symbol_on_the_same_grid(raw: dict[str, pl.DataFrame]) -> None:
    spot = raw["spot"].filter(
        ~((pl.col("symbol") == "ETH/USDT") & (pl.col("ts") < START + 8 * M15))
    )
    bars = build_market_bars(spot, raw["perp"], raw["funding"], raw["order_book"])
    grids = bars.group_by("symbol").agg(
        pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last"), pl.len()
    )
    # ETH spot starts 8 bars late: every symbol starts there, none has a null price.
    assert grids["first"].n_unique() == 1 and grids["last"].n_unique() == 1
    assert grids["len"].n_unique() == 1
    assert bars["ts"].min() == START + 9 * M15
    assert bars.select(pl.col("spot_price", "perp_price").null_count().sum()).row(0) == (0, 0)
    steps = bars.select(pl.col("ts").diff().over("symbol")).to_series().drop_nulls().unique()
    assert steps.to_list() == [M15]


def test_book_used_when_fresh_else_proxy() -> None:
    spot, perp = one_symbol(16)
    snap = START + timedelta(minutes=20)
    book = pl.DataFrame(
        {
            "ts": [snap, snap],
            "exchange": "sim",
            "symbol": ["BTC/USDT", BTC],
            "market": ["spot", "perp"],
            "best_bid": 1.0,
            "best_ask": 1.0,
            "mid": 1.0,
            "spread_bps": [2.0, 1.0],
            "bid_depth_10bps_usd": 1.0,
            "ask_depth_10bps_usd": 1.0,
            "bid_depth_50bps_usd": [3e6, 5e6],
            "ask_depth_50bps_usd": [4e6, 2e6],
            "ingested_at": INGESTED,
        },
        schema=ORDER_BOOK_SCHEMA,
    )
    cfg = MarketBarsConfig(max_book_age="30m")
    bars = build_market_bars(spot, perp, funding_rows([], []), book, cfg)
    at = {r["ts"]: r for r in bars.iter_rows(named=True)}
    # 00:15 precedes the snapshot: proxy. 00:30 and 00:45 see it (10 and 25 minutes old): the
    # thinner side of each leg (3e6 spot, 2e6 perp) and the mean of the spreads (1.5 bp). 01:00 is
    # 40 min old.
    first = at[START + M15]
    assert first["book_proxy"] and first["spread_bps"] == cfg.proxy_spread_bps
    for minutes in (30, 45):
        row = at[START + timedelta(minutes=minutes)]
        assert not row["book_proxy"]
        assert (row["spot_depth_usd"], row["perp_depth_usd"], row["spread_bps"]) == (3e6, 2e6, 1.5)
    assert at[START + timedelta(hours=1)]["book_proxy"]


def test_depth_proxy_is_a_fraction_of_hourly_notional() -> None:
    spot, perp = one_symbol(8)
    bars = build_market_bars(spot, perp, funding_rows([], []), None, MarketBarsConfig())
    # First bar: volume v0 at close 100 over 15 minutes = 4 * 100 * v0 per hour, times 0.2.
    expected = 0.2 * 4 * 100.0 * spot["volume"][0]
    assert bars["spot_depth_usd"][0] == pytest.approx(expected)
    assert bars["book_proxy"].all()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        # A null close cannot be aligned.
        (
            lambda f: f.with_columns(
                pl.when(pl.int_range(pl.len()) == 3)
                .then(None)
                .otherwise(pl.col("close"))
                .alias("close")
            ),
            "null values",
        ),
        # A duplicated bar is ambiguous.
        (lambda f: pl.concat([f, f.head(1)]), "duplicated"),
        # A zero price is corrupt.
        (lambda f: f.with_columns(pl.lit(0.0).alias("low")), "non-positive"),
        # A missing column is named.
        (lambda f: f.drop("volume"), r"columns \['volume'\] are missing"),
    ],
)
def test_bad_raw_bars_fail_clearly(mutate, message: str) -> None:  # noqa: ANN001
    spot, perp = one_symbol(8)
    with pytest.raises(ValueError, match=message):
        build_market_bars(mutate(spot), perp, funding_rows([], []))


def test_missing_spot_leg_and_bad_symbol() -> None:
    raw = make_raw(("BTC/USDT:USDT",), days=2, book=False)
    eth_spot = raw["spot"].with_columns(pl.lit("ETH/USDT").alias("symbol"))
    with pytest.raises(ValueError, match="has no spot leg: expected symbol BTC/USDT"):
        build_market_bars(eth_spot, raw["perp"], raw["funding"])
    with pytest.raises(ValueError, match="BASE/QUOTE:SETTLE"):
        spot_symbol_of("BTCUSDT")
    with pytest.raises(ValueError, match="has no rows in raw_perp_ohlcv"):
        build_market_bars(
            raw["spot"], raw["perp"], raw["funding"], config=MarketBarsConfig(symbols=(ETH,))
        )


def test_null_funding_is_refused() -> None:
    spot, perp = one_symbol(8)
    funding = funding_rows([START + timedelta(hours=1)], [None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="refusing to fill them with 0"):
        build_market_bars(spot, perp, funding)
