"""Smoke tests: SB3 PPO, sb3-contrib MaskablePPO and PPO on the batched adapter train on the env."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO

from carry_env import CarryTradeDiscreteEnv, CarryTradeEnv, EnvConfig, MarketData
from carry_env.vector import CarryTradeVectorEnv, SB3VecEnv

from .conftest import random_frame

MARKET = MarketData.from_frame(random_frame(seed=9, n_bars=300))
CONFIG = EnvConfig(random_start=True, episode_length=64, halt_per_day=1.0)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_ppo_learns_on_the_continuous_env() -> None:
    model = PPO(
        "MlpPolicy", CarryTradeEnv(MARKET, CONFIG), n_steps=128, batch_size=64, n_epochs=2, seed=0
    )
    model.learn(total_timesteps=384)
    assert model.num_timesteps >= 384
    action, _ = model.predict(
        np.zeros(model.observation_space.shape, dtype=np.float32), deterministic=True
    )
    assert action.shape == (2,)


def test_maskable_ppo_learns_on_the_discrete_env() -> None:
    env = CarryTradeDiscreteEnv(MARKET, CONFIG)
    model = MaskablePPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=2, seed=0)
    model.learn(total_timesteps=384)
    obs, _ = env.reset(seed=1)
    for _ in range(20):
        masks = env.action_masks()
        action, _ = model.predict(obs, action_masks=masks, deterministic=False)
        flat = masks.reshape(2, -1)
        assert all(
            flat[i, a] for i, a in enumerate(action)
        )  # the policy only picks allowed actions
        obs, _, te, tr, _ = env.step(action)
        if te or tr:
            break


def test_ppo_trains_on_the_batched_adapter() -> None:
    vec = SB3VecEnv(CarryTradeVectorEnv(MARKET, CONFIG, 16))
    model = PPO("MlpPolicy", vec, n_steps=32, batch_size=128, n_epochs=1, seed=0)
    model.learn(total_timesteps=1_024)
    assert model.num_timesteps >= 1_024
