"""`run_paper_session`: the loop, its ledger, parity with the backtest, and feed faults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

from carry_env.config import EnvConfig
from carry_env.env import CarryTradeEnv
from carry_env.market import MarketData
from carry_pipeline.lib.trading.books import ModelBookSource
from carry_pipeline.lib.trading.ledger import Ledger
from carry_pipeline.lib.trading.session import ReplayFeed, SessionSpec, run_paper_session
from tests.pipeline.trading.session_setup import (
    WIDE_RISK,
    FundingPolicy,
    make_market,
    observation_names,
    run_session,
)


def rows(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def backtest(market: MarketData, config: EnvConfig, n: int) -> list[dict]:
    """The env's own backtest (SimExecutor, fused kernel) of the same policy over n bars."""
    env = CarryTradeEnv(market, config)
    obs, _ = env.reset(seed=7, options={"start": 0})
    policy = FundingPolicy(observation_names(market))
    out = []
    for _ in range(n):
        a, _ = policy.predict(obs)
        obs, _, _, _, info = env.step(a)
        out.append(info)
    return out


def sim_book_session(db: Path, session_id: str, cfg: EnvConfig, market: MarketData, n: int) -> Any:
    """n bars of `FundingPolicy` on books configured like the sim executor (fee on mid)."""
    ledger = Ledger(db)
    try:
        return run_paper_session(
            spec=SessionSpec(session_id, cfg, WIDE_RISK, seed=7, start=0, fee_basis="mid"),
            feed=ReplayFeed(market),
            policy=FundingPolicy(observation_names(market)),
            books=ModelBookSource(cfg),
            ledger=ledger,
            max_bars=n,
        )
    finally:
        ledger.close()


def test_paper_session_equals_the_backtest_of_the_same_bars(tmp_path: Path) -> None:
    # Book source configured like the sim executor (one level at the half-spread + tick, impact
    # off, fee on mid): the whole loop, risk gate and ledger included, reproduces the backtest.
    cfg = EnvConfig(slippage_k=0.0)
    market = make_market()
    n = 40
    result = sim_book_session(tmp_path / "p.duckdb", "parity", cfg, market, n)
    assert (result.new_bars, result.last_bar) == (n, n - 1)
    paper = rows(
        tmp_path / "p.duckdb",
        "select equity, cash, fees, slippage from paper.equity "
        "where session_id = 'parity' order by bar",
    )
    sim = backtest(market, cfg, n)
    assert sum(i["fees"] > 0 for i in sim) >= 2  # it traded
    np.testing.assert_allclose(
        np.array(paper),
        [[i[k] for k in ("equity", "cash", "fees", "slippage")] for i in sim],
        rtol=1e-10,
        atol=1e-7,
    )


def test_paper_ledger_books_auto_add_margin_as_the_backtest_does(tmp_path: Path) -> None:
    # Isolated auto-add margin at 20x (a perp opens at a margin ratio of 10, below the trigger of
    # 15, so free cash tops it up to 20): each bar's `margin_added` in paper.equity is the env's,
    # and it explains the cash that left for the collateral.
    cfg = EnvConfig(
        slippage_k=0.0,
        perp_leverage=20.0,
        isolated_auto_add_margin=True,
        auto_add_margin_trigger=15.0,
        auto_add_margin_target=20.0,
    )
    market = make_market()
    n = 60
    sim_book_session(tmp_path / "p.duckdb", "auto", cfg, market, n)
    paper = [r[0] for r in rows(tmp_path / "p.duckdb", "select margin_added from paper.equity")]
    sim = [i["margin_added"] for i in backtest(market, cfg, n)]
    assert sum(x > 0 for x in sim) >= 2
    np.testing.assert_allclose(paper, sim, rtol=1e-10, atol=1e-7)


def test_ledger_migration_keeps_the_rows_of_a_ledger_without_margin_added(tmp_path: Path) -> None:
    # A ledger written before `margin_added` existed: opening it adds the column (null on its
    # bars), keeps every row, and the next bar is booked with the new column.
    db = tmp_path / "old.duckdb"
    run_session(db, max_bars=5)
    con = duckdb.connect(str(db))
    con.execute("alter table paper.equity drop column margin_added")
    before = con.execute("select * from paper.equity order by bar").fetchall()
    con.close()
    assert len(before) == 5 and len(before[0]) == 17
    result = run_session(db, max_bars=8)  # resumes the same session: 3 new bars
    assert result.new_bars == 3
    after = rows(db, "select * from paper.equity order by bar")
    assert [r[:17] for r in after[:5]] == before
    assert [r[17] for r in after[:5]] == [None] * 5
    assert all(r[17] is not None for r in after[5:]) and len(after) == 8


def test_ledger_rows_of_a_session(tmp_path: Path) -> None:
    db = tmp_path / "p.duckdb"
    result = run_session(db, max_bars=30)
    assert result.new_bars == 30
    counts = {
        t: rows(db, f"select count(*) from paper.{t}")[0][0]
        for t in ("sessions", "decisions", "equity", "positions", "orders", "fills")
    }
    assert counts["sessions"] == 1
    assert counts["decisions"] == counts["equity"] == 30
    assert counts["positions"] == 60  # two assets per bar
    assert counts["fills"] == counts["orders"] > 0
    (digest, experts, weights, action) = rows(
        db,
        "select obs_digest, expert_outputs, gating_weights, action from paper.decisions "
        "where bar = 0",
    )[0]
    assert len(digest) == 64 and json.loads(weights) == {"funding": 1.0}
    assert json.loads(experts)["funding"] == pytest.approx(json.loads(action))
    book = json.loads(rows(db, "select book from paper.fills order by bar limit 1")[0][0])
    assert len(book["asks"]) == 50 and book["source"] == "model"
    # Positions are the running sum of the fills.
    fills = rows(db, "select bar, symbol, leg, qty from paper.fills")
    pos = rows(db, "select symbol, spot_qty, perp_qty from paper.positions where bar = 29")
    for symbol, spot, perp in pos:
        assert spot == pytest.approx(
            sum(q for _, s, leg, q in fills if (s, leg) == (symbol, "spot"))
        )
        assert perp == pytest.approx(
            sum(q for _, s, leg, q in fills if (s, leg) == (symbol, "perp"))
        )


class FlakyFeed(ReplayFeed):
    """Raises on bars 5, 6, 7 (a ccxt-like network error), then serves again."""

    def poll(self, t: int) -> str:
        if t in (5, 6, 7):
            raise TimeoutError(f"binance GET /fapi/v1/ticker timed out at bar {t}")
        return super().poll(t)


def test_a_feed_that_raises_for_three_bars_holds_and_recovers(tmp_path: Path) -> None:
    db = tmp_path / "p.duckdb"
    result = run_session(db, feed=FlakyFeed(make_market()), max_bars=12)
    assert result.new_bars == 12  # never crashed
    faults = rows(
        db, "select bar, reason from paper.risk_events where kind = 'feed_fault' order by bar"
    )
    assert [b for b, _ in faults] == [5, 6, 7]
    assert "TimeoutError: binance GET" in faults[0][1]
    held = rows(db, "select bar, action from paper.decisions where feed_fault <> '' order by bar")
    assert [(b, json.loads(a)) for b, a in held] == [(b, [None, None]) for b in (5, 6, 7)]
    assert rows(db, "select count(*) from paper.orders where bar between 5 and 7")[0][0] == 0
    alerts = rows(db, "select bar, kind from paper.alerts where kind = 'feed_down'")
    assert alerts == [(7, "feed_down")]  # after feed_down_alert_bars = 3 faulty bars
    # Recovery: bar 8 trades on a good bar again (the policy's action, not a hold).
    (action,) = rows(db, "select action from paper.decisions where bar = 8")[0]
    assert None not in json.loads(action)


def test_malformed_bar_is_held(tmp_path: Path) -> None:
    market = make_market()
    spot = market.spot.copy()
    spot[3, 1] = np.nan
    bad = MarketData(**{**vars(market), "spot": spot})

    class Feed(ReplayFeed):
        def poll(self, t: int) -> str:  # the env keeps the good data; the feed reports bar 3 bad
            return ReplayFeed(bad).poll(t)

    db = tmp_path / "p.duckdb"
    run_session(db, feed=Feed(market), max_bars=6)
    (reason,) = rows(db, "select reason from paper.risk_events where kind = 'feed_fault'")[0]
    assert reason.startswith("malformed bar 3: spot prices")


def test_resume_with_another_config_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "p.duckdb"
    run_session(db, max_bars=3)
    with pytest.raises(ValueError, match="exists .* with config hash"):
        run_session(db, max_bars=5, risk=WIDE_RISK.__class__(max_leverage=2.0))


def test_a_resumed_session_continues_where_it_stopped(tmp_path: Path) -> None:
    db = tmp_path / "p.duckdb"
    first = run_session(db, max_bars=10)
    second = run_session(db, max_bars=25)
    assert (second.resumed_bars, second.new_bars, second.last_bar) == (10, 15, 24)
    whole = run_session(tmp_path / "q.duckdb", max_bars=25)
    assert second.equity == whole.equity  # bit for bit
    assert first.last_bar == 9


def test_ledger_in_a_file_named_paper_duckdb(tmp_path: Path) -> None:
    # The file's catalog is then "paper", like the schema; the ledger qualifies its tables.
    result = run_session(tmp_path / "paper.duckdb", max_bars=2)
    assert result.new_bars == 2
    assert rows(tmp_path / "paper.duckdb", "select count(*) from paper.paper.equity") == [(2,)]


def test_emergency_flag_flattens_the_book_in_a_session(tmp_path: Path) -> None:
    # The flag file exists from bar 10: the session records the halt, sets every target to 0,
    # the env closes both assets and holds nothing afterwards.
    from carry_pipeline.lib.trading.risk import RiskConfig

    flag = tmp_path / "FLATTEN"
    risk = RiskConfig(**{**vars(WIDE_RISK), "flatten_flag_path": str(flag)})
    db = tmp_path / "p.duckdb"
    run_session(db, max_bars=10, risk=risk)
    flag.touch()
    run_session(db, max_bars=14, risk=risk)
    (state,) = rows(db, "select state from paper.risk_events where kind = 'state_change'")[0]
    assert state == "HALTED"
    assert rows(db, "select count(*) from paper.risk_events where kind = 'flatten'") == [(4,)]
    assert rows(db, "select kind from paper.alerts") == [("risk_state",)]
    held = rows(db, "select spot_qty, perp_qty from paper.positions where bar = 13")
    before = rows(db, "select spot_qty, perp_qty from paper.positions where bar = 9")
    assert any(abs(s) > 0 for s, _ in before)  # there was a book to flatten
    assert held == [(0.0, 0.0), (0.0, 0.0)]


def test_a_restart_during_a_feed_outage_keeps_counting_towards_the_alert(tmp_path: Path) -> None:
    # Faults at bars 5, 6, 7; the session stops after bar 6 and resumes: the alert still comes at
    # bar 7, the third faulty bar in a row, as in an uninterrupted run.
    db = tmp_path / "p.duckdb"
    run_session(db, feed=FlakyFeed(make_market()), max_bars=7)
    run_session(db, feed=FlakyFeed(make_market()), max_bars=12)
    assert rows(db, "select bar, kind from paper.alerts where kind = 'feed_down'") == [
        (7, "feed_down")
    ]
