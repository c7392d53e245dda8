"""A recurrent policy's state in a paper session: threaded through `predict`, packed into
`paper.policy_state` with every bar, restored after SIGKILL so a resumed session acts as an
uninterrupted one."""

from __future__ import annotations

import json
import random
import signal
from functools import lru_cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
import torch

from carry_env.env import CarryTradeEnv
from carry_pipeline.lib.trading.ledger import Ledger
from carry_pipeline.lib.trading.policy_state import pack_state, unpack_state
from carry_pipeline.lib.trading.session import _stored_fills
from tests.pipeline.trading import test_crash_resume as crash
from tests.pipeline.trading.session_setup import ENV_CONFIG, make_market, run_session


def test_pack_state_round_trips_nests_bit_for_bit() -> None:
    # An LSTM's (h, c) tuple, a list with a feed-forward expert's None, ints, NaN, bools, float32.
    h = np.random.default_rng(0).standard_normal((1, 1, 4)).astype(np.float32)
    state = {
        "sb3": (h, h * 2),
        "policy": {"states": [None, (h, h)], "prev_bar": 17, "starts": np.array([False])},
        "nan": float("nan"),
        "flag": True,
        "name": "x",
    }
    back = unpack_state(pack_state(state))
    assert isinstance(back["sb3"], tuple) and isinstance(back["policy"]["states"], list)
    assert back["sb3"][0].dtype == np.float32 and back["sb3"][0].tobytes() == h.tobytes()
    assert back["policy"]["states"][0] is None
    np.testing.assert_array_equal(back["policy"]["states"][1][1], h)
    assert back["policy"]["prev_bar"] == 17 and back["policy"]["starts"].dtype == bool
    assert np.isnan(back["nan"]) and back["flag"] is True and back["name"] == "x"


def test_pack_state_refuses_what_it_cannot_store_without_pickle() -> None:
    with pytest.raises(TypeError, match=r"state.policy\[1\]: cannot store a set"):
        pack_state({"policy": [1, {2}]})
    with pytest.raises(TypeError, match="object arrays"):
        pack_state(np.array([None, 1], dtype=object))
    with pytest.raises(ValueError, match="not a packed state"):
        unpack_state(b"not an archive")


@lru_cache(maxsize=1)
def lstm_model() -> Any:
    """An untrained RecurrentPPO (seeded, so every process builds the same weights) over the
    session's env: a bare SB3 recurrent model as the paper policy."""
    from sb3_contrib import RecurrentPPO

    torch.set_num_threads(1)
    env = CarryTradeEnv(make_market(), ENV_CONFIG)
    return RecurrentPPO(
        "MlpLstmPolicy", env, seed=3, device="cpu", policy_kwargs={"lstm_hidden_size": 16}
    )


def _decisions(db: Path) -> list[tuple[int, str]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("select bar, policy_action from paper.decisions order by bar").fetchall()


def test_session_threads_the_lstm_state_and_stores_it_with_each_bar(tmp_path: Path) -> None:
    # Replaying the committed bars through a fresh env with their stored fills, and threading the
    # model's (h, c) from bar to bar, gives every stored policy action: the session passed the
    # state back (with state=None at every bar, each action would come from a zero LSTM state).
    model = lstm_model()
    db = tmp_path / "p.duckdb"
    run_session(db, max_bars=12, policy=model)
    ledger = Ledger(db)
    bars = ledger.replay_bars("s1")
    stored = unpack_state(ledger.policy_state("s1", 11))  # type: ignore[arg-type]
    ledger.close()
    market = make_market()

    class Stored:
        rb: Any = None

        def execute(self, orders):  # noqa: ANN001, ANN201 - the Executor protocol
            return _stored_fills(self.rb, orders, market.symbols)

    ex = Stored()
    env = CarryTradeEnv(market, ENV_CONFIG, executor=ex)
    obs, _ = env.reset(seed=7, options={"start": 0})
    state, start, zero_state_differs = None, True, False
    for rb, (_, stored_action) in zip(bars, _decisions(db), strict=True):
        action, state = model.predict(obs, state, np.array([start]), deterministic=True)
        fresh, _ = model.predict(obs, None, np.array([True]), deterministic=True)
        zero_state_differs |= not np.array_equal(fresh, action)
        np.testing.assert_array_equal(np.asarray(json.loads(stored_action), np.float32), action)
        start = False
        ex.rb = rb
        obs, *_ = env.step(np.asarray(rb.action))
    assert zero_state_differs  # the LSTM's memory changes actions: the check can fail
    np.testing.assert_array_equal(stored["sb3"][0], state[0])
    np.testing.assert_array_equal(stored["sb3"][1], state[1])
    assert stored["starting"] is False and stored["policy"] is None


def worker(db: str, conn: Connection) -> None:
    # The child: run (or resume) the recurrent session, reporting each committed bar.
    result = run_session(db, on_commit=conn.send, policy=lstm_model())
    conn.send(("done", result.equity))


@pytest.mark.slow
def test_killed_and_resumed_lstm_session_acts_as_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "carry.duckdb"
    lstm_model()  # built here; every forked worker inherits the same weights
    monkeypatch.setattr(crash, "worker", worker)
    rng = random.Random(11)
    for _ in range(3):
        proc, conn = crash.start_worker(db)
        crash.kill_after(proc, conn, rng.randint(3, 20), rng.uniform(0.0, 0.01))
        assert proc.exitcode == -signal.SIGKILL
    proc, conn = crash.start_worker(db)
    msg: Any = None
    while not isinstance(msg, tuple):
        assert conn.poll(120), "worker stopped reporting bars"
        msg = conn.recv()
    proc.join(timeout=10)
    assert proc.exitcode == 0
    whole = tmp_path / "whole.duckdb"
    run_session(whole, policy=lstm_model())
    resumed, uninterrupted = _decisions(db), _decisions(whole)
    assert len(resumed) == make_market().n_bars - 1
    assert resumed == uninterrupted
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select count(*) from paper.policy_state").fetchone() == (len(resumed),)
