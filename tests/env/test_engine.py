"""The engine's batched reset (`Engine.reset_envs`): the same accounts as resets one at a time."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from carry_env import EnvConfig, MarketData
from carry_env import kernel as k
from carry_env.engine import Engine

from .conftest import random_frame

MARKET = MarketData.from_frame(random_frame(seed=11, n_bars=300))
STATE = ("fs", "as_", "is_", "ctx", "obs", "info", "flags", "legs")


def _rngs(seeds: list[int]) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in seeds]


def _dirty(eng: Engine) -> None:
    # Every env a few steps into an episode, so a reset has state to clear.
    eng.reset_envs(eng.all_envs, _rngs(list(range(eng.num_envs))))
    rng = np.random.default_rng(3)
    for _ in range(5):
        eng.act[:] = rng.uniform(-1, 1, eng.act.shape)
        eng.step()


def test_batched_reset_equals_resets_one_at_a_time(stress_config: EnvConfig) -> None:
    cfg = dataclasses.replace(stress_config, random_start=True, episode_length=50)
    batched, single = Engine(MARKET, cfg, 5), Engine(MARKET, cfg, 5)
    for eng in (batched, single):
        _dirty(eng)
    envs = np.array([0, 2, 3], dtype=np.int64)
    batched.reset_envs(envs, _rngs([7, 8, 9]))
    for b, rng in zip(envs.tolist(), _rngs([7, 8, 9]), strict=True):
        single.reset_env(b, rng)
    for name in STATE:
        np.testing.assert_array_equal(getattr(batched, name), getattr(single, name), err_msg=name)
    assert (batched.is_[envs, k.I_T] != batched.is_[envs[0], k.I_T]).any()  # own random starts


def test_batched_reset_with_a_bad_window_changes_no_account() -> None:
    eng = Engine(MARKET, EnvConfig(), 3)
    _dirty(eng)
    before = {name: getattr(eng, name).copy() for name in STATE}
    with pytest.raises(ValueError, match="not a valid range"):
        eng.reset_envs(eng.all_envs, _rngs([0, 1, 2]), {"start": 10, "end": 5})
    for name in STATE:
        np.testing.assert_array_equal(getattr(eng, name), before[name], err_msg=name)
