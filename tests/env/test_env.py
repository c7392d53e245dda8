"""The gymnasium API of CarryTradeEnv / CarryTradeDiscreteEnv: checkers, determinism, windows,
executors."""

from __future__ import annotations

import dataclasses
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import carry_env  # noqa: F401 - registers the env ids
from carry_env import (
    CarryTradeDiscreteEnv,
    CarryTradeEnv,
    EnvConfig,
    Fills,
    MarketData,
    Orders,
    SimExecutor,
)
from carry_env.vector import CarryTradeVectorEnv

from .conftest import random_frame, with_price_detail

MARKET = MarketData.from_frame(random_frame(seed=3, n_bars=500))
MARKET_DETAIL = MarketData.from_frame(with_price_detail(random_frame(seed=3, n_bars=500), 4))


def _rollout(env: gym.Env, seed: int, n: int, action_seed: int = 0) -> list[tuple]:
    rng = np.random.default_rng(action_seed)
    obs, info = env.reset(seed=seed)
    out = [(obs, 0.0, False, False, info["equity"])]
    for _ in range(n):
        obs, r, te, tr, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        out.append((obs, r, te, tr, info["equity"]))
        if te or tr:
            obs, info = env.reset()
    return out


@pytest.mark.parametrize("cls", [CarryTradeEnv, CarryTradeDiscreteEnv])
def test_gymnasium_checker_passes_without_warnings(stress_config: EnvConfig, cls: type) -> None:
    env = cls(MARKET, stress_config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env, skip_render_check=True)


@pytest.mark.parametrize("cls", [CarryTradeEnv, CarryTradeDiscreteEnv])
def test_sb3_checker_passes_without_warnings(stress_config: EnvConfig, cls: type) -> None:
    env = cls(MARKET, stress_config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(env, warn=True)


def test_make_by_id() -> None:
    env = gym.make("carry_env/CarryTrade-v1", market=MARKET, config=EnvConfig())
    obs, _ = env.reset(seed=1)
    assert obs.shape == env.observation_space.shape == (len(env.unwrapped.observation_names),)
    denv = gym.make("carry_env/CarryTradeDiscrete-v1", market=MARKET)
    denv.reset(seed=1)
    assert denv.action_space.n == 15


def test_same_seed_same_rollout(stress_config: EnvConfig) -> None:
    a = _rollout(CarryTradeEnv(MARKET, stress_config), seed=11, n=400)
    b = _rollout(CarryTradeEnv(MARKET, stress_config), seed=11, n=400)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:] == y[1:]


def test_other_seed_other_anomalies(stress_config: EnvConfig) -> None:
    a = _rollout(CarryTradeEnv(MARKET, stress_config), seed=11, n=300)
    b = _rollout(CarryTradeEnv(MARKET, stress_config), seed=12, n=300)
    assert any(x[1] != y[1] for x, y in zip(a, b, strict=True))


def test_anomalies_actually_happen(stress_config: EnvConfig) -> None:
    env = CarryTradeEnv(MARKET, dataclasses.replace(stress_config, margin=False))
    env.reset(seed=5)
    seen = {"halted": 0, "stale": 0, "flash_event": 0, "funding_spike": 0}
    for _ in range(480):
        _, _, te, tr, info = env.step(np.array([0.3, -0.3]))
        for key in seen:
            seen[key] += info[key]
        if te or tr:
            break
    assert all(count > 0 for count in seen.values()), seen


def test_feed_outage_freezes_market_block(stress_config: EnvConfig) -> None:
    cfg = dataclasses.replace(
        stress_config, feed_outage_per_day=30.0, feed_outage_bars=3, flash_crash_per_day=0.0
    )
    env = CarryTradeEnv(MARKET, cfg)
    obs, _ = env.reset(seed=2)
    names = env.observation_names
    spot_col = names.index("BTC:spot_vs_sma_pct")
    stale_col = names.index("BTC:stale")
    for _ in range(200):
        prev = obs
        obs, _, te, tr, info = env.step(np.array([0.0, 0.0]))
        if info["stale"] and prev[stale_col] == 1.0:
            assert obs[stale_col] == 1.0
            assert obs[spot_col] == prev[spot_col]  # frozen while the feed is out
            return
        if te or tr:
            break
    pytest.fail("no two consecutive outage bars observed")


def test_replay_window_by_time() -> None:
    env = CarryTradeEnv(MARKET, EnvConfig(anomalies=False))
    _, info = env.reset(
        seed=0, options={"start": "2024-01-02T00:00:00", "end": "2024-01-02T06:00:00"}
    )
    steps = 0
    while True:
        _, _, te, tr, _ = env.step(np.array([0.5, 0.5]))
        steps += 1
        if te or tr:
            break
    assert tr and steps == 24  # 6 hours of 15-minute bars


def test_random_start_and_episode_length() -> None:
    env = CarryTradeEnv(MARKET, EnvConfig(random_start=True, episode_length=10, anomalies=False))
    starts = set()
    for seed in range(5):
        env.reset(seed=seed)
        starts.add(int(env.engine.is_[0, 0]))
        n = 0
        while True:
            _, _, te, tr, _ = env.step(np.array([0.0, 0.0]))
            n += 1
            if te or tr:
                break
        assert n == 10 and tr
    assert len(starts) > 1


def test_bad_reset_window_says_why() -> None:
    env = CarryTradeEnv(MARKET)
    with pytest.raises(ValueError, match="not a valid range"):
        env.reset(options={"start": 400, "end": 100})


def test_step_needs_reset() -> None:
    env = CarryTradeEnv(MARKET, EnvConfig(episode_length=1, anomalies=False))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))
    env.reset(seed=0)
    env.step(np.zeros(2))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))


def test_expert_context_slot() -> None:
    env = CarryTradeEnv(MARKET, EnvConfig(expert_context_dim=3))
    env.reset(seed=0)
    env.set_expert_context(np.array([0.1, -0.2, 0.3]))
    obs, *_ = env.step(np.zeros(2))
    np.testing.assert_allclose(obs[-3:], [0.1, -0.2, 0.3], rtol=1e-6)
    with pytest.raises(ValueError, match="expert_context_dim"):
        env.set_expert_context(np.zeros(2))


def test_render_ansi() -> None:
    env = CarryTradeEnv(MARKET, render_mode="ansi")
    env.reset(seed=0)
    env.step(np.array([1.0, 0.0]))
    line = env.render()
    assert line is not None and "equity=" in line and "2024-01-01T00:15Z" in line


def test_observation_uses_no_future_data() -> None:
    # Perturb every input after bar 200: observations up to bar 200 are unchanged.
    frame = random_frame(seed=3, n_bars=500)
    import polars as pl

    cut = frame.get_column("ts").sort().unique()[200]
    later = pl.col("ts") > cut
    perturbed = frame.with_columns(
        [
            pl.when(later).then(pl.col(c) * 1.5).otherwise(pl.col(c)).alias(c)
            for c in (
                "spot_price",
                "perp_price",
                "spot_depth_usd",
                "perp_depth_usd",
                "spread_bps",
                "f_signal",
            )
        ]
        + [
            pl.when(later)
            .then(-pl.col("funding_rate"))
            .otherwise(pl.col("funding_rate"))
            .alias("funding_rate")
        ]
    )
    cfg = EnvConfig(anomalies=False)
    a = _rollout(CarryTradeEnv(frame, cfg), seed=0, n=200)
    b = _rollout(CarryTradeEnv(perturbed, cfg), seed=0, n=200)
    for x, y in zip(a, b, strict=True):
        # Only the funding countdown may use the (published) settlement schedule, which is unchanged
        # here.
        np.testing.assert_array_equal(x[0], y[0])


class _SplitSim:
    """The simulated executor, but not marked fused: forces the split path (plan, execute,
    apply)."""

    def __init__(self, config_vector: np.ndarray) -> None:
        self.inner = SimExecutor(config_vector)
        self.calls = 0

    def execute(self, orders: Orders) -> Fills:
        self.calls += 1
        return self.inner.execute(orders)


class _HalfFills:
    """Fills half of every order with no costs: a stand-in for a venue with partial fills."""

    def execute(self, orders: Orders) -> Fills:
        zero = np.zeros_like(orders.spot_qty)
        return Fills(orders.spot_qty / 2, orders.perp_qty / 2, zero, zero, zero)


@pytest.mark.parametrize("margin", ["close", "isolated_intrabar_auto_add", "unified_intrabar"])
def test_split_path_equals_fused_path(stress_config: EnvConfig, margin: str) -> None:
    market, config = MARKET, stress_config
    if margin != "close":  # both legs' highs and lows, perps at 20x, auto-add margin on
        market = MARKET_DETAIL
        config = dataclasses.replace(
            stress_config,
            perp_leverage=20.0,
            isolated_auto_add_margin=True,
            margin_mode="unified" if margin == "unified_intrabar" else "isolated",
        )
    fused = CarryTradeEnv(market, config)
    split_exec = _SplitSim(config.to_vector(market.bar_seconds))
    split = CarryTradeEnv(market, config, executor=split_exec)
    a = _rollout(fused, seed=4, n=300)
    b = _rollout(split, seed=4, n=300)
    assert split_exec.calls >= 300
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:] == y[1:]


def test_custom_executor_partial_fills_keep_the_identity() -> None:
    env = CarryTradeEnv(
        MARKET, EnvConfig(anomalies=False, rebalance_band=0.0), executor=_HalfFills()
    )
    _, info = env.reset(seed=0)
    _, _, _, _, info2 = env.step(np.array([1.0, 0.0]))
    first = info2["spot_qty"][0]
    _, _, _, _, info3 = env.step(np.array([1.0, 0.0]))
    assert info3["spot_qty"][0] == pytest.approx(
        first * 1.5, rel=0.02
    )  # half of the remaining half
    flows = (
        info3["funding_pnl"]
        + info3["price_pnl"]
        - info3["fees"]
        - info3["slippage"]
        - info3["borrow_cost"]
    )
    assert info3["equity"] - info2["equity"] == pytest.approx(flows, abs=1e-6)


def test_executor_with_bad_fills_is_rejected() -> None:
    class Broken:
        def execute(self, orders: Orders) -> Fills:
            return Fills(
                np.zeros(3), orders.perp_qty, orders.perp_qty, orders.perp_qty, orders.perp_qty
            )

    env = CarryTradeEnv(MARKET, executor=Broken())
    env.reset(seed=0)
    with pytest.raises(ValueError, match="fills.spot_qty of shape"):
        env.step(np.zeros(2))


def test_discrete_masks_reverse_carry_and_leverage() -> None:
    # Discrete(1 + 2 * 7): hold, then per asset flatten, +0.25, +0.5, +1, -0.25, -0.5, -1.
    env = CarryTradeDiscreteEnv(
        MARKET, EnvConfig(anomalies=False, allow_reverse_carry=False, leverage_limit=False)
    )
    env.reset(seed=0)
    mask = env.action_masks()
    per_asset = mask[1:].reshape(2, 7)
    assert mask[0] and per_asset[:, :4].all() and not per_asset[:, 4:].any()
    env.step(4)  # BTC takes the whole leverage budget
    per_asset = env.action_masks()[1:].reshape(2, 7)
    assert per_asset[1, 0]  # flatten stays allowed
    assert not per_asset[1, 1:4].any()  # no budget left for ETH
    assert per_asset[0, :4].all()  # BTC may resize within its own budget


@pytest.mark.parametrize("action", [np.array([1.0]), np.array([1.0, 1.0, 1.0]), np.ones((1, 2))])
def test_action_of_another_shape_is_an_error(action: np.ndarray) -> None:
    # v0 broadcast a length-1 action to every asset.
    env = CarryTradeEnv(MARKET, EnvConfig(anomalies=False))
    env.reset(seed=0)
    with pytest.raises(
        ValueError, match=rf"action has shape \({action.shape[0]},.*expected \(2,\)"
    ):
        env.step(action)


def test_batched_action_of_another_shape_is_an_error() -> None:
    venv = CarryTradeVectorEnv(MARKET, EnvConfig(anomalies=False), 3)
    venv.reset(seed=0)
    for bad in (np.ones(2), np.ones((3, 1)), np.ones((1, 2))):
        with pytest.raises(ValueError, match=r"expected \(3, 2\)"):
            venv.step(bad)
    venv.step(np.ones((3, 2)))
