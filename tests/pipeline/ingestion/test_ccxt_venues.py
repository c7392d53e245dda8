"""`CcxtExchange` on bybit and okx, driven for real (ccxt's HTTP stack, parsing, error mapping)
against loopback stubs of their v5 REST APIs (`venue_stub.py`): exact round trips across page
boundaries with each venue's own paging rules, funding history whatever the page size configured,
OKX swap volumes in base currency, bad symbols refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache

import polars as pl
import pytest

from carry_env import synthetic
from carry_pipeline.lib.exchanges import (
    CcxtExchange,
    PermanentExchangeError,
    TransientExchangeError,
)
from carry_pipeline.lib.schemas import FUNDING_SCHEMA, OHLCV_SCHEMA
from tests.pipeline.ingestion.conftest import DAY, FIXTURES, NOW, real_funding_rows
from tests.pipeline.ingestion.conftest import market as ccxt_market
from tests.pipeline.ingestion.venue_stub import (
    BYBIT_FUNDING,
    BYBIT_KLINE,
    OKX_FUNDING,
    OKX_HISTORY_CANDLES,
    VenueStub,
    bybit_kline,
    okx_candle,
)

CT_VAL = 0.01  # OKX BTC-USDT-SWAP: one contract is 0.01 BTC
BASES = ("BTC", "ETH")
# Funding served: every 8 h from FUNDING_START, every 4 h from SWITCH on (venues shorten the
# interval of volatile contracts), until NOW.
FUNDING_START = datetime(2023, 10, 1, tzinfo=UTC)
SWITCH = datetime(2023, 11, 15, tzinfo=UTC)


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _ids(venue: str, base: str) -> tuple[str, str]:
    # (spot id, perp id) as the venue names them.
    return (
        (f"{base}USDT", f"{base}USDT")
        if venue == "bybit"
        else (f"{base}-USDT", f"{base}-USDT-SWAP")
    )


@cache
def _bars(symbol: str, kind: str) -> tuple[tuple[int, float, float, float, float, float], ...]:
    # Four days of the simulator's 5-minute bars from DAY.
    frame = synthetic.simulate_ohlcv(
        [symbol], DAY, DAY + timedelta(days=4), "5m", seed=5, market=kind
    )
    return tuple(
        (_ms(r["ts"]), r["open"], r["high"], r["low"], r["close"], r["volume"])
        for r in frame.iter_rows(named=True)
    )


@cache
def _funding() -> tuple[tuple[int, str], ...]:
    # Real Binance prints (March 2020, MIT fixture) cycled over the served schedule.
    rates = [r["fundingRate"] for r in real_funding_rows()]
    out, t = [], FUNDING_START
    while t < NOW:
        out.append((_ms(t), rates[len(out) % len(rates)]))
        t += timedelta(hours=8 if t < SWITCH else 4)
    return tuple(out)


def _stub(venue: str) -> VenueStub:
    s = VenueStub(venue, now_ms=_ms(NOW))
    for base in BASES:
        spot_id, perp_id = _ids(venue, base)
        for kind, sym_id in (("spot", spot_id), ("perp", perp_id)):
            symbol = f"{base}/USDT" if kind == "spot" else f"{base}/USDT:USDT"
            bars = _bars(symbol, kind)
            if venue == "bybit":
                key = ("spot" if kind == "spot" else "linear", sym_id, "5")
                s.candles[key] = [bybit_kline(*b) for b in bars]
            else:
                ct = CT_VAL if kind == "perp" else None
                s.candles[("okx", sym_id, "5m")] = [okx_candle(*b, ct_val=ct) for b in bars]
        s.rates[perp_id] = list(_funding())
    return s.start()


@pytest.fixture(params=["bybit", "okx"])
def venue(request: pytest.FixtureRequest) -> str:
    """Each test runs once per venue."""
    return str(request.param)


@pytest.fixture
def stub(venue: str) -> Iterator[VenueStub]:
    """A running stub of the venue with four days of 5-minute bars and ~100 days of funding."""
    s = _stub(venue)
    try:
        yield s
    finally:
        s.stop()


def _client(
    stub: VenueStub,
    page_limit: int = 1000,
    sleeps: list[float] | None = None,
    now: datetime = NOW,
) -> CcxtExchange:
    # venue/venue as configured (`spot_exchange`/`perp_exchange`), markets injected, clock fixed.
    client = CcxtExchange(
        stub.venue,
        stub.venue,
        api_url=stub.url,
        timeout_ms=2000,
        max_retries=2,
        page_limit=page_limit,
        sleep=(sleeps if sleeps is not None else []).append,
        clock=lambda: now,
    )
    ex = client.client("spot")
    assert ex is client.client("perp")  # one ccxt instance serves both legs
    markets = []
    for base in (*BASES, "SOL"):  # SOL is listed locally but the stub serves nothing for it
        spot_id, perp_id = _ids(stub.venue, base)
        ct = CT_VAL if stub.venue == "okx" else 1.0
        markets.append(ccxt_market(ex, f"{base}/USDT", spot_id, "spot"))
        markets.append(ccxt_market(ex, f"{base}/USDT:USDT", perp_id, "swap", contract_size=ct))
    ex.set_markets(markets)
    return client


def _rows(frame: pl.DataFrame) -> list[tuple]:
    return [
        (_ms(r["ts"]), r["open"], r["high"], r["low"], r["close"], r["volume"])
        for r in frame.iter_rows(named=True)
    ]


def _served_bars(stub: VenueStub, market: str, base: str, start: datetime, end: datetime) -> list:
    # The venue's rows in [start, end) as ccxt must parse them: volume in base currency.
    spot_id, perp_id = _ids(stub.venue, base)
    sym_id = spot_id if market == "spot" else perp_id
    if stub.venue == "bybit":
        rows = stub.candles[("spot" if market == "spot" else "linear", sym_id, "5")]
        vol_col = 5  # base volume on linear and spot
    else:
        rows = stub.candles[("okx", sym_id, "5m")]
        vol_col = 5 if market == "spot" else 6  # swap: vol counts contracts, volCcy is base
    return [
        (int(r[0]), *(float(x) for x in r[1:5]), float(r[vol_col]))
        for r in rows
        if _ms(start) <= int(r[0]) < _ms(end)
    ]


KLINE_PATH = {"bybit": BYBIT_KLINE, "okx": OKX_HISTORY_CANDLES}
FUNDING_PATH = {"bybit": BYBIT_FUNDING, "okx": OKX_FUNDING}


@pytest.mark.parametrize(("market", "base"), [("spot", "BTC"), ("perp", "BTC"), ("perp", "ETH")])
def test_ohlcv_equals_what_the_venue_served_across_pages(
    stub: VenueStub, market: str, base: str
) -> None:
    # 432 bars in pages of 100: five pages, the last partial; Bybit pages forward from `start`,
    # OKX between `before`/`after` cursors (history-candles: 2024 is older than 1440 bars).
    start, end = DAY + timedelta(hours=6), DAY + timedelta(days=1, hours=18)
    symbol = f"{base}/USDT" if market == "spot" else f"{base}/USDT:USDT"
    client = _client(stub, page_limit=100)
    frame = client.fetch_ohlcv(symbol, market, "5m", start, end)  # type: ignore[arg-type]
    want = _served_bars(stub, market, base, start, end)
    assert len(want) == 432
    assert _rows(frame) == want  # exact: no gap or duplicate at the page boundaries
    assert stub.count(KLINE_PATH[stub.venue]) == 5
    assert frame.schema == pl.Schema(OHLCV_SCHEMA)
    assert frame["exchange"].unique().to_list() == [stub.venue]
    assert frame["symbol"].unique().to_list() == [symbol]


@pytest.mark.parametrize(
    ("venue_id", "description", "key"),
    [
        ("bybit", "swap ohlcv with since and limit", ("linear", "BTCUSDT", "60")),
        ("okx", "spot ohlcv with limit and since", ("okx", "BTC-USDT", "1H")),
    ],
)
def test_stub_serving_recorded_venue_rows_gives_ccxts_recorded_parse(
    venue_id: str, description: str, key: tuple[str, str, str]
) -> None:
    # ccxt's own recorded mainnet answers (tests/fixtures/ccxt_static, MIT) served by the stub:
    # CcxtExchange must yield exactly ccxt's recorded parse, so the stub's formats are the venues'.
    data = json.loads((FIXTURES / "ccxt_static" / f"{venue_id}.response.subset.json").read_text())
    entry = next(e for e in data["methods"]["fetchOHLCV"] if e["description"] == description)
    body = entry["httpResponse"]
    rows = body["result"]["list"] if venue_id == "bybit" else body["data"]
    symbol = entry["input"][0]
    start = datetime.fromtimestamp(entry["parsedResponse"][0][0] / 1000, UTC)
    now = start + timedelta(days=2)
    s = VenueStub(venue_id, now_ms=_ms(now))
    s.candles[key] = rows
    s.start()
    try:
        client = _client(s, page_limit=3, now=now)
        market = "perp" if ":" in symbol else "spot"
        frame = client.fetch_ohlcv(symbol, market, "1h", start, start + timedelta(hours=3))
    finally:
        s.stop()
    assert [list(r) for r in _rows(frame)] == entry["parsedResponse"]
    assert s.count(KLINE_PATH[venue_id]) == 1


@pytest.mark.parametrize("venue", ["okx"])  # only OKX counts swap volume in contracts
def test_okx_swap_volume_is_base_currency_not_contracts(stub: VenueStub) -> None:
    start, end = DAY, DAY + timedelta(hours=2)
    frame = _client(stub).fetch_ohlcv("BTC/USDT:USDT", "perp", "5m", start, end)
    served = [r for r in stub.candles[("okx", "BTC-USDT-SWAP", "5m")] if int(r[0]) < _ms(end)]
    contracts = [float(r[5]) for r in served]
    assert frame["volume"].to_list() == pytest.approx([c * CT_VAL for c in contracts], rel=1e-12)
    assert frame.height == 24


def test_ohlcv_pages_follow_the_venue_cap_not_page_limit(stub: VenueStub) -> None:
    # page_limit 1000 (the default) over 936 bars: Bybit serves them in one page, OKX in four of
    # at most 300; the page budget must count the venue's pages, not page_limit's.
    start, end = DAY, DAY + timedelta(days=3, hours=6)
    frame = _client(stub).fetch_ohlcv("ETH/USDT", "spot", "5m", start, end)
    assert _rows(frame) == _served_bars(stub, "spot", "ETH", start, end)
    assert frame.height == 936
    assert stub.count(KLINE_PATH[stub.venue]) == (1 if stub.venue == "bybit" else 4)


def _served_rates(start: datetime, end: datetime) -> list[tuple[int, float]]:
    return [(ms, float(r)) for ms, r in _funding() if _ms(start) <= ms < _ms(end)]


@pytest.mark.parametrize("page_limit", [10, 1000])
def test_funding_history_exact_across_pages_and_interval_change(
    stub: VenueStub, page_limit: int
) -> None:
    # Six days two months back, across the 8 h -> 4 h switch: 9 + 18 settlements. page_limit 10
    # forces several pages; 1000 exceeds both venues' caps (Bybit 200, OKX 100).
    start, end = SWITCH - timedelta(days=3), SWITCH + timedelta(days=3)
    client = _client(stub, page_limit=page_limit)
    frame = client.fetch_funding("BTC/USDT:USDT", start, end)
    want = _served_rates(start, end)
    assert len(want) == 27
    got = [(_ms(t), r) for t, r in zip(frame["funding_time"], frame["funding_rate"], strict=True)]
    assert got == want  # exact: every settlement once, none invented
    assert frame.schema == pl.Schema(FUNDING_SCHEMA)
    assert (frame["funding_time"].dt.truncate("1h") == frame["funding_time"]).all()
    # The look-back reaches the settlement before the window: even the first row has its interval.
    # The SWITCH settlement itself still comes 8 h after the previous one.
    assert frame["interval_hours"].to_list() == [8.0] * 10 + [4.0] * 17
    assert frame["mark_price"].null_count() == 27  # neither venue sends a mark price here
    assert frame["exchange"].unique().to_list() == [stub.venue]
    # 30 settlements from the look-back (one day before start) on: three pages of 10, or one, each
    # bounded above by the oldest row of the page before (Bybit endTime inclusive, OKX after
    # exclusive) and below by the look-back.
    since = _ms(start - timedelta(days=1))
    newest_first = [ms for ms, _ in _funding() if since <= ms < _ms(end)][::-1]
    sent = [q for p, q in stub.requests if p == FUNDING_PATH[stub.venue]]
    if stub.venue == "bybit":
        uppers = [int(q["endTime"]) + 1 for q in sent]
        assert {int(q["startTime"]) for q in sent} == {since}
    else:
        uppers = [int(q["after"]) for q in sent]
        assert {int(q["before"]) for q in sent} == {since - 1}
    step = min(page_limit, 200 if stub.venue == "bybit" else 100)
    want_uppers = [_ms(end)] + [newest_first[i - 1] for i in range(step, 30, step)]
    assert uppers == want_uppers and len(uppers) == (3 if page_limit == 10 else 1)


def test_okx_funding_older_than_its_retention_is_not_invented(venue: str, stub: VenueStub) -> None:
    # OKX serves ~3 months of funding history: an older window comes back empty (a venue limit,
    # not a code path that could fill it); Bybit still serves it.
    start, end = FUNDING_START + timedelta(days=1), FUNDING_START + timedelta(days=4)
    frame = _client(stub).fetch_funding("BTC/USDT:USDT", start, end)
    if venue == "okx":
        assert frame.height == 0 and frame.schema == pl.Schema(FUNDING_SCHEMA)
    else:
        got = [
            (_ms(t), r) for t, r in zip(frame["funding_time"], frame["funding_rate"], strict=True)
        ]
        assert got == _served_rates(start, end) and frame.height == 9


def test_unlisted_symbol_fails_fast_without_a_request(stub: VenueStub) -> None:
    client = _client(stub)
    with pytest.raises(
        PermanentExchangeError, match=rf"{stub.venue} does not list \['DOGE/USDT:USDT'\]"
    ):
        client.fetch_funding("DOGE/USDT:USDT", DAY, DAY + timedelta(days=1))
    assert stub.requests == []


def test_symbol_the_venue_rejects_is_not_retried(stub: VenueStub) -> None:
    # SOL is listed locally but the venue answers "symbol invalid" / "instrument does not exist".
    sleeps: list[float] = []
    client = _client(stub, sleeps=sleeps)
    error = "BadRequest" if stub.venue == "bybit" else "BadSymbol"
    with pytest.raises(PermanentExchangeError, match=rf"{error}.*not retried"):
        client.fetch_ohlcv("SOL/USDT:USDT", "perp", "5m", DAY, DAY + timedelta(hours=1))
    assert stub.count(KLINE_PATH[stub.venue]) == 1 and sleeps == []


def test_transient_errors_are_retried(stub: VenueStub) -> None:
    # A 503 and a corrupt body on the venue's funding path, then the real answer.
    sleeps: list[float] = []
    client = _client(stub, sleeps=sleeps)
    stub.inject(FUNDING_PATH[stub.venue], "503", "malformed")
    start, end = SWITCH + timedelta(days=10), SWITCH + timedelta(days=11)
    frame = client.fetch_funding("ETH/USDT:USDT", start, end)
    assert frame.height == 6 and len(sleeps) == 2
    # Three 500s exhaust max_retries=2: a transient error, after exactly three attempts.
    stub.inject(FUNDING_PATH[stub.venue], "500", "500", "500")
    before = stub.count(FUNDING_PATH[stub.venue])
    with pytest.raises(TransientExchangeError, match="gave up after 3 attempts"):
        client.fetch_funding("ETH/USDT:USDT", start, end)
    assert stub.count(FUNDING_PATH[stub.venue]) - before == 3


def test_empty_funding_page_mid_range_is_retried(stub: VenueStub) -> None:
    # Three pages of 10 newest-first; the second comes back empty once: a lost page, not the end.
    sleeps: list[float] = []
    client = _client(stub, page_limit=10, sleeps=sleeps)
    stub.inject(FUNDING_PATH[stub.venue], "ok", "empty")
    start, end = SWITCH - timedelta(days=3), SWITCH + timedelta(days=3)
    frame = client.fetch_funding("BTC/USDT:USDT", start, end)
    got = [(_ms(t), r) for t, r in zip(frame["funding_time"], frame["funding_rate"], strict=True)]
    assert got == _served_rates(start, end) and len(got) == 27
    assert sleeps == [1.0]
