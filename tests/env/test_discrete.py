"""The discrete envs: one asset per step, masks exact for the joint action (checked against the
kernel's own clamp by stepping every action from every visited state), and batched masks that
reach sb3-contrib one row per env."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from carry_env import EnvConfig, MarketData
from carry_env import kernel as k
from carry_env.discrete import (
    CarryTradeDiscreteEnv,
    CarryTradeDiscreteVectorEnv,
    choice_to_weights,
)
from carry_env.vector import SB3VecEnv

from .conftest import random_frame

CONFIG = EnvConfig(halt_per_day=20.0, flash_crash_per_day=0.0, feed_outage_per_day=0.0)


def _replay(market: MarketData, config: EnvConfig, buckets, prefix: list[int]):
    env = CarryTradeDiscreteEnv(market, config, size_buckets=buckets)
    env.reset(seed=5)
    for a in prefix:
        env.step(a)
    return env


@pytest.mark.parametrize(
    ("symbols", "buckets", "reverse"),
    [
        (("BTC",), (0.5, 1.0), True),
        (("BTC", "ETH"), (0.25, 0.5, 1.0), True),
        (("BTC", "ETH", "SOL"), (1.0,), False),
    ],
)
def test_masks_are_exact_for_every_action_of_every_visited_state(symbols, buckets, reverse) -> None:
    # From each state along a greedy path (always the largest allowed bucket, so the shared
    # leverage budget binds), step every action from a replayed copy: an allowed action trades
    # without clamping, a masked one is clamped, halted, or a reverse carry that is switched off.
    market = MarketData.from_frame(random_frame(seed=4, n_bars=160, symbols=symbols))
    config = dataclasses.replace(CONFIG, allow_reverse_carry=reverse)
    rng = np.random.default_rng(0)
    prefix: list[int] = []
    checked = {"allowed": 0, "clamped": 0, "halted": 0, "reverse": 0}
    nw = 1 + 2 * len(buckets)
    for _ in range(24):
        env = _replay(market, config, buckets, prefix)
        mask = env.action_masks()
        halted = env.engine.is_[0, k.I_HALT] > 0
        for a in range(int(env.action_space.n)):
            probe = _replay(market, config, buckets, prefix)
            _, _, _, _, info = probe.step(a)
            if a == 0:
                assert mask[a]
                continue
            reverse_off = not reverse and (a - 1) % nw > len(buckets)
            if mask[a]:
                assert not info["clamped"] and not halted and not reverse_off
                checked["allowed"] += 1
            elif halted:
                assert info["turnover"] == 0.0
                checked["halted"] += 1
            elif reverse_off:
                checked["reverse"] += 1
            else:
                assert info["clamped"], f"action {a} masked but not clamped after {prefix}"
                checked["clamped"] += 1
        allowed = np.flatnonzero(mask)
        big = [a for a in allowed if a > 0 and (a - 1) % nw in (len(buckets), 2 * len(buckets))]
        prefix.append(
            int(rng.choice(big)) if big and rng.random() < 0.7 else int(rng.choice(allowed))
        )
    assert checked["allowed"] > 0 and checked["clamped"] > 0 and checked["halted"] > 0
    if not reverse:
        assert checked["reverse"] > 0


def test_one_asset_moves_per_step() -> None:
    market = MarketData.from_frame(random_frame(seed=4, n_bars=160))
    env = CarryTradeDiscreteEnv(market, EnvConfig(anomalies=False, leverage_limit=False))
    env.reset(seed=0)
    # W = 7 choices per asset: flatten, +0.25, +0.5, +1, -0.25, -0.5, -1.
    _, _, _, _, info = env.step(3)  # BTC long carry at 0.5; ETH holds (flat)
    assert info["spot_qty"][0] > 0 > info["perp_qty"][0] and info["spot_qty"][1] == 0.0
    _, _, _, _, info = env.step(13)  # ETH reverse carry at 0.5; BTC holds
    assert info["spot_qty"][1] < 0 < info["perp_qty"][1] and info["spot_qty"][0] > 0
    _, _, _, _, info = env.step(8)  # ETH flatten
    assert info["spot_qty"][1] == 0.0 and info["spot_qty"][0] > 0
    with pytest.raises(ValueError, match=r"must lie in \[0, 14\]"):
        env.step(15)
    with pytest.raises(ValueError, match="expected \\(\\)"):
        env.step(np.array([3, 0]))


def test_choice_to_weights_layout() -> None:
    weights = np.array([0.0, 0.5, 1.0, -0.5, -1.0])
    out = choice_to_weights(np.array([0, 1, 3, 10]), 2, weights)
    np.testing.assert_array_equal(np.isnan(out), [[1, 1], [0, 1], [0, 1], [1, 0]])
    assert out[1, 0] == 0.0 and out[2, 0] == 1.0 and out[3, 1] == -1.0


def test_batched_masks_reach_sb3_one_row_per_env() -> None:
    market = MarketData.from_frame(random_frame(seed=4, n_bars=160))
    config = EnvConfig(anomalies=False, leverage_limit=False)
    venv = CarryTradeDiscreteVectorEnv(market, config, 3)
    sb3 = SB3VecEnv(venv)
    sb3.reset()
    sb3.step(np.array([4, 0, 11]))  # env 0: BTC at 1.0 (whole budget); env 2: ETH at -0.25
    rows = sb3.env_method("action_masks")
    assert len(rows) == 3 and all(r.shape == (15,) for r in rows)
    assert not rows[0][9:12].any() and rows[1].all()  # env 0 has no budget left for ETH
    assert sb3.env_method("action_masks", indices=[2])[0].tolist() == rows[2].tolist()
    # Each row is what the single env seeded alike reports.
    single = CarryTradeDiscreteEnv(market, config)
    single.reset(seed=None)
    single.step(4)
    np.testing.assert_array_equal(single.action_masks(), rows[0])
    with pytest.raises(ValueError, match=r"expected \(3,\)"):
        venv.step(np.array([0, 0]))
