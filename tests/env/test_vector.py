"""The batched env equals B single envs step for step; the SB3 adapter speaks VecEnv."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest

from carry_env import CarryTradeEnv, EnvConfig, MarketData
from carry_env.vector import CarryTradeVectorEnv, SB3VecEnv

from .conftest import random_frame, with_price_detail

MARKET = MarketData.from_frame(random_frame(seed=5, n_bars=400))
MARKET_DETAIL = MarketData.from_frame(with_price_detail(random_frame(seed=5, n_bars=400), 6))
"""The same market with marks and both legs' intrabar extremes."""


@pytest.mark.parametrize("parallel", [False, True])
def test_batched_equals_single_envs(stress_config: EnvConfig, parallel: bool) -> None:
    cfg = dataclasses.replace(stress_config, random_start=True, episode_length=60)
    b = 6
    venv = CarryTradeVectorEnv(MARKET, cfg, b, parallel=parallel)
    singles = [CarryTradeEnv(MARKET, cfg) for _ in range(b)]
    obs, _ = venv.reset(seed=100)
    for i, env in enumerate(singles):
        o, _ = env.reset(seed=100 + i)
        np.testing.assert_array_equal(obs[i], o)
    rng = np.random.default_rng(0)
    resets = 0
    for _ in range(250):
        actions = rng.uniform(-1, 1, (b, 2))
        obs, rew, term, trunc, infos = venv.step(actions)
        for i, env in enumerate(singles):
            o, r, te, tr, info = env.step(actions[i])
            assert (r, te, tr) == (rew[i], term[i], trunc[i])
            if te or tr:
                resets += 1
                np.testing.assert_array_equal(infos["final_obs"][i], o)
                assert infos["final_info"]["equity"][i] == info["equity"]
                o, _ = env.reset()
            else:
                assert infos["equity"][i] == info["equity"]
                np.testing.assert_array_equal(infos["spot_qty"][i], info["spot_qty"])
            np.testing.assert_array_equal(obs[i], o)
    assert resets >= b * 3  # autoresets were exercised


def test_vector_spaces_and_masks() -> None:
    venv = CarryTradeVectorEnv(MARKET, EnvConfig(), 3)
    obs, infos = venv.reset(seed=0)
    assert obs.shape == (3, venv.single_observation_space.shape[0])
    assert venv.action_space.shape == (3, 2)
    assert infos["equity"].shape == (3,) and infos["_equity"].all()
    assert infos["spot_qty"].shape == (3, 2)
    with pytest.raises(RuntimeError, match="reset"):
        CarryTradeVectorEnv(MARKET, EnvConfig(), 2).step(np.zeros((2, 2)))


def test_partial_reset_mask() -> None:
    venv = CarryTradeVectorEnv(MARKET, EnvConfig(anomalies=False), 2)
    venv.reset(seed=0)
    venv.step(np.ones((2, 2)) * 0.5)
    before = venv.engine.as_[0].copy()
    venv.reset(options={"reset_mask": np.array([False, True])})
    np.testing.assert_array_equal(venv.engine.as_[0], before)
    assert not venv.engine.as_[1, :, 0].any()


def test_make_vec_uses_the_batched_env() -> None:
    venv = gym.make_vec(
        "carry_env/CarryTrade-v1",
        num_envs=4,
        vectorization_mode="vector_entry_point",
        market=MARKET,
        config=EnvConfig(),
    )
    assert isinstance(venv.unwrapped, CarryTradeVectorEnv)
    obs, _ = venv.reset(seed=0)
    assert obs.shape[0] == 4


def test_sb3_adapter_reports_terminal_observations() -> None:
    cfg = EnvConfig(episode_length=5, anomalies=False)
    vec = SB3VecEnv(CarryTradeVectorEnv(MARKET, cfg, 3))
    vec.seed(7)
    obs = vec.reset()
    assert obs.shape == (3, vec.observation_space.shape[0])
    for _ in range(5):
        vec.step_async(np.zeros((3, 2)))
        obs, rew, dones, infos = vec.step_wait()
    assert dones.all() and rew.dtype == np.float32
    for info in infos:
        assert info["TimeLimit.truncated"] is True
        assert info["terminal_observation"].shape == obs.shape[1:]
    assert vec.get_attr("render_mode") == [None, None, None]
    assert vec.env_is_wrapped(gym.Wrapper) == [False, False, False]


@pytest.mark.parametrize("parallel", [False, True])
def test_batch_past_the_prefetch_distance_equals_single_envs(
    stress_config: EnvConfig, parallel: bool
) -> None:
    # The step prefetches the market rows of the env PREFETCH_AHEAD places on: a batch several
    # times longer than that, on random bars, must still equal its single envs exactly.
    from carry_env.kernel import PREFETCH_AHEAD

    cfg = dataclasses.replace(stress_config, random_start=True, episode_length=40)
    b = 3 * PREFETCH_AHEAD + 1
    venv = CarryTradeVectorEnv(MARKET, cfg, b, parallel=parallel)
    singles = [CarryTradeEnv(MARKET, cfg) for _ in range(b)]
    obs, _ = venv.reset(seed=300)
    for i, env in enumerate(singles):
        np.testing.assert_array_equal(obs[i], env.reset(seed=300 + i)[0])
    rng = np.random.default_rng(1)
    for _ in range(90):
        actions = rng.uniform(-1, 1, (b, 2))
        obs, rew, term, trunc, infos = venv.step(actions)
        for i, env in enumerate(singles):
            o, r, te, tr, info = env.step(actions[i])
            assert (r, te, tr) == (rew[i], term[i], trunc[i])
            if te or tr:
                o, _ = env.reset()
            else:
                assert infos["equity"][i] == info["equity"]
            np.testing.assert_array_equal(obs[i], o)


@pytest.mark.parametrize("mode", ["isolated", "unified"])
def test_batched_equals_single_envs_with_intrabar_margin_and_auto_add(
    stress_config: EnvConfig, mode: str
) -> None:
    # Both legs' highs and lows, auto-add margin on, perps at 20x (isolated at 1.8x: collateral at
    # a ratio of 10 and little free cash, so top-ups and liquidations after them happen; unified at
    # 3x, near its line).
    cfg = dataclasses.replace(
        stress_config,
        random_start=True,
        episode_length=60,
        margin_mode=mode,
        perp_leverage=20.0,
        leverage_cap=3.0 if mode == "unified" else 1.8,
        spot_collateral_haircut=0.9,
        leverage_limit=False,
        isolated_auto_add_margin=True,
    )
    b = 5
    venv = CarryTradeVectorEnv(MARKET_DETAIL, cfg, b, parallel=False)
    singles = [CarryTradeEnv(MARKET_DETAIL, cfg) for _ in range(b)]
    obs, _ = venv.reset(seed=200)
    for i, env in enumerate(singles):
        np.testing.assert_array_equal(obs[i], env.reset(seed=200 + i)[0])
    rng = np.random.default_rng(2)
    added = liquidated = 0
    for _ in range(200):
        actions = rng.uniform(-1, 1, (b, 2))
        obs, rew, term, trunc, infos = venv.step(actions)
        for i, env in enumerate(singles):
            o, r, te, tr, info = env.step(actions[i])
            assert (r, te, tr) == (rew[i], term[i], trunc[i])
            added += info["margin_added"] > 0.0
            liquidated += bool(info["liquidated"])
            if te or tr:
                o, _ = env.reset()
            else:
                assert infos["equity"][i] == info["equity"]
                assert infos["margin_added"][i] == info["margin_added"]
            np.testing.assert_array_equal(obs[i], o)
    assert liquidated > 0
    assert (added > 0) == (mode == "isolated")


@pytest.mark.parametrize("parallel", [False, True])
def test_returned_arrays_are_the_callers(stress_config: EnvConfig, parallel: bool) -> None:
    # Each step returns fresh arrays (gymnasium's default, and SB3 keeps the last obs across a
    # step): what a step returned must not change when later steps and autoresets run.
    cfg = dataclasses.replace(stress_config, random_start=True, episode_length=8)
    venv = CarryTradeVectorEnv(MARKET, cfg, 5, parallel=parallel)
    obs, infos = venv.reset(seed=1)
    kept = [(obs, infos, obs.copy(), {key: np.copy(v) for key, v in infos.items()})]
    rng = np.random.default_rng(2)
    for _ in range(20):
        out = venv.step(rng.uniform(-1, 1, (5, 2)))
        kept.append((out, out[4], [np.copy(x) for x in out[:4]], _deep_copy(out[4])))
    for returned, infos, obs_then, infos_then in kept[1:]:
        for x, x_then in zip(returned[:4], obs_then, strict=True):
            np.testing.assert_array_equal(x, x_then)
        _assert_infos_equal(infos, infos_then)
    np.testing.assert_array_equal(kept[0][0], kept[0][2])
    _assert_infos_equal(kept[0][1], kept[0][3])
    assert any("final_info" in infos for _, infos, _, _ in kept[1:])  # autoresets happened


@pytest.mark.parametrize("parallel", [False, True])
def test_partial_resets_and_step_arrays_leave_returned_arrays_alone(
    stress_config: EnvConfig, parallel: bool
) -> None:
    # A step hands out the arrays the kernel wrote (no copy): a later step, a same-step autoreset
    # or a partial reset (which writes only the reset envs' rows) must not write them.
    cfg = dataclasses.replace(stress_config, random_start=True, episode_length=6)
    venv = CarryTradeVectorEnv(MARKET, cfg, 5, parallel=parallel)
    venv.reset(seed=3)
    rng = np.random.default_rng(4)
    kept = []
    for j in range(30):
        actions = rng.uniform(-1, 1, (5, 2))
        if j % 7 == 3:
            mask = rng.uniform(size=5) < 0.5
            obs, infos = venv.reset(options={"reset_mask": mask})
            kept.append(((obs,), infos, (obs.copy(),), _deep_copy(infos)))
        elif j % 2:
            out = venv.step(actions)
            kept.append((out[:4], out[4], [np.copy(x) for x in out[:4]], _deep_copy(out[4])))
        else:
            *arrays, ends = venv.step_arrays(actions)
            info = dict(ends.info)
            kept.append((arrays, info, [np.copy(x) for x in arrays], _deep_copy(info)))
    for arrays, infos, arrays_then, infos_then in kept:
        for x, x_then in zip(arrays, arrays_then, strict=True):
            np.testing.assert_array_equal(x, x_then)
        _assert_infos_equal(infos, infos_then)


@pytest.mark.parametrize("parallel", [False, True])
def test_every_output_entry_is_written_each_step(
    stress_config: EnvConfig, parallel: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A step writes into uninitialised arrays (`Engine.renew_outputs`): poisoned with two
    # different values, the returned rewards, flags, info and positions must not differ.
    import carry_env.engine as engine_module

    def run(poison: float) -> list:
        def poisoned(a: np.ndarray) -> np.ndarray:
            return np.full_like(a, bool(poison > 0) if a.dtype == np.bool_ else poison)

        monkeypatch.setattr(engine_module.np, "empty_like", poisoned)
        cfg = dataclasses.replace(stress_config, random_start=True, episode_length=9)
        venv = CarryTradeVectorEnv(MARKET_DETAIL, cfg, 6, parallel=parallel)
        venv.reset(seed=8)
        rng = np.random.default_rng(9)
        outs = [venv.step(rng.uniform(-1, 1, (6, 2))) for _ in range(40)]
        monkeypatch.undo()
        return [(o[1], o[2], o[3], _deep_copy(o[4])) for o in outs]

    for a, b in zip(run(1e300), run(-1e300), strict=True):
        for x, y in zip(a[:3], b[:3], strict=True):
            np.testing.assert_array_equal(x, y)
        _assert_infos_equal(a[3], b[3])


def _deep_copy(infos: dict) -> dict:
    out = {}
    for key, v in infos.items():
        if isinstance(v, dict):
            out[key] = _deep_copy(v)
        elif v.dtype == object:
            out[key] = np.array([None if x is None else x.copy() for x in v], dtype=object)
        else:
            out[key] = v.copy()
    return out


def _assert_infos_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, v in a.items():
        if isinstance(v, dict):
            _assert_infos_equal(v, b[key])
        elif v.dtype == object:
            for x, y in zip(v, b[key], strict=True):
                assert (x is None) == (y is None)
                if x is not None:
                    np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_array_equal(v, b[key], err_msg=key)


@pytest.mark.parametrize("parallel", [False, True])
def test_step_arrays_equals_step(stress_config: EnvConfig, parallel: bool) -> None:
    cfg = dataclasses.replace(stress_config, random_start=True, episode_length=12)
    full = CarryTradeVectorEnv(MARKET, cfg, 6, parallel=parallel)
    lean = CarryTradeVectorEnv(MARKET, cfg, 6, parallel=parallel)
    full.reset(seed=40)
    lean.reset(seed=40)
    rng = np.random.default_rng(3)
    ended = 0
    for _ in range(60):
        actions = rng.uniform(-1, 1, (6, 2))
        obs, rew, term, trunc, infos = full.step(actions)
        obs2, rew2, term2, trunc2, ends = lean.step_arrays(actions)
        for x, y in ((obs, obs2), (rew, rew2), (term, term2), (trunc, trunc2)):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(ends.envs, np.flatnonzero(term | trunc))
        for j, b in enumerate(ends.envs.tolist()):
            ended += 1
            np.testing.assert_array_equal(ends.obs[j], infos["final_obs"][b])
            for key, v in infos["final_info"].items():
                np.testing.assert_array_equal(ends.info[key][j], v[b], err_msg=key)
    assert ended >= 12


def test_sb3_adapter_reports_the_final_values() -> None:
    cfg = EnvConfig(random_start=True, episode_length=7)
    vec = SB3VecEnv(CarryTradeVectorEnv(MARKET, cfg, 4))
    twin = CarryTradeVectorEnv(MARKET, cfg, 4)
    vec.seed(9)
    vec.reset()
    twin.reset(seed=9)
    rng = np.random.default_rng(4)
    for _ in range(10):
        actions = rng.uniform(-1, 1, (4, 2))
        vec.step_async(actions)
        obs, rew, dones, infos = vec.step_wait()
        obs2, rew2, term, trunc, infos2 = twin.step(actions)
        np.testing.assert_array_equal(obs, obs2)
        np.testing.assert_array_equal(rew, rew2.astype(np.float32))
        for b in range(4):
            if not dones[b]:
                assert infos[b] == {}
                continue
            final = infos2["final_info"]
            np.testing.assert_array_equal(infos[b]["terminal_observation"], infos2["final_obs"][b])
            assert infos[b]["equity"] == final["equity"][b]
            assert infos[b]["liquidated"] is bool(final["liquidated"][b])
            assert infos[b]["TimeLimit.truncated"] is bool(trunc[b] and not term[b])


def test_reset_mask_of_another_shape_is_an_error() -> None:
    venv = CarryTradeVectorEnv(MARKET, EnvConfig(), 3)
    with pytest.raises(ValueError, match=r"reset_mask must be a bool array of shape \(3,\)"):
        venv.reset(options={"reset_mask": np.array([True, False])})
