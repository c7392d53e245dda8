"""Parsing of ccxt's own recorded exchange responses (tests/fixtures/ccxt_static, MIT) through
`CcxtExchange`: the response is fed to the installed ccxt by overriding `fetch` on the instance."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from carry_pipeline.lib.exchanges import CcxtExchange, reduce_order_book
from tests.pipeline.ingestion.conftest import FIXTURES, binance_markets, market


def _entry(exchange: str, method: str, description: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / "ccxt_static" / f"{exchange}.response.subset.json").read_text())
    return next(e for e in data["methods"][method] if e["description"] == description)


def _serve(client: Any, body: Any) -> None:
    client.fetch = lambda url, method="GET", headers=None, body_=None, **_: body
    client.last_http_response = None  # no raw body to check: fetch is replaced


def test_binance_spot_klines_parse_to_recorded_values() -> None:
    e = _entry("binance", "fetchOHLCV", "Spot OHLCV with since and limit")
    start = datetime.fromtimestamp(e["httpResponse"][0][0] / 1000, UTC)
    now = start + timedelta(days=1)
    client = CcxtExchange(page_limit=3, clock=lambda: now)
    binance_markets(client)
    _serve(client.client("spot"), e["httpResponse"])
    frame = client.fetch_ohlcv("BTC/USDT", "spot", "1h", start, start + timedelta(hours=3))
    got = [
        [int(r["ts"].timestamp() * 1000), r["open"], r["high"], r["low"], r["close"], r["volume"]]
        for r in frame.iter_rows(named=True)
    ]
    assert got == e["parsedResponse"]


def test_binance_swap_order_book_depth() -> None:
    e = _entry("binance", "fetchOrderBook", "swap orderbook")
    ts = datetime.fromtimestamp(int(e["httpResponse"]["T"]) / 1000, UTC)
    client = CcxtExchange(clock=lambda: ts)
    binance_markets(client)
    _serve(client.client("perp"), e["httpResponse"])
    frame = client.fetch_order_book(
        "BTC/USDT:USDT", "perp", ts - timedelta(hours=1), ts + timedelta(hours=1)
    )
    row = frame.row(0, named=True)
    # Hand computation on the recorded five-level book: mid (42651.1 + 42878.0) / 2 = 42764.55, a
    # 226.9 USDT (53.06 bp) spread. The 10 bp band [42721.79, 42807.31] holds no level (the touch
    # is 26.5 bp from mid on either side): both 10 bp depths are 0. The 50 bp band
    # [42550.73, 42978.37] holds all five bids (the deepest, 42609.8, is 36.2 bp away) and the asks
    # 42878.0 and 42950.9; the next ask, 42980.9, is 50.6 bp away and stays out.
    assert row["best_bid"] == 42651.1 and row["best_ask"] == 42878.0
    assert row["mid"] == pytest.approx(42764.55)
    assert row["spread_bps"] == pytest.approx(226.9 / 42764.55 * 1e4)
    assert row["bid_depth_10bps_usd"] == 0.0 and row["ask_depth_10bps_usd"] == 0.0
    assert row["bid_depth_50bps_usd"] == pytest.approx(
        42651.1 * 470.672 + 42650.0 * 66.452 + 42646.8 * 126.261 + 42616.1 * 1.394
        + 42609.8 * 93.162
    )  # fmt: skip
    assert row["ask_depth_50bps_usd"] == pytest.approx(42878.0 * 7.011 + 42950.9 * 0.005)
    assert row["ts"] == datetime.fromtimestamp(e["parsedResponse"]["timestamp"] / 1000, UTC)


def test_okx_swap_book_amounts_are_converted_with_ct_val() -> None:
    # OKX quotes swap books in contracts; BTC-USDT-SWAP ctVal = 0.01 BTC.
    e = _entry("okx", "fetchOrderBook", "Swap orderbook")
    ts = datetime.fromtimestamp(int(e["httpResponse"]["data"][0]["ts"]) / 1000, UTC)
    client = CcxtExchange("okx", "okx", clock=lambda: ts)
    okx = client.client("perp")
    okx.set_markets([market(okx, "BTC/USDT:USDT", "BTC-USDT-SWAP", "swap", contract_size=0.01)])
    _serve(okx, e["httpResponse"])
    frame = client.fetch_order_book(
        "BTC/USDT:USDT", "perp", ts - timedelta(hours=1), ts + timedelta(hours=1)
    )
    row = frame.row(0, named=True)
    # Hand computation: every level lies within 10 bp of mid 43466.35.
    assert row["mid"] == pytest.approx(43466.35)
    assert row["bid_depth_10bps_usd"] == pytest.approx(
        43466.3 * 13807 * 0.01 + 43466.2 * 17151 * 0.01
    )
    assert row["ask_depth_10bps_usd"] == pytest.approx(
        43466.4 * 14881 * 0.01 + 43466.5 * 14624 * 0.01
    )
    assert row["exchange"] == "okx"


@pytest.mark.parametrize(
    ("bids", "asks", "message"),
    [
        ([], [[1.0, 1.0]], "empty side"),  # no bids at all
        ([[2.0, 1.0]], [[1.0, 1.0]], "crossed book"),  # bid above ask
        ([[1.0, -1.0]], [[2.0, 1.0]], "non-positive"),  # negative amount
    ],
)
def test_reduce_order_book_rejects_bad_books(bids: list, asks: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        reduce_order_book(bids, asks, where="test book")


def test_reduce_order_book_band_edges() -> None:
    # mid = 100, 10 bp band = [99.9, 100.1]: levels exactly on the edge count, beyond do not.
    s = reduce_order_book(
        [[99.99, 1], [99.9, 2], [99.89, 4]], [[100.01, 1], [100.1, 3], [100.11, 5]]
    )
    assert s.mid == pytest.approx(100.0)
    assert s.bid_depth_10bps_usd == pytest.approx(99.99 + 99.9 * 2)
    assert s.ask_depth_10bps_usd == pytest.approx(100.01 + 100.1 * 3)
    assert s.bid_depth_50bps_usd == pytest.approx(99.99 + 99.9 * 2 + 99.89 * 4)
