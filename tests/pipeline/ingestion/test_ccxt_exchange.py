"""`CcxtExchange` driven for real (ccxt's HTTP stack, JSON decoding, error mapping) against the
loopback Binance stub: exact round trips across page boundaries, bounded retries, permanent errors
at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from carry_pipeline.lib.exchanges import (
    CcxtExchange,
    PermanentExchangeError,
    TransientExchangeError,
)
from carry_pipeline.lib.schemas import FUNDING_SCHEMA, OHLCV_SCHEMA, ORDER_BOOK_SCHEMA
from tests.pipeline.ingestion.binance_stub import BinanceStub
from tests.pipeline.ingestion.conftest import DAY, NOW, binance_markets

SPOT_KLINES = "/api/v3/klines"
PERP_KLINES = "/fapi/v1/klines"
FUNDING = "/fapi/v1/fundingRate"


def _served(stub: BinanceStub, path: str, sym_id: str, start: datetime, end: datetime) -> list:
    lo, hi = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    return [r for r in stub.klines[(path, sym_id, "5m")] if lo <= r[0] < hi]


def _as_rows(frame: pl.DataFrame) -> list[tuple]:
    return [
        (int(r["ts"].timestamp() * 1000), r["open"], r["high"], r["low"], r["close"], r["volume"])
        for r in frame.iter_rows(named=True)
    ]


@pytest.mark.parametrize(
    ("market", "symbol", "path"),
    [("spot", "BTC/USDT", SPOT_KLINES), ("perp", "ETH/USDT:USDT", PERP_KLINES)],
)
def test_ohlcv_equals_what_the_stub_served_across_pages(
    stub: BinanceStub, ccxt_client: CcxtExchange, market: str, symbol: str, path: str
) -> None:
    # A day and a half of 5-minute bars = 432 bars: five pages of 100, the last one partial.
    start, end = DAY + timedelta(hours=6), DAY + timedelta(days=1, hours=18)
    frame = ccxt_client.fetch_ohlcv(symbol, market, "5m", start, end)  # type: ignore[arg-type]
    served = _served(stub, path, symbol.split(":")[0].replace("/", ""), start, end)
    assert len(served) == 432
    want = [(r[0], *(float(x) for x in r[1:6])) for r in served]
    assert _as_rows(frame) == want  # exact: no gap or duplicate at the page boundaries
    assert stub.count(path) == 5
    assert frame.schema == pl.Schema(OHLCV_SCHEMA)
    assert frame["symbol"].unique().to_list() == [symbol]
    assert frame["exchange"].unique().to_list() == [
        "binance" if market == "spot" else "binanceusdm"
    ]
    assert (frame["ingested_at"] == NOW).all()


def test_unfinished_last_candle_is_dropped(stub: BinanceStub, sleeps: list[float]) -> None:
    # "Now" is 10:02: the 10:00 bar is still open and must not be stored.
    now = DAY + timedelta(hours=10, minutes=2)
    client = CcxtExchange(api_url=stub.url, page_limit=1000, sleep=sleeps.append, clock=lambda: now)
    binance_markets(client)
    frame = client.fetch_ohlcv("BTC/USDT", "spot", "5m", DAY, DAY + timedelta(days=1))
    assert frame["ts"].max() == DAY + timedelta(hours=9, minutes=55)
    assert frame.height == 120


def test_transient_errors_are_retried_with_backoff(
    stub: BinanceStub, ccxt_client: CcxtExchange, sleeps: list[float]
) -> None:
    # Rate limit, server error, timeout and a corrupt body, then the real answer.
    stub.inject(SPOT_KLINES, "429", "500", "timeout", "malformed")
    start, end = DAY, DAY + timedelta(hours=2)
    frame = ccxt_client.fetch_ohlcv("BTC/USDT", "spot", "5m", start, end)
    want = [
        (r[0], *(float(x) for x in r[1:6]))
        for r in _served(stub, SPOT_KLINES, "BTCUSDT", start, end)
    ]
    assert _as_rows(frame) == want
    assert sleeps == [0.5, 1.0, 2.0, 4.0]  # exponential backoff, one per failed attempt
    assert ccxt_client.retries == 4


def test_retries_are_bounded(
    stub: BinanceStub, ccxt_client: CcxtExchange, sleeps: list[float]
) -> None:
    stub.inject(PERP_KLINES, *["503"] * 10)
    with pytest.raises(
        TransientExchangeError, match=r"gave up after 5 attempts.*ExchangeNotAvailable"
    ):
        ccxt_client.fetch_ohlcv("BTC/USDT:USDT", "perp", "5m", DAY, DAY + timedelta(hours=1))
    assert stub.count(PERP_KLINES) == 5  # max_retries=4: five attempts, no more
    assert len(sleeps) == 4


def test_bad_symbol_fails_fast_without_a_request(
    stub: BinanceStub, ccxt_client: CcxtExchange
) -> None:
    with pytest.raises(PermanentExchangeError, match=r"binance does not list \['DOGE/USDT'\]"):
        ccxt_client.fetch_ohlcv("DOGE/USDT", "spot", "5m", DAY, DAY + timedelta(hours=1))
    assert stub.requests == []


def test_exchange_error_is_not_retried(stub: BinanceStub, sleeps: list[float]) -> None:
    # The market is listed locally but the exchange rejects it (400, code -1121): BadSymbol.
    client = CcxtExchange(api_url=stub.url, sleep=sleeps.append, clock=lambda: NOW)
    binance_markets(client, bases=("BTC", "ETH", "SOL"))
    with pytest.raises(PermanentExchangeError, match="BadSymbol.*not retried"):
        client.fetch_ohlcv("SOL/USDT", "spot", "5m", DAY, DAY + timedelta(hours=1))
    assert stub.count(SPOT_KLINES) == 1 and sleeps == []


def test_funding_history_normalised_and_exact(stub: BinanceStub, sleeps: list[float]) -> None:
    # Real March-2020 prints with ms jitter; page_limit 10 forces several pages.
    client = CcxtExchange(api_url=stub.url, page_limit=10, sleep=sleeps.append, clock=lambda: NOW)
    binance_markets(client)
    start = datetime(2020, 3, 12, tzinfo=UTC)
    end = datetime(2020, 3, 16, tzinfo=UTC)
    frame = client.fetch_funding("BTC/USDT:USDT", start, end)
    assert frame.schema == pl.Schema(FUNDING_SCHEMA)
    served = [
        r
        for r in stub.funding["BTCUSDT"]
        if start.timestamp() * 1000 <= r["fundingTime"] < end.timestamp() * 1000
    ]
    assert frame.height == len(served) == 12
    # Jitter floored away: settlements exactly on 00/08/16 UTC.
    assert frame["funding_time"].dt.strftime("%H:%M:%S.%3f").unique().sort().to_list() == [
        "00:00:00.000",
        "08:00:00.000",
        "16:00:00.000",
    ]
    assert (frame["funding_time"].dt.truncate("1h") == frame["funding_time"]).all()
    assert frame["funding_rate"].to_list() == [float(r["fundingRate"]) for r in served]
    # The -30 bp floor print of 2020-03-13 08:00 UTC survives exactly.
    floor = frame.filter(pl.col("funding_time") == datetime(2020, 3, 13, 8, tzinfo=UTC))
    assert floor["funding_rate"].to_list() == [-0.003]
    # The look-back finds the settlement before the window, so even the first row has its interval.
    assert frame["interval_hours"].to_list() == [8.0] * 12
    assert frame["mark_price"].null_count() == 12  # Binance sent "" before 2023-10-31


def test_order_book_reduced_to_depth_bands(stub: BinanceStub, ccxt_client: CcxtExchange) -> None:
    frame = ccxt_client.fetch_order_book(
        "BTC/USDT", "spot", NOW - timedelta(hours=1), NOW + timedelta(hours=1)
    )
    assert frame.schema == pl.Schema(ORDER_BOOK_SCHEMA)
    row = frame.row(0, named=True)
    mid = (100.00 + 100.02) / 2  # 100.01
    assert row["mid"] == pytest.approx(mid)
    assert row["spread_bps"] == pytest.approx(0.02 / mid * 1e4)
    # Within 10 bp of 100.01 (99.91 .. 100.11): bids 100.00, 99.95; asks 100.02, 100.10.
    assert row["bid_depth_10bps_usd"] == pytest.approx(100.00 * 10 + 99.95 * 20)
    assert row["ask_depth_10bps_usd"] == pytest.approx(100.02 * 5 + 100.10 * 6)
    # Within 50 bp (99.51 .. 100.51): also 99.80 and 100.40; 99.00 and 101.00 stay out.
    assert row["bid_depth_50bps_usd"] == pytest.approx(100.00 * 10 + 99.95 * 20 + 99.80 * 30)
    assert row["ask_depth_50bps_usd"] == pytest.approx(100.02 * 5 + 100.10 * 6 + 100.40 * 7)
    assert row["ts"] == NOW  # spot books carry no timestamp: the fetch time


def test_order_book_outside_now_is_empty(stub: BinanceStub, ccxt_client: CcxtExchange) -> None:
    # A live exchange has no book history: a past partition gets no rows and no request.
    frame = ccxt_client.fetch_order_book("BTC/USDT", "spot", DAY, DAY + timedelta(days=1))
    assert frame.height == 0 and frame.schema == pl.Schema(ORDER_BOOK_SCHEMA)
    assert stub.requests == []


def test_api_url_override_keeps_paths() -> None:
    client = CcxtExchange("okx", "okx", api_url="http://127.0.0.1:9/")
    api = client.client("perp").urls["api"]
    assert api["rest"] == "http://127.0.0.1:9"
    client = CcxtExchange(api_url="https://proxy.example:8443")
    assert client.client("perp").urls["api"]["fapiPublic"] == "https://proxy.example:8443/fapi/v1"
    assert client.client("spot").urls["api"]["public"] == "https://proxy.example:8443/api/v3"
    with pytest.raises(PermanentExchangeError, match="api_url"):
        CcxtExchange(api_url="ftp//nope")


def test_unknown_exchange_id_is_a_clear_error() -> None:
    with pytest.raises(PermanentExchangeError, match="'binanse' is not a ccxt exchange id"):
        CcxtExchange(spot_exchange="binanse")
