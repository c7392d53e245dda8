"""Kill the paper trader with SIGKILL at random moments, restart it, and audit the ledger."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import duckdb
import numpy as np
import pytest

from carry_env.env import CarryTradeEnv
from carry_pipeline.lib.trading.ledger import Ledger
from tests.pipeline.trading.session_setup import ENV_CONFIG, make_market, run_session

KILLS = 4


def worker(db: str, conn: Connection) -> None:
    # The child: run (or resume) the session, reporting each committed bar, then "done".
    result = run_session(db, on_commit=conn.send)
    conn.send(("done", result.equity))


def start_worker(db: Path) -> tuple[BaseProcess, Connection]:
    # A forked child (its own process, its own DuckDB connection) starts in milliseconds, where a
    # fresh interpreter spends seconds importing carry_env (and through it torch).
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=worker, args=(str(db), send), daemon=True)
    proc.start()
    send.close()
    return proc, receive


def kill_after(proc: BaseProcess, conn: Connection, commits: int, delay_s: float) -> int:
    # Wait for `commits` committed bars, then a random sub-bar delay, then SIGKILL.
    seen = 0
    while seen < commits:
        if not conn.poll(60):
            raise AssertionError("worker stopped reporting bars")
        msg = conn.recv()
        if isinstance(msg, tuple):
            raise AssertionError(f"worker finished before the kill: {msg}")
        seen += 1
    time.sleep(delay_s)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=10)
    return seen


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_doubles_nothing(tmp_path: Path) -> None:
    db = tmp_path / "carry.duckdb"
    rng = random.Random(20261202)
    market = make_market()  # built once here; every forked worker inherits it
    for _ in range(KILLS):
        proc, conn = start_worker(db)
        kill_after(proc, conn, rng.randint(2, 14), rng.uniform(0.0, 0.01))
        assert proc.exitcode == -signal.SIGKILL
    proc, conn = start_worker(db)  # the last restart runs to the end of the data
    msgs = []
    while not (msgs and isinstance(msgs[-1], tuple)):
        assert conn.poll(60), "worker stopped reporting bars"
        msgs.append(conn.recv())
    proc.join(timeout=10)
    assert proc.exitcode == 0 and msgs[-1][0] == "done"

    con = duckdb.connect(str(db), read_only=True)
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    n_steps = market.n_bars - 1
    # Bars contiguous, each booked once, in every per-bar table.
    for table in ("decisions", "equity"):
        assert [r[0] for r in q(f"select bar from paper.{table} order by bar")] == list(
            range(n_steps)
        )
    assert (
        q("select count(*) from (select distinct bar, symbol from paper.positions)")[0][0]
        == 2 * n_steps
    )
    assert (
        q("select count(*), count(distinct (bar, symbol, leg)) from paper.fills")[0]
        == q("select count(*), count(*) from paper.orders")[0]
    )
    fills = q(
        "select bar, symbol, leg, qty, fee, spread_cost, impact_cost from paper.fills "
        "order by bar, symbol, leg desc"
    )
    positions = q(
        "select bar, symbol, spot_qty, perp_qty from paper.positions order by bar, symbol"
    )
    equity = q("select bar, equity, cash from paper.equity order by bar")
    con.close()

    # Positions are the running sum of the fills, at every bar.
    held: dict[tuple[str, str], float] = {}
    by_bar: dict[int, list] = {}
    for f in fills:
        by_bar.setdefault(f[0], []).append(f)
    for bar, symbol, spot, perp in positions:
        if symbol == market.symbols[0]:
            for _, s, leg, qty, *_ in by_bar.get(bar, []):
                held[(s, leg)] = held.get((s, leg), 0.0) + qty
        assert spot == pytest.approx(held.get((symbol, "spot"), 0.0), abs=1e-9)
        assert perp == pytest.approx(held.get((symbol, "perp"), 0.0), abs=1e-9)

    # Cash and equity equal a replay of the stored actions and fills through a fresh env.
    replay = Ledger(db)
    bars = replay.replay_bars("s1")
    replay.close()
    from carry_pipeline.lib.trading.session import _stored_fills

    class Stored:
        rb = None

        def execute(self, orders):  # noqa: ANN001, ANN201 - the Executor protocol
            return _stored_fills(self.rb, orders, market.symbols)

    ex = Stored()
    env = CarryTradeEnv(market, ENV_CONFIG, executor=ex)
    env.reset(seed=7, options={"start": 0})
    replayed = []
    for rb in bars:
        ex.rb = rb
        _, _, _, _, info = env.step(np.asarray(rb.action))
        replayed.append((rb.bar, info["equity"], info["cash"]))
    assert replayed == equity

    # And the final equity equals an uninterrupted run of the same bars.
    whole = run_session(tmp_path / "whole.duckdb")
    assert whole.equity == equity[-1][1]
