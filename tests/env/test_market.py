"""MarketData: validation with errors that say what and where, bounded forward fill, windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from carry_env import MarketData

from .conftest import T0, make_frame


def _two_symbols(n: int = 8) -> pl.DataFrame:
    return pl.concat([make_frame([100.0 + i for i in range(n)], symbol=s) for s in ("BTC", "ETH")])


def test_aligned_arrays_from_polars_and_pandas() -> None:
    frame = _two_symbols()
    a = MarketData.from_frame(frame)
    b = MarketData.from_frame(frame.to_pandas())
    assert a.symbols == ("BTC", "ETH") and a.n_bars == 8 and a.bar_seconds == 900.0
    np.testing.assert_array_equal(a.spot, b.spot)
    assert a.spot.shape == (8, 2) and np.isnan(a.funding).all()
    assert not a.stale.any()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # a required column is missing
        (lambda f: f.drop("funding_rate"), r"lacks columns \['funding_rate'\]"),
        # naive timestamps are refused rather than guessed
        (lambda f: f.with_columns(pl.col("ts").dt.replace_time_zone(None)), "timezone-naive"),
        # duplicated bar
        (
            lambda f: pl.concat([f.head(1), f]),
            "duplicate timestamps, first at 2024-01-01T00:00:00Z",
        ),
        # unsorted rows
        (lambda f: f.reverse(), "not sorted by ts"),
        # a price of zero
        (
            lambda f: f.with_columns(
                pl.when(pl.col("ts") == T0 + timedelta(minutes=30))
                .then(0.0)
                .otherwise(pl.col("spot_price"))
                .alias("spot_price")
            ),
            "spot_price must be positive and finite: 1 bad values, first for BTC/USDT:USDT at "
            "2024-01-01T00:30:00Z",
        ),
        # funding given in percent
        (lambda f: f.with_columns(pl.lit(1.0).alias("funding_rate")), "fractions, not percent"),
        # infinite funding
        (lambda f: f.with_columns(pl.lit(float("inf")).alias("funding_rate")), "must be finite"),
        # a bar off the 15-minute grid
        (
            lambda f: f.with_columns(
                pl.when(pl.col("ts") == f["ts"].max())
                .then(pl.col("ts") + timedelta(minutes=5))
                .otherwise(pl.col("ts"))
                .alias("ts")
            ),
            "off its 900s bar grid",
        ),
    ],
)
def test_invalid_frames_are_rejected_with_where(change, message: str) -> None:
    frame = make_frame([100.0 + i for i in range(8)])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MarketData.from_frame(change(frame))


def test_symbols_on_different_grids_are_rejected() -> None:
    frame = pl.concat(
        [make_frame([100.0] * 8, symbol="BTC"), make_frame([100.0] * 6, symbol="ETH")]
    )
    with pytest.raises(ValueError, match="different grids: BTC spans .* ETH spans"):
        MarketData.from_frame(frame)


def test_missing_ticks_are_forward_filled_and_flagged_up_to_the_limit() -> None:
    spot = [100.0, 101.0, None, None, 104.0, 105.0]
    frame = make_frame([100.0] * 6).with_columns(pl.Series("spot_price", spot))
    market = MarketData.from_frame(frame, max_stale_bars=2)
    np.testing.assert_array_equal(market.spot[:, 0], [100, 101, 101, 101, 104, 105])
    np.testing.assert_array_equal(market.stale[:, 0], [0, 0, 1, 1, 0, 0])


def test_missing_rows_are_missing_ticks() -> None:
    frame = make_frame([100.0 + i for i in range(6)]).filter(
        pl.col("ts") != T0 + timedelta(minutes=45)
    )
    market = MarketData.from_frame(frame)
    assert market.n_bars == 6
    assert market.spot[3, 0] == 102.0 and market.stale[3, 0]


def test_a_gap_longer_than_the_limit_is_an_error() -> None:
    spot = [100.0, None, None, None, 104.0]
    frame = make_frame([100.0] * 5).with_columns(pl.Series("spot_price", spot))
    with pytest.raises(
        ValueError,
        match=r"spot_price for BTC/USDT:USDT has 3 consecutive missing ticks "
        r"\(2024-01-01T00:15:00Z..2024-01-01T00:45:00Z\), more than max_stale_bars=2",
    ):
        MarketData.from_frame(frame, max_stale_bars=2)


def test_a_leading_gap_cannot_be_filled() -> None:
    frame = make_frame([100.0] * 4).with_columns(
        pl.Series("perp_price", [None, 100.0, 100.0, 100.0])
    )
    with pytest.raises(ValueError, match="missing ticks at the start"):
        MarketData.from_frame(frame)


def test_funding_is_never_filled() -> None:
    frame = make_frame([100.0] * 4, funding=[None, 0.0001, None, None])
    market = MarketData.from_frame(frame)
    assert np.isnan(market.funding[[0, 2, 3], 0]).all() and market.funding[1, 0] == 0.0001


def test_feature_warmup_becomes_zero_but_infinities_are_errors() -> None:
    frame = make_frame([100.0] * 4).with_columns(pl.Series("f_x", [None, None, 1.5, 2.0]))
    market = MarketData.from_frame(frame)
    assert market.feature_names == ("f_x",)
    np.testing.assert_array_equal(market.features[:, 0, 0], [0, 0, 1.5, 2.0])
    assert not market.stale.any()
    bad = frame.with_columns(pl.Series("f_x", [1.0, float("inf"), 1.0, 1.0]))
    with pytest.raises(ValueError, match="f_x must be finite"):
        MarketData.from_frame(bad)


def test_other_timezones_are_converted_to_utc() -> None:
    frame = make_frame([100.0] * 4).with_columns(pl.col("ts").dt.convert_time_zone("Europe/Moscow"))
    market = MarketData.from_frame(frame)
    assert market.ts[0] == np.datetime64("2024-01-01T00:00:00", "ns").astype(np.int64)


def test_window_and_index_of() -> None:
    market = MarketData.from_frame(make_frame([100.0 + i for i in range(12)]))
    w = market.window("2024-01-01T00:30", "2024-01-01T01:30")
    assert w.n_bars == 5 and w.spot[0, 0] == 102.0
    aware = datetime(2024, 1, 1, 3, 45, tzinfo=timezone(timedelta(hours=3)))  # 00:45 UTC
    assert market.index_of(aware) == 3
    assert market.index_of(datetime(2024, 1, 1, 0, 50, tzinfo=UTC)) == 3
    with pytest.raises(ValueError, match="before the first bar"):
        market.index_of("2023-12-31")
    with pytest.raises(ValueError, match="holds 0 bars"):
        market.window("2025-01-01", "2025-02-01")


def _daily_prints(stated: float | None) -> pl.DataFrame:
    # 15 min bars over two days; one rate per day (bars 0, 96, 192): 24 h apart.
    funding: list[float | None] = [None] * 200
    for i in (0, 96, 192):
        funding[i] = 1e-4
    frame = make_frame([100.0] * 200, funding=funding)
    if stated is None:
        return frame
    return frame.with_columns(funding_interval_hours=pl.lit(stated))


def test_a_daily_mean_of_8h_prints_is_not_one_settlement() -> None:
    with pytest.raises(
        ValueError,
        match=r"funding_rate for BTC/USDT:USDT settles at 2024-01-02T00:00:00Z, 24 h after the "
        r"previous settlement at 2024-01-01T00:00:00Z; no venue settles less often than every 8 h",
    ):
        MarketData.from_frame(_daily_prints(None))


def test_settlement_spacing_must_match_the_stated_interval() -> None:
    with pytest.raises(ValueError, match=r"24 h after .* but funding_interval_hours says 8 h"):
        MarketData.from_frame(_daily_prints(8.0))
    # A rate that states it covers the 24 h (the pipeline's sum of three prints in a daily bar).
    market = MarketData.from_frame(_daily_prints(24.0))
    assert np.flatnonzero(~np.isnan(market.funding[:, 0])).tolist() == [0, 96, 192]
    # 8 h prints, stated as 8 h, pass; so do they with no statement.
    funding: list[float | None] = [None] * 100
    for i in (2, 34, 66, 98):
        funding[i] = 1e-4
    frame = make_frame([100.0] * 100, funding=funding)
    MarketData.from_frame(frame)
    MarketData.from_frame(frame.with_columns(funding_interval_hours=pl.lit(8.0)))
    with pytest.raises(ValueError, match=r"8 h after .* but funding_interval_hours says 4 h"):
        MarketData.from_frame(frame.with_columns(funding_interval_hours=pl.lit(4.0)))
