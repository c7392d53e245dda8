"""Tests of `build_market_frame` (carry_pipeline/lib/features/pipeline.py): the env's optional price
detail (`mark_price`, `perp_high`, `perp_low`, `spot_high`, `spot_low`) travels from the raw tables
to `MarketData`, stamped point in time."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from carry_env.market import PRICE_DETAIL_COLUMNS, MarketData
from carry_pipeline.lib.features.bars import build_market_bars
from carry_pipeline.lib.features.pipeline import (
    _with_price_detail,
    build_market_frame,
    run_feature_pipeline,
)
from tests.pipeline.features.raw_frames import START, make_raw
from tests.pipeline.features.test_bars import BTC, M15, funding_rows, one_symbol


def test_mark_lands_on_the_settlement_bar_only() -> None:
    spot, perp = one_symbol()
    # Settled at 08:00:00.020 (Binance jitter) and at 16:00:01: the first lands on the bar closing
    # 08:00, the second on the bar closing 16:15 (its mark is not known at 16:00), as the rate does.
    times = [START + timedelta(hours=8, milliseconds=20), START + timedelta(hours=16, seconds=1)]
    funding = funding_rows(times, [1e-4, 2e-4]).with_columns(
        pl.Series("mark_price", [108.4, 140.6])
    )
    bars = build_market_bars(spot, perp, funding)
    marked = bars.filter(pl.col("mark_price").is_not_null())
    assert marked["ts"].to_list() == [START + timedelta(hours=8), START + timedelta(hours=16) + M15]
    assert marked["mark_price"].to_list() == [108.4, 140.6]
    assert marked["funding_rate"].to_list() == [1e-4, 2e-4]
    # Never forward-filled: every other bar has no mark.
    assert bars["mark_price"].null_count() == bars.height - 2


def test_unpublished_mark_stays_null() -> None:
    spot, perp = one_symbol()
    bars = build_market_bars(spot, perp, funding_rows([START + timedelta(hours=8)], [1e-4]))
    assert bars["mark_price"].null_count() == bars.height


@pytest.fixture(scope="module")
def marked_out(short_config) -> dict[str, object]:  # noqa: ANN001
    # The 90-day raw tables with a mark published at every settlement: the perp's close at the
    # settlement plus 1 bp, as a venue's mark sits near its last price.
    raw = make_raw(days=90, seed=11)
    closes = raw["perp"].select(
        "symbol", (pl.col("ts") + M15).alias("funding_time"), pl.col("close")
    )
    funding = (
        raw["funding"]
        .drop("mark_price")
        .join(closes, on=["symbol", "funding_time"], how="left")
        .with_columns((pl.col("close") * 1.0001).alias("mark_price"))
        .drop("close")
        .select(raw["funding"].columns)
    )
    return run_feature_pipeline({**raw, "funding": funding}, short_config)


def test_frame_carries_the_price_detail_and_the_env_takes_it(marked_out: dict) -> None:
    frame = build_market_frame(
        marked_out["market_bars"], marked_out["carry_features"], marked_out["sentiment_windows"]
    )
    assert set(PRICE_DETAIL_COLUMNS) <= set(frame.columns)
    btc = frame.filter(pl.col("symbol") == BTC)
    settled = btc["funding_rate"].is_not_null()
    # The mark is exactly where a rate settles, 1 bp above that bar's perp close.
    assert (btc["mark_price"].is_not_null() == settled).all()
    np.testing.assert_allclose(
        btc.filter(settled)["mark_price"], btc.filter(settled)["perp_price"] * 1.0001
    )
    assert (btc["perp_high"] >= btc["perp_price"]).all()
    assert (btc["perp_low"] <= btc["perp_price"]).all()
    assert (btc["spot_high"] >= btc["spot_price"]).all()
    assert (btc["spot_low"] <= btc["spot_price"]).all()
    assert (btc["spot_high"] > btc["spot_low"]).any()  # real ranges, not the close repeated
    market = MarketData.from_frame(frame)
    np.testing.assert_array_equal(np.isfinite(market.mark[:, 0]), settled.to_numpy())
    np.testing.assert_array_equal(market.perp_high[:, 0], btc["perp_high"].to_numpy())
    np.testing.assert_array_equal(market.perp_low[:, 0], btc["perp_low"].to_numpy())
    np.testing.assert_array_equal(market.spot_high[:, 0], btc["spot_high"].to_numpy())
    np.testing.assert_array_equal(market.spot_low[:, 0], btc["spot_low"].to_numpy())


def test_stale_perp_bar_has_no_range() -> None:
    bars = pl.DataFrame(
        {
            "ts": [START, START + M15],
            "perp_price": [100.0, 100.0],
            "perp_high": [101.0, 100.0],
            "perp_low": [99.0, 100.0],
            "perp_stale": [False, True],
        }
    )
    out = _with_price_detail(bars)
    # The filled bar's high = low = close is no observed range; a table without marks gets nulls.
    assert out["perp_high"].to_list() == [101.0, None]
    assert out["perp_low"].to_list() == [99.0, None]
    assert out["mark_price"].null_count() == 2


def test_stale_spot_bar_has_no_range_and_the_perp_keeps_its_own() -> None:
    # Each leg's range is nulled on that leg's stale bars only: a filled spot bar loses its spot
    # range while the perp's observed range of the same bar stays.
    bars = pl.DataFrame(
        {
            "ts": [START, START + M15],
            "spot_price": [100.0, 100.0],
            "spot_high": [101.0, 100.0],
            "spot_low": [99.0, 100.0],
            "spot_stale": [False, True],
            "perp_price": [100.0, 100.5],
            "perp_high": [101.0, 101.5],
            "perp_low": [99.0, 99.5],
            "perp_stale": [False, False],
        }
    )
    out = _with_price_detail(bars)
    assert out["spot_high"].to_list() == [101.0, None]
    assert out["spot_low"].to_list() == [99.0, None]
    assert out["perp_high"].to_list() == [101.0, 101.5]
    assert out["perp_low"].to_list() == [99.0, 99.5]
