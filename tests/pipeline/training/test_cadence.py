"""Decision cadence: the clock's decision bars, and the training wrapper's k-bar steps against the
same env stepped bar by bar with hold actions."""

from __future__ import annotations

import numpy as np
import pytest

from carry_env import kernel as k
from carry_env.config import EnvConfig
from carry_env.vector import CarryTradeVectorEnv, SB3VecEnv
from carry_pipeline.lib.training.cadence import DecisionClock, DecisionVecEnv, hold_action
from carry_pipeline.lib.training.meta import MetaCore, MetaSpec
from carry_pipeline.lib.training.observation import (
    ObservationSpec,
    current_bars,
    leverage_fit,
    make_expert_env,
)
from carry_pipeline.lib.training.policy import ExpertPolicy, PolicyOutput
from carry_pipeline.lib.training.specs import expert_spec

from .conftest import carry_frame, fold_inputs

QUARTER_NS = 900 * 10**9
HOUR_NS = 4 * QUARTER_NS
DAY0 = 1_704_067_200 * 10**9  # 2024-01-01 00:00 UTC


def test_a_32_bar_clock_decides_at_the_first_bar_then_at_each_8_hour_settlement() -> None:
    clock = DecisionClock(32, 900.0)
    ts = DAY0 + 3 * HOUR_NS + np.arange(24 * 4 * 2) * QUARTER_NS  # 2 days from 03:00
    due = [t for t in ts if clock.due(int(t))]
    hours = [((t - DAY0) // HOUR_NS) for t in due]
    assert hours == [3, 8, 16, 24, 32, 40, 48]  # 03:00 (first), then 08:00, 16:00, 00:00, ...


def test_a_gap_never_delays_a_decision_past_its_period_and_the_state_resumes() -> None:
    clock = DecisionClock(32, 900.0)
    assert clock.due(DAY0 + HOUR_NS)  # 01:00: the first bar decides
    assert not clock.due(DAY0 + 7 * HOUR_NS + 3 * QUARTER_NS)  # 07:45, same period
    assert clock.due(DAY0 + 9 * HOUR_NS)  # the feed skipped 08:00; 09:00 decides
    saved = clock.get_state()
    resumed = DecisionClock(32, 900.0)
    resumed.set_state(saved)
    assert not resumed.due(DAY0 + 15 * HOUR_NS)  # a restart inside the period holds
    assert resumed.due(DAY0 + 16 * HOUR_NS)
    resumed.restart()
    assert resumed.due(DAY0 + 16 * HOUR_NS + QUARTER_NS)  # after a restart the next bar decides


def test_a_one_bar_clock_decides_every_bar_and_bad_settings_fail() -> None:
    clock = DecisionClock(1, 900.0)
    assert all(clock.due(DAY0 + i * QUARTER_NS) for i in range(10))
    with pytest.raises(ValueError, match="decision_bars=0 must be >= 1"):
        DecisionClock(0, 900.0)
    with pytest.raises(ValueError, match="bar_seconds=0"):
        DecisionClock(4, 0.0)


def test_specs_need_two_decisions_an_episode_and_exposure_decides_every_bar() -> None:
    with pytest.raises(ValueError, match="episode_length=48 must hold at least two decisions"):
        expert_spec("long_term", episode_length=48)
    with pytest.raises(ValueError, match="an exposure expert cuts risk"):
        expert_spec("anomaly", decision_bars=4)
    with pytest.raises(ValueError, match="decision_bars=0 must be >= 1"):
        MetaSpec(decision_bars=0)
    with pytest.raises(ValueError, match="episode_length=8 must hold at least two decisions"):
        MetaSpec(episode_length=8)


@pytest.fixture(scope="module")
def market(tmp_path_factory):  # noqa: ANN001, ANN201
    return fold_inputs(
        carry_frame(160, ("BTC", "ETH"), funding_bp=5.0),
        tmp_path_factory.mktemp("w"),
        train_bars=120,
        test_bars=30,
    )


def _pair(market, config: EnvConfig, n: int = 3):  # noqa: ANN001, ANN202
    # The same env twice: one behind a 4-bar DecisionVecEnv, one stepped bar by bar.
    a = CarryTradeVectorEnv(market, config, n)
    b = CarryTradeVectorEnv(market, config, n)
    return DecisionVecEnv(SB3VecEnv(a), 4), a, SB3VecEnv(b), b


def test_a_decision_is_its_action_then_holds_and_its_reward_is_the_bars_sum(market) -> None:
    config = EnvConfig(random_start=True, episode_length=40, anomalies=False)
    dec, a, plain, b = _pair(market.train_market, config)
    dec.seed(5)
    plain.seed(5)
    np.testing.assert_array_equal(dec.reset(), plain.reset())
    rng = np.random.default_rng(0)
    hold = hold_action(3, 2, False)
    for _ in range(6):
        act = rng.uniform(-1, 1, (3, 2))
        obs, rew, done, _ = dec.step(act)
        total = np.zeros(3)
        for j in range(4):
            o, r, d, _ = plain.step(act if j == 0 else hold)
            total += r
            if j == 0:
                legs = b.engine.legs.copy()
            else:  # holding: the quantities the decision bought stay as they are
                np.testing.assert_array_equal(b.engine.legs[:, :2], legs[:, :2])
        assert not done.any()
        np.testing.assert_allclose(rew, total, rtol=1e-6)
        np.testing.assert_array_equal(obs, o)
        np.testing.assert_array_equal(a.engine.legs, b.engine.legs)


def test_a_held_bar_trades_nothing(market) -> None:
    config = EnvConfig(random_start=False, episode_length=40, anomalies=False)
    base = CarryTradeVectorEnv(market.train_market, config, 1)
    dec = DecisionVecEnv(SB3VecEnv(base), 4)
    dec.reset()
    venv = dec.venv
    # Step the inner env by hand the way the wrapper does, and watch the legs after the first bar.
    venv.step(np.ones((1, 2)))
    legs = base.engine.legs.copy()
    for _ in range(3):
        venv.step(hold_action(1, 2, False))
        # Spot and perp quantities stay; the collateral moves with funding and marks.
        np.testing.assert_array_equal(base.engine.legs[:, :2], legs[:, :2])
        assert base.engine.info[0, k.INFO_NAMES.index("fees")] == 0.0


def test_an_episode_ending_inside_a_decision_reports_its_bar_and_only_its_rewards(market) -> None:
    # 10-bar episodes, 4-bar decisions: the third decision ends the episode on its second bar.
    config = EnvConfig(random_start=False, episode_length=10, anomalies=False)
    dec, a, plain, b = _pair(market.train_market, config, n=1)
    dec.reset()
    plain.reset()
    start = int(current_bars(a)[0])
    rewards = []
    for _ in range(10):
        _, r, d, info = plain.step(np.ones((1, 2)) * 0.5)
        rewards.append(float(r[0]))
        if d[0]:
            break
    hold = hold_action(1, 2, False)
    out = [dec.step(np.ones((1, 2)) * 0.5 if i == 0 else hold) for i in range(3)]
    # Decision 0 trades, decisions 1 and 2 hold: the same book as the plain env held after bar 0.
    assert not out[0][2][0] and not out[1][2][0] and out[2][2][0]
    info = out[2][3][0]
    assert info["terminal_bar"] == start + 10
    assert info["decision_start_bar"] == start + 8
    assert "terminal_observation" in info and "TimeLimit.truncated" in info
    # The held book's rewards: bars 0-3, 4-7, then 8-9 only (the reset's bars are dropped).
    plain2 = SB3VecEnv(CarryTradeVectorEnv(market.train_market, config, 1))
    plain2.reset()
    held = [float(plain2.step(np.ones((1, 2)) * 0.5 if i == 0 else hold)[1][0]) for i in range(10)]
    np.testing.assert_allclose(
        [o[1][0] for o in out], [sum(held[0:4]), sum(held[4:8]), sum(held[8:10])], rtol=1e-5
    )


def test_the_expert_env_builds_the_terminal_window_at_the_episode_end_bar(market) -> None:
    config = EnvConfig(random_start=False, episode_length=10, anomalies=False)
    env = make_expert_env(
        market.train_market, market.train_windows, ObservationSpec(), config, 1, decision_bars=4
    )
    env.reset()
    start = int(current_bars(env)[0])
    for _ in range(2):
        env.step(np.zeros((1, 2)))
    _, _, done, infos = env.step(np.zeros((1, 2)))
    assert done[0]
    final = infos[0]["terminal_observation"]
    bar = start + 10
    rows = env.builder.rows[bar]
    win = np.asarray(market.train_windows.values[rows])  # (R, S, F)
    np.testing.assert_array_equal(final["window"], win.transpose(1, 0, 2) * env.builder.valid[bar])
    # Built at the end bar, not at the one after the last decision's start (the old +1 rule).
    assert not np.array_equal(env.builder.rows[bar], env.builder.rows[start + 9])


class Fixed(ExpertPolicy):
    """A weights expert that always suggests `value` on both assets."""

    def __init__(self, value: float) -> None:
        self.spec = expert_spec("short_term", decision_bars=4, episode_length=64)
        self.value, self.recurrent = value, False

    def act(self, obs, state=None, episode_start=None, action_masks=None, deterministic=True):  # noqa: ANN001, ANN201
        a = np.full((obs["asset"].shape[0], 2), self.value)
        return PolicyOutput(action=a, output=a, state=None)


class Scripted(ExpertPolicy):
    """An anomaly expert whose multiplier is the next value of `script` at each call."""

    def __init__(self, script: list[float]) -> None:
        self.spec = expert_spec("anomaly")
        self.script, self.recurrent, self.calls = list(script), False, 0

    def act(self, obs, state=None, episode_start=None, action_masks=None, deterministic=True):  # noqa: ANN001, ANN201
        m = np.full((obs["asset"].shape[0], 2), self.script[self.calls])
        self.calls += 1
        return PolicyOutput(action=2 * m - 1, output=m, state=None)


def test_the_meta_feedback_sums_what_each_suggestion_earned_over_the_decision(market) -> None:
    from carry_pipeline.lib.training.meta import carry_unit_bp

    m = market.train_market
    base = CarryTradeVectorEnv(m, EnvConfig(anomalies=False), 1)
    spec = MetaSpec(decision_bars=4, reward_halflife=1e-9, usage_halflife=1e9)
    core = MetaCore(base, market.train_windows, {"long": Fixed(1.0), "half": Fixed(-0.5)}, spec)
    raw, _ = base.reset(seed=0)
    core.reset_envs(np.ones(1, bool))
    bars = current_bars(base)
    core.observe(raw, bars)
    core.feedback(bars, np.zeros(1), bars + 4)
    unit = carry_unit_bp(m)[bars[0] : bars[0] + 4].sum(axis=0).mean()
    # With a half-life of ~0 the running reward is the last decision's: its 4 bars' earnings.
    np.testing.assert_allclose(core._mean[0], [unit, -0.5 * unit], rtol=1e-9)


def _overlay_env(market, script: list[float] | None):  # noqa: ANN001, ANN202
    # One env, a meta-controller deciding every 4 bars over one expert suggesting full long carry,
    # top-1 on it; the anomaly expert (if any) reads `script`, one value per bar.
    base = CarryTradeVectorEnv(
        market.train_market, EnvConfig(random_start=False, episode_length=40, anomalies=False), 1
    )
    anomaly = Scripted(script) if script is not None else None
    spec = MetaSpec(decision_bars=4, gating="top1")
    core = MetaCore(base, market.train_windows, {"long": Fixed(1.0)}, spec, anomaly)
    sent: list[np.ndarray] = []

    def between(raw: np.ndarray, bars: np.ndarray) -> np.ndarray:
        sent.append(core.between(raw, bars))
        return sent[-1]

    dec = DecisionVecEnv(SB3VecEnv(base), 4, between=between)
    raw = dec.reset()
    core.reset_envs(np.ones(1, bool))
    core.observe(raw, current_bars(base))
    return dec, base, core, sent


def _spot(base: CarryTradeVectorEnv, raw: np.ndarray) -> np.ndarray:
    names = base.observation_names
    return raw[0, [names.index(f"{s}:spot_exposure") for s in base.market.symbols]]


def test_the_anomaly_cuts_the_meta_book_between_decisions_and_waits_to_add(market) -> None:
    # Decided at multiplier 1; then 0.95 (a 5 % cut: under the 10 % band, held), 0.5 (cut at
    # once to half the book), 0.8 (a rise: waits for the next decision).
    dec, base, core, sent = _overlay_env(market, [1.0, 0.95, 0.5, 0.8])
    first = core.actions(np.array([[1.0, -1.0]]))
    # 1 per asset is twice what the leverage limit allows: the decided book is the fitted one.
    fitted = leverage_fit(np.ones((1, 2)), core.max_leverage, core.leverage_cap)
    assert (fitted < 0.75).all()
    np.testing.assert_allclose(first, fitted)
    raw, _, _, _ = dec.step(first)
    assert len(sent) == 3
    assert np.isnan(sent[0]).all()  # 0.95: held
    # 0.5: the decided book times 0.5 (the limits moved a little since the decision)
    np.testing.assert_allclose(sent[1], 0.5 * fitted, rtol=0.02)
    assert np.isnan(sent[2]).all()  # 0.8 > 0.5: held until the next decision
    np.testing.assert_allclose(core.applied, [[0.5, 0.5]])
    # The env holds half the book it bought: step the same decision without the overlay.
    plain, pbase, pcore, _ = _overlay_env(market, None)
    full = plain.step(pcore.actions(np.array([[1.0, -1.0]])))[0]
    np.testing.assert_allclose(_spot(base, raw), 0.5 * _spot(pbase, full), rtol=0.05)


def test_each_decision_sizes_the_book_at_its_multiplier_and_the_band_follows_it(market) -> None:
    # Decided at 1.0, cut to 0.5; the next decision reads 0.6 and sizes the book at it, so a
    # dip to 0.56 (7 % below 0.6) holds and one to 0.5 (17 % below) cuts.
    dec, _, core, sent = _overlay_env(market, [1.0, 1.0, 0.5, 1.0, 0.6, 0.56, 0.56, 0.5])
    dec.step(core.actions(np.array([[1.0, -1.0]])))
    np.testing.assert_allclose(core.applied, [[0.5, 0.5]])
    core.observe(dec.venv.reset(), current_bars(core.base))  # the next decision reads 0.6
    dec.step(core.actions(np.array([[1.0, -1.0]])))
    np.testing.assert_allclose(core.multiplier, [[0.5, 0.5]])
    assert np.isnan(sent[3]).all() and np.isnan(sent[4]).all()  # 0.56: held
    assert np.isfinite(sent[5]).all()  # 0.5: cut
    np.testing.assert_allclose(core.applied, [[0.5, 0.5]])


def test_without_an_anomaly_expert_the_meta_book_holds_between_decisions(market) -> None:
    dec, _, core, sent = _overlay_env(market, None)
    dec.step(core.actions(np.array([[1.0, -1.0]])))
    assert len(sent) == 3 and all(np.isnan(a).all() for a in sent)


def test_the_applied_multiplier_is_part_of_the_meta_state(market) -> None:
    dec, _, core, _ = _overlay_env(market, [1.0, 0.5])
    core.actions(np.array([[1.0, -1.0]]))
    core.between(dec.reset(), current_bars(core.base))
    state = core.get_state()
    np.testing.assert_allclose(state["applied"], [[0.5, 0.5]])
    _, _, other, _ = _overlay_env(market, [1.0])
    other.set_state(state)
    np.testing.assert_allclose(other.applied, [[0.5, 0.5]])
    # A state saved before the overlay existed: the applied multiplier is the one it read.
    old = {k: v for k, v in state.items() if k != "applied"}
    other.set_state(old)
    np.testing.assert_allclose(other.applied, state["multiplier"])
