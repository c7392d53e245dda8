"""Faults real venues produce, injected by the loopback Binance stub, against `CcxtExchange`:
5xx with Binance's JSON codes, rate limits with `Retry-After`, permanent rejections, empty pages in
the middle of a range, short funding pages. Every fetch that succeeds is compared row for row with
what the stub holds: nothing lost, nothing duplicated, nothing changed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from carry_pipeline.lib.exchanges import (
    CcxtExchange,
    PermanentExchangeError,
    TransientExchangeError,
)
from tests.pipeline.ingestion.binance_stub import BinanceStub
from tests.pipeline.ingestion.conftest import DAY, NOW, binance_markets

SPOT_KLINES = "/api/v3/klines"
PERP_KLINES = "/fapi/v1/klines"
FUNDING = "/fapi/v1/fundingRate"


def _want(stub: BinanceStub, path: str, start: datetime, end: datetime) -> list[tuple]:
    # Ground truth: the stub's BTC 5-minute rows opening in [start, end), as floats.
    lo, hi = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    return [
        (r[0], *(float(x) for x in r[1:6]))
        for r in stub.klines[(path, "BTCUSDT", "5m")]
        if lo <= r[0] < hi
    ]


def _got(frame: pl.DataFrame) -> list[tuple]:
    return [
        (int(r["ts"].timestamp() * 1000), r["open"], r["high"], r["low"], r["close"], r["volume"])
        for r in frame.iter_rows(named=True)
    ]


def _funding_truth(stub: BinanceStub, symbol: str, start: datetime, end: datetime) -> list[tuple]:
    lo, hi = start.timestamp() * 1000, end.timestamp() * 1000
    rows = [r for r in stub.funding[symbol] if lo <= r["fundingTime"] < hi]
    return [(r["fundingTime"] // 1000 * 1000, float(r["fundingRate"])) for r in rows]


def _funding_got(frame: pl.DataFrame) -> list[tuple]:
    return [
        (int(r["funding_time"].timestamp() * 1000), r["funding_rate"])
        for r in frame.iter_rows(named=True)
    ]


# --- retry classification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "symbol", "market"),
    [(SPOT_KLINES, "BTC/USDT", "spot"), (PERP_KLINES, "BTC/USDT:USDT", "perp")],
)
@pytest.mark.parametrize("fault", ["500:-1000", "503:-1001", "503:-1008", "200:-1008"])
def test_binance_transient_codes_are_retried(
    stub: BinanceStub,
    ccxt_client: CcxtExchange,
    sleeps: list[float],
    fault: str,
    path: str,
    symbol: str,
    market: str,
) -> None:
    # ccxt raises OperationFailed / ExchangeError for these, not a NetworkError: still transient,
    # by the venue code alone too (200 with an error code, as Bybit and OKX answer).
    stub.inject(path, fault, fault)
    start, end = DAY, DAY + timedelta(hours=2)
    frame = ccxt_client.fetch_ohlcv(symbol, market, "5m", start, end)  # type: ignore[arg-type]
    assert _got(frame) == _want(stub, path, start, end)
    assert len(frame) == 24
    assert sleeps == [0.5, 1.0] and stub.count(path) == 3


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("400:-1121", "BadSymbol"),  # unknown symbol
        ("401:-2015", "AuthenticationError"),  # bad key
        ("400:-1102", "BadRequest"),  # rejected parameter
    ],
)
def test_rejections_fail_at_once(
    stub: BinanceStub, ccxt_client: CcxtExchange, sleeps: list[float], fault: str, error: str
) -> None:
    stub.inject(SPOT_KLINES, fault)
    with pytest.raises(PermanentExchangeError, match=f"{error}.*venue code {fault[4:]}.*not retr"):
        ccxt_client.fetch_ohlcv("BTC/USDT", "spot", "5m", DAY, DAY + timedelta(hours=2))
    assert stub.count(SPOT_KLINES) == 1 and sleeps == []


def test_persistent_server_busy_gives_up_with_the_code(
    stub: BinanceStub, ccxt_client: CcxtExchange, sleeps: list[float]
) -> None:
    stub.inject(PERP_KLINES, *["503:-1008"] * 10)
    with pytest.raises(TransientExchangeError, match=r"gave up after 5 attempts.*code -1008"):
        ccxt_client.fetch_ohlcv("BTC/USDT:USDT", "perp", "5m", DAY, DAY + timedelta(hours=1))
    assert stub.count(PERP_KLINES) == 5 and sleeps == [0.5, 1.0, 2.0, 4.0]


# --- rate limits ---------------------------------------------------------------------------------


def test_retry_after_is_honoured(
    stub: BinanceStub, ccxt_client: CcxtExchange, sleeps: list[float]
) -> None:
    # Asked for 2 s and 3 s: never less, though the backoff alone would be 0.5 s and 1 s; a
    # Retry-After shorter than the backoff (attempt 3: 2 s) keeps the backoff.
    stub.inject(SPOT_KLINES, "429:retry=2", "418:retry=3", "429:retry=1")
    start, end = DAY, DAY + timedelta(hours=2)
    frame = ccxt_client.fetch_ohlcv("BTC/USDT", "spot", "5m", start, end)
    assert _got(frame) == _want(stub, SPOT_KLINES, start, end)
    assert sleeps == [2.0, 3.0, 2.0]


def test_a_long_ban_fails_at_once_naming_the_wait(
    stub: BinanceStub, ccxt_client: CcxtExchange, sleeps: list[float]
) -> None:
    stub.inject(SPOT_KLINES, "418:retry=7200")
    with pytest.raises(TransientExchangeError, match=r"HTTP 418.*wait 7200 s.*max_retry_after_s"):
        ccxt_client.fetch_ohlcv("BTC/USDT", "spot", "5m", DAY, DAY + timedelta(hours=2))
    assert stub.count(SPOT_KLINES) == 1 and sleeps == []


def test_rate_limiter_is_on_for_every_leg(ccxt_client: CcxtExchange) -> None:
    for market in ("spot", "perp"):
        client = ccxt_client.client(market)  # type: ignore[arg-type]
        assert client.enableRateLimit is True and client.rateLimit == 50


# --- empty and short pages -----------------------------------------------------------------------


def test_empty_page_mid_range_is_retried(
    stub: BinanceStub, ccxt_client: CcxtExchange, sleeps: list[float]
) -> None:
    # 432 bars in pages of 100: the third page comes back empty once.
    stub.inject(SPOT_KLINES, "ok", "ok", "empty")
    start, end = DAY + timedelta(hours=6), DAY + timedelta(days=1, hours=18)
    frame = ccxt_client.fetch_ohlcv("BTC/USDT", "spot", "5m", start, end)
    assert _got(frame) == _want(stub, SPOT_KLINES, start, end)
    assert len(frame) == 432 and sleeps == [0.5]


def test_history_end_stops_after_the_retries(
    stub: BinanceStub, ccxt_client: CcxtExchange, sleeps: list[float]
) -> None:
    # The stub's history ends at DAY + 3 d: the window's second day has no rows however often it
    # is asked; what exists is returned exactly (the count check then names the gap).
    start, end = DAY + timedelta(days=2), DAY + timedelta(days=4)
    frame = ccxt_client.fetch_ohlcv("BTC/USDT", "spot", "5m", start, end)
    assert _got(frame) == _want(stub, SPOT_KLINES, start, end)
    assert len(frame) == 288 and sleeps == [0.5, 1.0, 2.0, 4.0]


def test_no_retry_for_bars_not_yet_closed(stub: BinanceStub, sleeps: list[float]) -> None:
    # Now is DAY + 3 d 00:02: past the stub's last bar only by the still-open one; no retries.
    now = DAY + timedelta(days=3, minutes=2)
    client = CcxtExchange(api_url=stub.url, page_limit=100, sleep=sleeps.append, clock=lambda: now)
    binance_markets(client)
    start, end = DAY + timedelta(days=2, hours=20), DAY + timedelta(days=3, hours=1)
    frame = client.fetch_ohlcv("BTC/USDT", "spot", "5m", start, end)
    assert _got(frame) == _want(stub, SPOT_KLINES, start, DAY + timedelta(days=3))
    assert sleeps == []


def test_empty_funding_page_mid_range_is_retried(stub: BinanceStub, sleeps: list[float]) -> None:
    client = CcxtExchange(api_url=stub.url, page_limit=10, sleep=sleeps.append, clock=lambda: NOW)
    binance_markets(client)
    stub.inject(FUNDING, "ok", "empty")
    start, end = datetime(2020, 3, 12, tzinfo=UTC), datetime(2020, 3, 19, tzinfo=UTC)
    frame = client.fetch_funding("BTC/USDT:USDT", start, end)
    want = _funding_truth(stub, "BTCUSDT", start, end)
    assert _funding_got(frame) == want and len(want) == 21
    assert sleeps == [1.0]


def _settlements(first: datetime, n: int) -> list[dict]:
    return [
        {
            "symbol": "ETHUSDT",
            "fundingTime": int((first + timedelta(hours=8 * i)).timestamp() * 1000),
            "fundingRate": f"{(i % 7 - 3) * 1e-5:.6f}",
            "markPrice": "",
        }
        for i in range(n)
    ]


def test_funding_page_served_short_by_the_venue_cap_is_not_the_end(
    stub: BinanceStub, sleeps: list[float]
) -> None:
    # page_limit 2000 but Binance serves at most 1000 settlements: 1000 < 2000 is no last page.
    stub.funding["ETHUSDT"] = _settlements(datetime(2023, 1, 1, tzinfo=UTC), 1100)
    client = CcxtExchange(api_url=stub.url, page_limit=2000, sleep=sleeps.append, clock=lambda: NOW)
    binance_markets(client)
    start, end = datetime(2023, 1, 2, tzinfo=UTC), datetime(2024, 1, 6, tzinfo=UTC)
    frame = client.fetch_funding("ETH/USDT:USDT", start, end)
    want = _funding_truth(stub, "ETHUSDT", start, end)
    assert len(want) == 1100 - 3 and _funding_got(frame) == want


def test_funding_page_short_after_dedup_is_not_the_end(
    stub: BinanceStub, sleeps: list[float]
) -> None:
    # The venue repeats the last settlement of the previous page at the top of the next one (an
    # overlapping cursor): dropping it leaves 9 of 10 rows, which must not end the paging.
    rows = _settlements(datetime(2023, 1, 1, tzinfo=UTC), 40)
    stub.funding["ETHUSDT"] = rows
    client = CcxtExchange(api_url=stub.url, page_limit=10, sleep=sleeps.append, clock=lambda: NOW)
    binance_markets(client)
    original = stub._route

    def overlapping(path: str, q: dict[str, str]):  # type: ignore[no-untyped-def]
        status, body = original(path, q)
        if path == FUNDING and "startTime" in q:
            before = [r for r in rows if r["fundingTime"] < int(q["startTime"])][-1:]
            body = (before + body)[:10]
        return status, body

    stub._route = overlapping  # type: ignore[method-assign]
    start, end = datetime(2023, 1, 2, tzinfo=UTC), datetime(2023, 1, 14, tzinfo=UTC)
    frame = client.fetch_funding("ETH/USDT:USDT", start, end)
    want = _funding_truth(stub, "ETHUSDT", start, end)
    assert len(want) == 36 and _funding_got(frame) == want
    assert sleeps == []


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("page_limit", 0),
        ("timeout_ms", -1),
        ("max_retries", -1),
        ("backoff_s", -0.5),
        ("max_backoff_s", -1.0),
        ("order_book_limit", 0),
    ],
)
def test_bad_numeric_config_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"{field}={value!r} must be"):
        CcxtExchange(**{field: value})  # type: ignore[arg-type]
