"""`paper_trading_job` with `feed.kind: ccxt` against the loopback Binance stub (markets loaded by
ccxt itself from the stub's `exchangeInfo`), on a virtual clock: a paper session that never calls
a private or order endpoint and whose observations equal the pipeline's for the same bars; and the
live executor behind the guard, whose orders the stub records."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import ccxt
import dagster as dg
import duckdb
import numpy as np
import polars as pl
import pytest

from carry_env.config import EnvConfig
from carry_env.env import CarryTradeEnv
from carry_env.market import MarketData
from carry_pipeline.defs.trading.jobs import paper_trading_job
from carry_pipeline.lib.exchanges import CcxtExchange, Pair
from carry_pipeline.lib.trading import live
from carry_pipeline.lib.trading.feeds import VirtualClock, fetch_raw, market_frame_from_raw
from tests.pipeline.trading.feed_setup import BARS, BASES, CARRY, START, load_stub, write_raw
from tests.pipeline.trading.test_feeds import PRIVATE
from tests.pipeline.trading.venue_stub import TradingStub

CUT = START + timedelta(days=12)  # DuckDB history ends here; the stub serves a day more
PUBLIC = {"/api/v3/klines", "/fapi/v1/klines", "/fapi/v1/fundingRate", "/api/v3/depth",
          "/fapi/v1/depth", "/api/v3/exchangeInfo", "/fapi/v1/exchangeInfo",
          "/dapi/v1/exchangeInfo"}  # fmt: skip


@pytest.fixture
def stub() -> Iterator[TradingStub]:
    s = TradingStub(BASES)
    load_stub(s, START, 13)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def _history(stub: TradingStub, db: Path) -> None:
    # What ingest_job with exchange kind ccxt would have stored: the venue's rows before CUT.
    client = CcxtExchange(api_url=stub.url, max_retries=0, clock=lambda: CUT)
    write_raw(db, fetch_raw(client, BASES, "1h", START, CUT))
    stub.requests.clear()


def _config(stub: TradingStub, db: Path, session: str, **extra: Any) -> dict[str, Any]:
    feed = {"kind": "ccxt", "api_url": stub.url, "timeout_ms": 1000, "max_retries": 0}
    return {"session_id": session, "database": str(db), "start": START.date().isoformat(),
            "higher_timeframes": list(CARRY.higher_timeframes), "max_bars": 3, "feed": feed,
            "risk": {"max_leverage": 5.0}, **extra}  # fmt: skip


def _run(config: dict[str, Any], clock: VirtualClock, **kw: Any) -> dg.ExecuteInProcessResult:
    return paper_trading_job.execute_in_process(
        run_config={"ops": {"paper_session": {"config": config}}},
        resources={"paper_clock": clock},
        **kw,
    )


def _forbid_private(monkeypatch: pytest.MonkeyPatch, called: list[str]) -> None:
    # Every private and order method of every binance client ccxt builds fails the test.
    for cls in (ccxt.binance, ccxt.binanceusdm):
        for name in PRIVATE:

            def forbidden(*a: object, _n: str = name, **k: object) -> None:
                called.append(_n)
                pytest.fail(f"paper session called ccxt {_n}")

            monkeypatch.setattr(cls, name, forbidden)


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


@pytest.mark.slow
def test_job_paper_session_on_the_ccxt_feed(
    tmp_path: Path, stub: TradingStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "carry.duckdb"
    _history(stub, db)
    called: list[str] = []
    _forbid_private(monkeypatch, called)

    def no_live_executor(*a: object, **k: object) -> None:
        pytest.fail("the default config built the live order executor")

    monkeypatch.setattr(live.CcxtOrderExecutor, "__init__", no_live_executor)
    clock = VirtualClock(CUT + timedelta(seconds=2))
    result = _run(_config(stub, db, "ccxt-job"), clock)
    assert result.success and called == []
    # Polled once per bar: the clock waited for each bar close (plus the settle delay); the
    # third decision is marked at the close of the bar after it.
    assert clock.waits == [CUT + timedelta(hours=h, seconds=2) for h in (1, 2, 3)]
    assert {p for p, _ in stub.requests} <= PUBLIC and stub.orders == []
    bars = _rows(db, "select bar, obs_digest from paper.decisions order by bar")
    assert len(bars) == 3
    assert _rows(db, "select count(*) from paper.risk_events where kind = 'feed_fault'") == [(0,)]

    # Each bar's observation (the first from the DuckDB warm-up, the next two polled live) is,
    # bit for bit, the one the pipeline's frame over the whole history gives for that bar.
    truth = CcxtExchange(api_url=stub.url, max_retries=0, clock=lambda: CUT + timedelta(hours=3))
    raw = fetch_raw(truth, BASES, "1h", START, CUT + timedelta(hours=3))
    # The books the feed snapshotted (at the start and at each poll), as raw rows.
    raw["order_book"] = _live_books(stub, [CUT + timedelta(seconds=2), *clock.waits])
    pipeline = MarketData.from_frame(market_frame_from_raw(raw, BARS, CARRY))
    first = bars[0][0]
    # The first decision is at the last bar DuckDB holds: the one closing at CUT (bars are stamped
    # at their close), complete with the funding settled at CUT, which the feed fetched.
    assert pipeline.ts[first] == int(CUT.timestamp()) * 10**9
    assert np.isfinite(pipeline.funding[first]).all()
    digests = _replayed_digests(db, "ccxt-job", pipeline, first)
    assert [d for _, d in bars] == digests

    # Rerunning the session id resumes it at its start bar, two bars on.
    clock2 = VirtualClock(CUT + timedelta(hours=2, seconds=2))
    assert _run({**_config(stub, db, "ccxt-job"), "max_bars": 4}, clock2).success
    assert [b for (b,) in _rows(db, "select bar from paper.equity order by bar")] == [
        first + i for i in range(4)
    ]


def _live_books(stub: TradingStub, times: list[datetime]) -> pl.DataFrame:
    # The venue's book snapshots at each poll (what order-book ingestion would have stored).
    books = []
    for t in times:
        client = CcxtExchange(api_url=stub.url, max_retries=0, clock=lambda t=t: t)
        hour = t.replace(minute=0, second=0, microsecond=0)
        for base in BASES:
            for leg in ("spot", "perp"):
                window = (hour, hour + timedelta(hours=1))
                books.append(client.fetch_order_book(Pair(base).symbol(leg), leg, *window))
    return pl.concat(books)


def _replayed_digests(db: Path, session: str, market: MarketData, start: int) -> list[str]:
    # The observation digests of the pipeline's market, stepped with the session's own fills.
    from carry_pipeline.lib.trading.ledger import Ledger
    from carry_pipeline.lib.trading.session import _stored_fills

    ledger = Ledger(db)
    bars = ledger.replay_bars(session)
    ledger.close()

    class Stored:
        rb: Any = None

        def execute(self, orders):  # noqa: ANN001, ANN201 - the Executor protocol
            return _stored_fills(self.rb, orders, market.symbols)

    ex = Stored()
    env = CarryTradeEnv(market, EnvConfig(), executor=ex)
    obs, _ = env.reset(seed=0, options={"start": start})
    out = []
    for rb in bars:
        out.append(hashlib.sha256(obs.tobytes()).hexdigest())
        ex.rb = rb
        obs, *_ = env.step(np.asarray(rb.action))
    return out


def test_ccxt_feed_refuses_history_from_another_venue(tmp_path: Path, stub: TradingStub) -> None:
    # DuckDB holds the simulated exchange's rows: splicing them with binance's would be garbage.
    from carry_pipeline.lib.exchanges import SimulatedExchange

    db = tmp_path / "carry.duckdb"
    write_raw(db, fetch_raw(SimulatedExchange(seed=0, clock=lambda: CUT), BASES, "1h", START, CUT))
    result = _run(_config(stub, db, "mixed"), VirtualClock(CUT), raise_on_error=False)
    assert not result.success
    errors = " ".join(str(e.event_specific_data.error) for e in result.all_events
                      if e.event_type_value == "STEP_FAILURE")  # fmt: skip
    assert "raw_spot_ohlcv history comes from ['simulated'], the feed polls binance" in errors


KEY, SECRET = "LIVEKEY-3b9d0e1f", "LIVESECRET-a7c2"


@pytest.mark.slow
def test_live_executor_sends_the_decided_orders_and_books_failures(
    tmp_path: Path,
    stub: TradingStub,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Positive funding everywhere: the rule policy goes long carry at once, so orders flow.
    for rows in stub.funding.values():
        for r in rows:
            r["fundingRate"] = "0.00010000"
    db = tmp_path / "carry.duckdb"
    _history(stub, db)
    monkeypatch.setenv("CARRY_LIVE_TRADING", "I_UNDERSTAND")
    monkeypatch.setenv("CARRY_API_KEY", KEY)
    monkeypatch.setenv("CARRY_API_SECRET", SECRET)
    caplog.set_level(logging.DEBUG)
    # The first BTC perp order is rejected (insufficient balance); the first ETH spot order
    # (the second spot order sent) times out on the network.
    stub.inject("/fapi/v1/order", "400:-2010")
    stub.inject("/api/v3/order", "ok", "timeout")
    stub.delay_s = 1.5
    clock = VirtualClock(CUT + timedelta(seconds=2))
    with dg.instance_for_test() as instance:
        result = _run(_config(stub, db, "live", live_trading=True), clock, instance=instance)
        logs = " ".join(str(e) for e in instance.all_logs(result.run_id))
    assert result.success

    # Every sent order is one the session decided: symbol, side and amount (on the step).
    sent = _rows(db, "select bar, symbol, leg, sent_qty from paper.orders where sent_qty != 0 "
                     "order by bar, symbol, leg desc")  # fmt: skip
    got = [(p, q["symbol"], q["side"], float(q["quantity"]), q["type"]) for p, q in stub.orders]
    step = {"spot": 1e-5, "perp": 1e-3}
    want = [
        ("/api/v3/order" if leg == "spot" else "/fapi/v1/order", sym.split("/")[0] + "USDT",
         "BUY" if qty > 0 else "SELL",
         float(np.floor(round(abs(qty) / step[leg], 6)) * step[leg]), "MARKET")
        for _, sym, leg, qty in sent
    ]  # fmt: skip
    assert len(got) == len(want) >= 6
    for g, w in zip(got, want, strict=True):
        assert g[:3] == w[:3] and g[4] == w[4] and g[3] == pytest.approx(w[3], abs=1e-9)

    # The two failures are risk events; their legs have no fill, every other leg's fill is the
    # venue's (quantity and average price).
    errors = _rows(db, "select bar, symbol, reason from paper.risk_events "
                       "where kind = 'order_error' order by seq")  # fmt: skip
    assert len(errors) == 2
    assert "perp: order rejected: InsufficientFunds" in errors[0][2]
    assert errors[1][1].startswith("ETH") and "network error" in errors[1][2]
    fills = _rows(db, "select bar, symbol, leg, qty, vwap from paper.fills "
                      "order by bar, symbol, leg desc")  # fmt: skip
    assert len(fills) == len(got) - 2
    first_bar = sent[0][0]
    assert (first_bar, "BTC/USDT:USDT", "perp") not in {f[:3] for f in fills}
    assert (first_bar, "ETH/USDT:USDT", "spot") not in {f[:3] for f in fills}
    assert all(f[4] > 0 for f in fills)
    assert _rows(db, "select config from paper.sessions")[0][0].find('"live": true') >= 0

    # Keys reached no log, no captured output, no DuckDB byte.
    out = capfd.readouterr()
    text = logs + out.out + out.err + caplog.text
    for secret in (KEY, SECRET):
        assert secret not in text
        assert secret.encode() not in db.read_bytes()
    assert json.dumps(stub.orders).find(SECRET) == -1  # the secret signs; it is never sent


def test_live_trading_needs_the_ccxt_feed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CARRY_LIVE_TRADING", "I_UNDERSTAND")
    config = {"session_id": "x", "database": str(tmp_path / "c.duckdb"), "days": 12,
              "higher_timeframes": ["4h"], "live_trading": True}  # fmt: skip
    result = _run(config, VirtualClock(CUT), raise_on_error=False)
    assert not result.success
    errors = " ".join(str(e.event_specific_data.error) for e in result.all_events
                      if e.event_type_value == "STEP_FAILURE")  # fmt: skip
    assert "live_trading needs feed.kind: ccxt" in errors
