"""Flash events (v1): their random paths, the liquidity that goes with them, that trading their
signals does not pay, feed outages hiding marks, and look-ahead freedom with anomalies on."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import polars as pl
import pytest

from carry_env import CarryTradeEnv, EnvConfig, MarketData
from carry_env import kernel as k
from carry_env.anomalies import path_level

from .conftest import make_frame, random_frame

FLASH_ONLY = EnvConfig(
    flash_crash_per_day=1.0,
    halt_per_day=0.0,
    feed_outage_per_day=0.0,
    funding_spike_prob=0.0,
    flash_size=0.2,
    flash_basis_overshoot=0.5,
    leverage_limit=False,
    drawdown_limit=0.0,
    margin=False,
)
"""Only flash events, frequent and large, on an account that is never liquidated."""

V0_FLASH = dataclasses.replace(
    FLASH_ONLY,
    flash_deepen_bars_max=1,
    flash_basis_widen_bars_max=0,
    flash_recovery_min=1.0,
    flash_recovery_max=1.0,
    flash_spread_mult=1.0,
    flash_spread_basis=0.0,
    flash_depth_thinning=0.9,
)
"""The v0 event: full size on its first bar, certain geometric reversion, the data's spread."""

SPOT = 0
BASIS = 2
RET1H = 3
DEPTH = 6
SPREAD = 7
STALE = 13
SCORE = 14


def test_path_level_ramps_to_the_trough_then_recovers_to_the_residual() -> None:
    # D = 3 bars of deepening, residual 0.2 decaying at 0.9 per bar, the rest at 0.5 per bar.
    assert path_level(-1, 3.0, 0.2, 0.5, 0.9) == 0.0
    assert path_level(0, 3.0, 0.2, 0.5, 0.9) == pytest.approx(1.0 / 3.0)
    assert path_level(1, 3.0, 0.2, 0.5, 0.9) == pytest.approx(2.0 / 3.0)
    assert path_level(2, 3.0, 0.2, 0.5, 0.9) == 1.0
    assert path_level(3, 3.0, 0.2, 0.5, 0.9) == pytest.approx(0.2 * 0.9 + 0.8 * 0.5)
    assert path_level(5, 3.0, 0.2, 0.5, 0.9) == pytest.approx(0.2 * 0.729 + 0.8 * 0.125)
    # An overshoot (residual < 0) crosses zero: the price ends past its start.
    assert path_level(12, 3.0, -0.3, 0.5, 0.9) < 0.0


def _flat_env(config: EnvConfig, n: int = 3000) -> CarryTradeEnv:
    frame = make_frame([100.0] * n, depth=1_000_000.0, spread_bps=2.0)
    return CarryTradeEnv(frame, config)


def _events(env: CarryTradeEnv, seed: int, n: int) -> list[list[dict[str, float]]]:
    # Hold flat through n bars; per flash event the observed market block and the engine's levels.
    obs, _ = env.reset(seed=seed)
    events: list[list[dict[str, float]]] = []
    running = False
    e = env.engine
    for _ in range(n):
        obs, _, te, tr, info = env.step(np.array([0.0]))
        if info["flash_event"]:
            if not running:
                events.append([])
            events[-1].append(
                {
                    "spot": float(obs[SPOT]),
                    "basis": float(obs[BASIS]),
                    "depth": float(obs[DEPTH]),
                    "spread": float(obs[SPREAD]),
                    "ls": float(e.fs[0, k.F_FLASH_LEVEL]),
                    "lb": float(e.fs[0, k.F_FL_BLEVEL]),
                    "gap_b": float(e.as_[0, 0, k.A_FL_P] - e.as_[0, 0, k.A_FL_S]),
                    "gs": float(e.as_[0, 0, k.A_FL_S]),
                    "ret1h": float(obs[RET1H]),
                    "age": int(e.is_[0, k.I_FLASH_AGE]),
                    "deepen": float(e.fs[0, k.F_FL_DEEPEN]),
                    "resid": float(e.fs[0, k.F_FL_RESID_S]),
                }
            )
        elif running:  # the bar after an event: back to the data exactly
            assert obs[SPOT] == 0.0 and obs[BASIS] == 0.0 and obs[SPREAD] == pytest.approx(2.0)
        running = bool(info["flash_event"])
        if te or tr:
            break
    return events


def test_flash_bars_gap_the_marks_blow_out_the_basis_thin_depth_and_widen_the_spread() -> None:
    env = _flat_env(FLASH_ONLY)
    events = [ev for seed in range(4) for ev in _events(env, seed, 2500)]
    events = events[:-1]  # the last may be cut by the episode's end
    assert len(events) >= 20
    depth0 = math.log10(1.0)  # 1 M USD of depth -> log10(depth / 1e6) = 0
    deepening = 0
    partial = 0
    overshoot = 0
    for ev in events:
        spots = [abs(b["spot"]) for b in ev]
        trough = int(np.argmax(spots))
        if trough > 0:  # the trough is not the first flagged bar: the event deepened
            deepening += 1
            assert spots[0] < spots[trough]
        at = ev[trough]
        assert at["ls"] == 1.0
        # Marks gap: |log(1 + g_s)| in %, g_s drawn in [0.5, 1.5] x 20 %.
        assert 100.0 * math.log(1.1) - 1e-6 <= spots[trough] <= -100.0 * math.log(1.0 - 0.3) + 1e-6
        # Depth: 97 % gone where the moment is 1, so log10 falls by log10(0.03).
        m = min(max(abs(at["ls"]), abs(at["lb"])), 1.0)
        assert at["depth"] == pytest.approx(depth0 + math.log10(1.0 - 0.97 * m), abs=1e-6)
        # Spread: 2 bp x (1 + 29 m) plus the basis gap in bp.
        gap_bp = abs(at["gap_b"] * at["lb"]) * 1e4
        assert at["spread"] == pytest.approx(2.0 * (1.0 + 29.0 * m) + gap_bp, rel=1e-5)
        assert at["spread"] >= 60.0 - 1e-4
        # The basis (obs in 10 bp) on a frame with perp == spot: p/s - 1 = gap_b lb / (1 + g_s ls).
        for b in ev:
            basis = b["gap_b"] * b["lb"] / (1.0 + b["gs"] * b["ls"])
            assert b["basis"] == pytest.approx(1e3 * basis, rel=1e-4, abs=1e-4)
            # The 1 h return (4 bars of 15 min) against the level 4 bars earlier on the same path.
            fast, slow = 0.5 ** (1.0 / 4.0), 0.5 ** (1.0 / 48.0)
            lagged = path_level(b["age"] - 4, b["deepen"], b["resid"], fast, slow)
            ret = math.log(1.0 + b["gs"] * b["ls"]) - math.log(1.0 + b["gs"] * lagged)
            assert b["ret1h"] == pytest.approx(100.0 * ret, rel=1e-4, abs=1e-4)
        late = ev[trough + 1 :]
        if late:
            tail_sign = np.sign(late[-1]["ls"])
            partial += tail_sign > 0
            overshoot += tail_sign < 0
    assert deepening >= len(events) // 2  # D is drawn in 1..6: 5 in 6 deepen
    # Recoveries are partial for some events, overshoot for others.
    assert partial > 0 and overshoot > 0
    # The basis passes 2 % in many events.
    assert sum(max(abs(b["basis"]) for b in ev) > 20.0 for ev in events) >= len(events) // 4
    basis_peak_after_spot = sum(
        int(np.argmax([abs(b["basis"]) for b in ev])) > int(np.argmax([abs(b["spot"]) for b in ev]))
        for ev in events
    )
    assert basis_peak_after_spot > 0  # the basis keeps widening after the first blow-out


def test_fills_during_a_flash_event_pay_the_widened_spread_the_observation_shows() -> None:
    cfg = dataclasses.replace(FLASH_ONLY, fees=False, slippage=False, rebalance_band=0.0)
    env = _flat_env(cfg)
    obs, info = env.reset(seed=1)
    for _ in range(2500):
        obs, _, _, _, info = env.step(np.array([0.0]))
        if info["flash_event"] and obs[SPREAD] > 20.0:
            break
    else:
        pytest.fail("no flash event with a wide spread in 2500 bars")
    spread = float(obs[SPREAD])
    equity = info["equity"]
    _, _, _, _, info = env.step(np.array([1.0]))
    # From flat, action 1 trades equity * 1.5 of notional (both legs); taker share pays half the
    # spread on it.
    assert info["spread_cost"] == pytest.approx(equity * 1.5 * spread * 0.5e-4, rel=1e-5)


def _basis_policy(obs: np.ndarray, holding: float) -> float:
    # Enter the side that profits from convergence when |basis| > 2 %, exit below 0.3 %.
    basis = obs[BASIS] / 1e3
    if holding == 0.0 and abs(basis) > 0.02:
        return 1.0 if basis > 0.0 else -1.0
    if holding != 0.0 and abs(basis) < 0.003:
        return 0.0
    return holding


def _score_policy(obs: np.ndarray, holding: float) -> float:
    # Enter on an anomaly score above 3 sigma (on the side of the basis), exit when it calms down.
    if holding == 0.0 and obs[SCORE] > 0.3 and obs[BASIS] != 0.0:
        return 1.0 if obs[BASIS] > 0.0 else -1.0
    if holding != 0.0 and obs[SCORE] < 0.1 and abs(obs[BASIS]) < 3.0:
        return 0.0
    return holding


def _stale_policy(obs: np.ndarray, holding: float) -> float:
    # Long carry while the feed is out (when marks cannot be seen), flat otherwise.
    return 1.0 if obs[STALE] == 1.0 else 0.0


Policy = Callable[[np.ndarray, float], float]
"""(observation, weight held) -> weight to hold next."""


def _run_policy(config: EnvConfig, policy: Policy, seed: int) -> tuple[float, float, int]:
    # (price P&L, execution costs, trades) of a policy on a random-walk market, funding off.
    market = MarketData.from_frame(random_frame(seed=100 + seed, n_bars=2000, symbols=("BTC",)))
    env = CarryTradeEnv(market, dataclasses.replace(config, funding=False, borrow=False))
    obs, _ = env.reset(seed=seed)
    holding = 0.0
    pnl = 0.0
    costs = 0.0
    trades = 0
    while True:
        target = policy(obs, holding)
        act = np.array([np.nan if target == holding else target])
        trades += target != holding
        holding = target
        obs, _, te, tr, info = env.step(act)
        pnl += info["price_pnl"]
        costs += info["fees"] + info["slippage"]
        if te or tr:
            return pnl, costs, trades


@pytest.mark.parametrize("policy", [_basis_policy, _score_policy, _stale_policy])
def test_trading_the_anomaly_signals_earns_no_more_than_its_costs(policy: Policy) -> None:
    cfg = dataclasses.replace(FLASH_ONLY, feed_outage_per_day=1.0)
    runs = [_run_policy(cfg, policy, seed) for seed in range(20)]
    pnl = np.mean([r[0] for r in runs])
    costs = np.mean([r[1] for r in runs])
    assert sum(r[2] for r in runs) >= 20  # the signals did fire
    assert pnl <= costs, (pnl, costs)


def test_the_basis_policy_was_an_arbitrage_on_v0_events() -> None:
    # The same proof fails on the v0 path: the basis policy earns more than its costs.
    runs = [_run_policy(V0_FLASH, _basis_policy, seed) for seed in range(20)]
    pnl = np.mean([r[0] for r in runs])
    costs = np.mean([r[1] for r in runs])
    assert pnl > 2.0 * costs > 0.0, (pnl, costs)


def test_flash_exposure_hurts_an_agent_that_ignores_it() -> None:
    # Always-long-carry, anomalies on vs off, on the same markets: on average it ends poorer.
    diffs = []
    for seed in range(20):
        market = MarketData.from_frame(random_frame(seed=200 + seed, n_bars=1500, symbols=("BTC",)))
        finals = []
        for cfg in (FLASH_ONLY, dataclasses.replace(FLASH_ONLY, anomalies=False)):
            env = CarryTradeEnv(market, cfg)
            env.reset(seed=seed)
            while True:
                _, _, te, tr, info = env.step(np.array([1.0]))
                if te or tr:
                    finals.append(info["equity"])
                    break
        diffs.append(finals[0] - finals[1])
    assert np.mean(diffs) < 0.0, diffs


def test_feed_outage_hides_live_marks_from_exposure_and_pnl_entries() -> None:
    # A random walk, a held long carry, outages only: during an outage the exposure and P&L entries
    # stay at the last seen prices while info (the books) follows the true marks.
    cfg = EnvConfig(
        flash_crash_per_day=0.0, halt_per_day=0.0, funding_spike_prob=0.0,
        feed_outage_per_day=20.0, feed_outage_bars=4, funding=False, borrow=False,
        leverage_limit=False, margin=False, drawdown_limit=0.0,
    )  # fmt: skip
    env = CarryTradeEnv(random_frame(seed=4, n_bars=600, symbols=("BTC",)), cfg)
    names = env.observation_names
    hidden = [names.index(f"BTC:{c}") for c in ("spot_exposure", "perp_exposure", "net_delta")]
    hidden += [names.index(c) for c in ("equity_growth", "unrealised_pnl", "gross_leverage")]
    obs, _ = env.reset(seed=0)
    obs, _, _, _, info = env.step(np.array([0.5]))
    checked = 0
    for _ in range(500):
        prev, prev_info = obs, info
        obs, _, te, tr, info = env.step(np.array([np.nan]))
        if info["stale"] and prev[STALE] == 1.0:
            np.testing.assert_array_equal(obs[hidden], prev[hidden])
            assert info["equity"] != prev_info["equity"]  # the books still mark at true prices
            assert info["leverage"] != prev_info["leverage"]
            checked += 1
        elif not info["stale"]:
            # Live again: gross leverage is the true one.
            assert obs[names.index("gross_leverage")] == pytest.approx(info["leverage"], rel=1e-6)
        if te or tr:
            break
    assert checked >= 10


LOOK_AHEAD_ANOMALIES = EnvConfig(
    flash_crash_per_day=3.0, halt_per_day=2.0, feed_outage_per_day=2.0,
    funding_spike_prob=0.3, flash_size=0.25, drawdown_limit=0.0,
)  # fmt: skip
"""Every anomaly frequent (flash events, outages, halts, spikes) for the look-ahead test."""


@pytest.mark.parametrize("anomalies", [False, True], ids=["anomalies_off", "anomalies_on"])
@pytest.mark.parametrize(
    "cut",
    [
        127,  # the bar just before the settlement at bar 128 (settlements every 32 bars)
        160,  # a settlement bar itself
        161,  # just after it
        191,  # just before the settlement at bar 192
        250,  # between settlements
    ],
)
def test_observation_is_unchanged_when_the_data_is_cut_after_t(cut: int, anomalies: bool) -> None:
    # Bars after `cut + extra` are removed (extra 0: the frame ends at `cut`, so for cut 127 or 191
    # the next settlement's print is not in the data at all): every field of every observation up
    # to `cut` is the same as on the full frame, the funding countdown included (the schedule is
    # regular, so the cut frame extrapolates the next settlement to the bar the full frame has).
    cfg = dataclasses.replace(LOOK_AHEAD_ANOMALIES, anomalies=anomalies)
    frame = random_frame(seed=9, n_bars=400)
    ts = frame.get_column("ts").unique().sort()
    rng = np.random.default_rng(cut)
    actions = rng.uniform(-1.0, 1.0, (cut, 2))
    full = _observations(CarryTradeEnv(frame, cfg), actions)
    assert len(full) == cut + 1
    for extra in (0, 1, 5, 40):
        cut_frame = frame.filter(pl.col("ts") <= ts[cut + extra])
        short = _observations(CarryTradeEnv(cut_frame, cfg), actions)
        for bar, (a, b) in enumerate(zip(full, short, strict=True)):
            np.testing.assert_array_equal(a, b, err_msg=f"bar {bar}, frame cut at {cut + extra}")


def _observations(env: CarryTradeEnv, actions: np.ndarray) -> list[np.ndarray]:
    obs, _ = env.reset(seed=3)
    out = [obs]
    for a in actions:
        obs, _, te, tr, _ = env.step(a)
        out.append(obs)
        assert not te
    return out
