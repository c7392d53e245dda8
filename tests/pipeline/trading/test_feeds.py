"""Feeds: the simulated stream, the live exchange feed equal to the pipeline, and a ccxt session
that never touches a private or order endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import pytest

from carry_env.config import EnvConfig
from carry_env.env import CarryTradeEnv
from carry_env.market import MarketData
from carry_pipeline.lib.exchanges import CcxtExchange, SimulatedExchange
from carry_pipeline.lib.trading.books import SimulatedExchangeBooks
from carry_pipeline.lib.trading.feeds import (
    ExchangeFeed,
    VirtualClock,
    fetch_raw,
    load_raw_history,
    market_frame_from_raw,
    simulated_feed,
)
from carry_pipeline.lib.trading.ledger import Ledger
from carry_pipeline.lib.trading.session import SessionSpec, run_paper_session
from tests.pipeline.ingestion.binance_stub import BinanceStub
from tests.pipeline.ingestion.conftest import binance_markets
from tests.pipeline.trading.feed_setup import (
    BARS,
    BASES,
    CARRY,
    START,
    CarryRule,
    load_stub,
    write_raw,
)
from tests.pipeline.trading.session_setup import WIDE_RISK

CFG = EnvConfig()


def test_simulated_feed_session_walks_the_simulators_books(tmp_path: Path) -> None:
    # Two simulated days streamed at 0 s a bar; every fill walked a simulated-exchange book.
    feed, snapshots = simulated_feed(BASES, START, START + timedelta(days=12), carry=CARRY)
    assert feed.market.n_bars == 49  # 12 days less the 10-day warm-up, and the bar at the end
    books = SimulatedExchangeBooks(snapshots, feed.now)
    ledger = Ledger(tmp_path / "p.duckdb")
    env = CarryTradeEnv(feed.market, CFG)
    result = run_paper_session(
        spec=SessionSpec("sim", CFG, WIDE_RISK),
        feed=feed,
        policy=CarryRule(env.observation_names, feed.market.symbols),
        books=books,
        ledger=ledger,
    )
    ledger.close()
    assert (result.new_bars, result.ended) == (48, True)
    con = duckdb.connect(str(tmp_path / "p.duckdb"), read_only=True)
    sources = con.execute("select distinct json_extract_string(book, '$.source') from paper.fills")
    assert sources.fetchall() == [("simulated",)]
    con.close()


def test_first_live_bars_equal_what_the_pipeline_computes(tmp_path: Path) -> None:
    # DuckDB holds raw history to day 12; the feed polls four more hourly bars from the exchange.
    # Its market (prices and every f_ feature) and the env's first live observation equal the
    # pipeline's frame computed over the whole history in one go.
    cut = START + timedelta(days=12)
    truth_ex = SimulatedExchange(seed=0, clock=lambda: cut + timedelta(hours=4))
    raw_all = fetch_raw(truth_ex, BASES, "1h", START, cut + timedelta(hours=4))
    pipeline = MarketData.from_frame(market_frame_from_raw(raw_all, BARS, CARRY))
    write_raw(tmp_path / "carry.duckdb", fetch_raw(truth_ex, BASES, "1h", START, cut))
    history = load_raw_history(tmp_path / "carry.duckdb", BASES, START, cut)
    clock = VirtualClock(cut + timedelta(seconds=2))
    live_ex = SimulatedExchange(seed=0, clock=clock.now)
    feed = ExchangeFeed(live_ex, BASES, history, clock, BARS, CARRY)
    first_live = feed.market.n_bars  # bars known from DuckDB
    assert feed.poll(first_live + 2) == ""
    got = feed.market
    assert got.n_bars == first_live + 3 == pipeline.n_bars - 1
    n = got.n_bars
    np.testing.assert_array_equal(got.ts, pipeline.ts[:n])
    np.testing.assert_allclose(got.features, pipeline.features[:n], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.spot, pipeline.spot[:n], rtol=0, atol=0)
    envs = [CarryTradeEnv(m, CFG) for m in (got, pipeline)]
    obs = [e.reset(seed=1, options={"start": first_live})[0] for e in envs]
    np.testing.assert_array_equal(obs[0], obs[1])


PRIVATE = (
    "create_order", "createOrder", "cancel_order", "cancelOrder", "cancel_all_orders",
    "edit_order", "fetch_balance", "fetchBalance", "fetch_positions", "fetch_my_trades",
    "fetch_open_orders", "fetch_order", "transfer", "withdraw", "set_leverage",
)  # fmt: skip


@pytest.fixture
def stub() -> Iterator[BinanceStub]:
    s = BinanceStub()
    load_stub(s, START, 13)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def test_ccxt_paper_session_never_calls_a_private_or_order_endpoint(
    tmp_path: Path, stub: BinanceStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every private and order method of both ccxt clients fails the test (and is recorded, since
    # the session books a raising feed as a fault rather than crashing).
    clock = VirtualClock(START + timedelta(days=12, seconds=2))
    client = CcxtExchange(api_url=stub.url, timeout_ms=2000, max_retries=0, clock=clock.now)
    binance_markets(client, BASES)
    called: list[str] = []
    for leg in ("spot", "perp"):
        ccxt_client = client.client(leg)
        for name in PRIVATE:

            def forbidden(*a: object, _n: str = name, **k: object) -> None:
                called.append(_n)
                pytest.fail(f"paper session called ccxt {_n}")

            monkeypatch.setattr(ccxt_client, name, forbidden)
    history = fetch_raw(client, BASES, "1h", START, START + timedelta(days=12))
    history["order_book"] = history["order_book"].head(0)  # no book history exists on a venue
    feed = ExchangeFeed(client, BASES, history, clock, BARS, CARRY)
    start = feed.market.n_bars - 1
    books = SimulatedExchangeBooks(client, clock.now)
    ledger = Ledger(tmp_path / "p.duckdb")
    env = CarryTradeEnv(feed.market, CFG)
    result = run_paper_session(
        spec=SessionSpec("ccxt", CFG, WIDE_RISK, start=start),
        feed=feed,
        policy=CarryRule(env.observation_names, feed.market.symbols),
        books=books,
        ledger=ledger,
        max_bars=3,
    )
    ledger.close()
    assert called == []
    assert result.new_bars == 3 and feed.market.n_bars == start + 4
    paths = {p for p, _ in stub.requests}
    assert paths <= {"/api/v3/klines", "/fapi/v1/klines", "/fapi/v1/fundingRate",
                     "/api/v3/depth", "/fapi/v1/depth"}  # fmt: skip
    con = duckdb.connect(str(tmp_path / "p.duckdb"), read_only=True)
    assert con.execute("select count(*) from paper.equity").fetchone() == (3,)
    assert con.execute(
        "select count(*) from paper.risk_events where kind='feed_fault'"
    ).fetchone() == (0,)
    con.close()
