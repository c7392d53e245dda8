"""The per-partition invariants of `carry_pipeline/lib/validation.py`, case by case."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from carry_pipeline.lib.validation import check_funding, check_ohlcv, check_order_book

T0 = datetime(2024, 1, 1, tzinfo=UTC)
END = T0 + timedelta(hours=1)
BAR = timedelta(minutes=15)
LATER = datetime(2024, 2, 1, tzinfo=UTC)


def _bars(n: int = 4, **overrides: list) -> pl.DataFrame:
    cols = {
        "ts": [T0 + i * BAR for i in range(n)],
        "symbol": ["BTC/USDT"] * n,
        "open": [10.0] * n,
        "high": [11.0] * n,
        "low": [9.0] * n,
        "close": [10.5] * n,
        "volume": [1.0] * n,
    }
    cols.update(overrides)
    return pl.DataFrame(cols, schema_overrides={"ts": pl.Datetime("us", "UTC")})


def _by_name(outcomes: list) -> dict:
    return {o.name: o for o in outcomes}


def test_clean_bars_pass_everything() -> None:
    out = check_ohlcv(_bars(), start=T0, end=END, bar=BAR, now=LATER)
    assert all(o.passed for o in out), [o.description for o in out if not o.passed]


@pytest.mark.parametrize(
    ("frame", "failing", "rows"),
    [
        # a duplicated bar: not unique, and one bar of the grid is missing
        (_bars(ts=[T0, T0 + BAR, T0 + BAR, T0 + 3 * BAR]), "timestamps_unique_and_increasing", 1),
        # a null close
        (_bars(close=[10.5, None, 10.5, 10.5]), "no_null_prices", 1),
        # low above the open on one bar
        (_bars(low=[9.0, 10.2, 9.0, 9.0]), "low_open_close_high_ordered", 1),
        # high below the close on two bars
        (_bars(high=[11.0, 10.4, 10.4, 11.0]), "low_open_close_high_ordered", 2),
        # one bar missing from the 15-minute grid
        (_bars(3), "bar_count_matches_grid", 1),
        # a bar off the grid (07 past the hour)
        (
            _bars(ts=[T0, T0 + BAR, T0 + 2 * BAR, T0 + timedelta(minutes=52)]),
            "bar_count_matches_grid",
            2,
        ),
    ],
)
def test_each_ohlcv_invariant_catches_its_rows(
    frame: pl.DataFrame, failing: str, rows: int
) -> None:
    out = _by_name(check_ohlcv(frame, start=T0, end=END, bar=BAR, now=LATER))
    assert not out[failing].passed
    assert out[failing].failed_rows == rows
    assert out[failing].examples.height == rows


def test_grid_stops_at_now() -> None:
    # At 00:40 only the bars closing by then (00:00 and 00:15) can exist.
    out = _by_name(
        check_ohlcv(_bars(2), start=T0, end=END, bar=BAR, now=T0 + timedelta(minutes=40))
    )
    assert out["bar_count_matches_grid"].passed


def _funding(rates: list, times: list | None = None, intervals: list | None = None) -> pl.DataFrame:
    n = len(rates)
    return pl.DataFrame(
        {
            "funding_time": times or [T0 + timedelta(hours=8 * i) for i in range(n)],
            "symbol": ["BTC/USDT:USDT"] * n,
            "funding_rate": rates,
            "interval_hours": intervals or [8.0] * n,
        },
        schema_overrides={"funding_time": pl.Datetime("us", "UTC"), "funding_rate": pl.Float64},
    )


@pytest.mark.parametrize(
    ("frame", "failing"),
    [
        (_funding([0.0001, None, 0.0001]), "no_null_funding_rates"),  # a missing print, never 0
        (
            _funding([0.0001, 0.04, 0.0001]),
            "funding_rate_within_bounds",
        ),  # 4 % beyond the 3 % bound
        (_funding([0.0001, 0.0001], intervals=[8.0, 48.0]), "funding_rate_within_bounds"),  # 48 h
        (_funding([0.0001, 0.0001], times=[T0, T0]), "funding_times_unique_and_increasing"),
    ],
)
def test_each_funding_invariant(frame: pl.DataFrame, failing: str) -> None:
    out = _by_name(check_funding(frame, max_abs_rate=0.03))
    assert not out[failing].passed
    assert sum(not o.passed for o in out.values()) == 1


def test_cap_prints_are_within_bounds() -> None:
    # The -30 bp floor of March 2020 is real and must pass.
    assert all(o.passed for o in check_funding(_funding([-0.003, 0.003]), max_abs_rate=0.03))


def test_order_book_invariants() -> None:
    good = pl.DataFrame(
        {
            "ts": [T0, T0],
            "symbol": ["BTC/USDT"] * 2,
            "market": ["spot", "perp"],
            "best_bid": [99.0, 99.0],
            "best_ask": [100.0, 98.0],  # the perp book is crossed
            "bid_depth_10bps_usd": [1.0, 1.0],
            "ask_depth_10bps_usd": [1.0, 1.0],
            "bid_depth_50bps_usd": [2.0, 2.0],
            "ask_depth_50bps_usd": [2.0, 2.0],
        }
    )
    out = _by_name(check_order_book(good))
    assert out["snapshot_times_unique_and_increasing"].passed  # same ts, different markets
    assert not out["book_not_crossed"].passed and out["book_not_crossed"].failed_rows == 1


@pytest.mark.parametrize(
    ("settlements", "now_hours", "passed"),
    [
        (3, 24, True),  # a full day at 8 h: 00, 08, 16
        (0, 24, False),  # the venue served nothing (OKX keeps ~3 months): never filled, a failure
        (2, 24, False),  # one 8 h print missing
        (1, 9, True),  # today's partition fetched at 09:00: one full 8 h interval has elapsed
        (6, 24, True),  # 4 h settlements: more than the 8 h floor
    ],
)
def test_settlements_present(settlements: int, now_hours: int, passed: bool) -> None:
    frame = _funding([0.0001] * settlements)
    out = _by_name(
        check_funding(
            frame,
            max_abs_rate=0.03,
            start=T0,
            end=T0 + timedelta(days=1),
            now=T0 + timedelta(hours=now_hours),
            symbol="BTC/USDT:USDT",
        )
    )
    check = out["funding_settlements_present"]
    assert check.passed is passed
    if not passed:
        assert check.failed_rows == 1 and "BTC/USDT:USDT" in check.description
