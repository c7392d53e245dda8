"""Fixtures of the ingestion tests: the Binance stub loaded with data, markets for ccxt, a fixed
clock."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ccxt
import pytest

from carry_env import synthetic
from carry_pipeline.lib.exchanges import CcxtExchange
from tests.pipeline.ingestion.binance_stub import BinanceStub, kline_row

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
DAY = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(
    2024, 1, 10, tzinfo=UTC
)  # the fixed "now" of the tests: the stub's data is in the past
STEP_MS = 5 * 60_000  # the stub serves 5-minute klines


def market(
    ex: ccxt.Exchange, symbol: str, market_id: str, kind: str, contract_size: float = 1.0
) -> dict:
    """A ccxt market structure (as `load_markets` would build it) for `set_markets`."""
    base, quote = symbol.split("/")[0], "USDT"
    swap = kind == "swap"
    return ex.safe_market_structure(
        {
            "id": market_id,
            "symbol": symbol,
            "base": base,
            "quote": quote,
            "settle": quote if swap else None,
            "baseId": base,
            "quoteId": quote,
            "settleId": quote if swap else None,
            "type": kind,
            "spot": not swap,
            "swap": swap,
            "future": False,
            "option": False,
            "margin": False,
            "contract": swap,
            "linear": True if swap else None,
            "inverse": False if swap else None,
            "contractSize": contract_size if swap else None,
            "active": True,
            "precision": {"amount": 0.001, "price": 0.01},
            "limits": {},
            "subType": "linear" if swap else None,
        }
    )


def binance_markets(client: CcxtExchange, bases: tuple[str, ...] = ("BTC", "ETH")) -> None:
    """Inject spot and USD-M markets so ccxt never calls load_markets over the network."""
    spot, perp = client.client("spot"), client.client("perp")
    spot.set_markets([market(spot, f"{b}/USDT", f"{b}USDT", "spot") for b in bases])
    perp.set_markets([market(perp, f"{b}/USDT:USDT", f"{b}USDT", "swap") for b in bases])


def _klines(symbol: str, kind: str, start: datetime, days: int) -> list[list]:
    # Served klines: the simulator's 5-minute bars, rounded to Binance's decimal strings.
    frame = synthetic.simulate_ohlcv(
        [symbol], start, start + timedelta(days=days), "5m", seed=3, market=kind
    )
    return [
        kline_row(
            int(r["ts"].timestamp() * 1000),
            STEP_MS,
            r["open"],
            r["high"],
            r["low"],
            r["close"],
            r["volume"],
        )
        for r in frame.iter_rows(named=True)
    ]


def real_funding_rows() -> list[dict]:
    """Real Binance BTCUSDT prints (Mar 2020, MIT fixture) as `/fapi/v1/fundingRate` rows, with the
    millisecond jitter Binance puts on `fundingTime` and `markPrice` empty as before 2023-10-31."""
    rows = []
    with open(FIXTURES / "supervik_funding" / "BTC-USDT_binance_2020-03-10_2020-03-21.csv") as f:
        for i, r in enumerate(csv.DictReader(f)):
            local = datetime.strptime(r["Date"][:19], "%Y-%m-%d %H:%M:%S")
            utc = (local - timedelta(hours=3)).replace(tzinfo=UTC)  # the file is UTC+3
            ms = int(utc.timestamp() * 1000) + (i * 7) % 31  # 0..30 ms jitter
            rows.append(
                {
                    "symbol": "BTCUSDT",
                    "fundingTime": ms,
                    "fundingRate": r["Funding Rate"],
                    "markPrice": "",
                }
            )
    return rows


@pytest.fixture
def stub() -> Iterator[BinanceStub]:
    """A running stub with 3 days of 5-minute spot and perp klines for BTC and ETH from 2024-01-01,
    real March-2020 BTC funding, and order books."""
    s = BinanceStub()
    for base in ("BTC", "ETH"):
        s.klines[("/api/v3/klines", f"{base}USDT", "5m")] = _klines(f"{base}/USDT", "spot", DAY, 3)
        s.klines[("/fapi/v1/klines", f"{base}USDT", "5m")] = _klines(
            f"{base}/USDT:USDT", "perp", DAY, 3
        )
    s.funding["BTCUSDT"] = real_funding_rows()
    s.depth[("/api/v3/depth", "BTCUSDT")] = {
        "lastUpdateId": 1,
        "bids": [["100.00", "10"], ["99.95", "20"], ["99.80", "30"], ["99.00", "40"]],
        "asks": [["100.02", "5"], ["100.10", "6"], ["100.40", "7"], ["101.00", "8"]],
    }
    s.depth[("/fapi/v1/depth", "BTCUSDT")] = {
        "lastUpdateId": 2,
        "E": int(NOW.timestamp() * 1000),
        "T": int(NOW.timestamp() * 1000),
        "bids": [["100.00", "1"]],
        "asks": [["100.01", "2"]],
    }
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def sleeps() -> list[float]:
    """Records the backoff delays instead of sleeping them."""
    return []


@pytest.fixture
def ccxt_client(stub: BinanceStub, sleeps: list[float]) -> CcxtExchange:
    """A CcxtExchange (binance + binanceusdm) pointed at the stub, markets injected, clock fixed."""
    client = CcxtExchange(
        api_url=stub.url,
        timeout_ms=300,
        max_retries=4,
        backoff_s=0.5,
        page_limit=100,
        sleep=sleeps.append,
        clock=lambda: NOW,
    )
    binance_markets(client)
    return client
