"""Training throughput: PPO on the batched carry env vs PPO on CartPole-v1 (same network, n_steps,
n_envs, batch), the env's share of PPO's wall time, and RecurrentPPO's fps beside PPO's.

    .venv/bin/python bench/training.py

One torch thread (as training pins it). Prints figures and ratios measured in this run.
"""

from __future__ import annotations

import time

import gymnasium as gym
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecMonitor

from carry_env import EnvConfig
from carry_env.synthetic import simulate_market
from carry_env.vector import CarryTradeVectorEnv, SB3VecEnv

N_ENVS, N_STEPS, BATCH, EPOCHS, NET = 16, 64, 512, 4, [64, 64]
TIMESTEPS = 32_768
RECURRENT_TIMESTEPS = 4_096


class TimedVecEnv(VecEnvWrapper):
    """Adds up the seconds spent inside the wrapped env's reset and step."""

    def __init__(self, venv: VecEnv) -> None:
        super().__init__(venv)
        self.seconds = 0.0

    def reset(self):  # noqa: ANN201
        t = time.perf_counter()
        out = self.venv.reset()
        self.seconds += time.perf_counter() - t
        return out

    def step_wait(self):  # noqa: ANN201
        t = time.perf_counter()
        out = self.venv.step_wait()
        self.seconds += time.perf_counter() - t
        return out


def carry_vec() -> TimedVecEnv:
    """16 batched carry envs on a simulated quarter of two symbols, every mechanism on."""
    market = simulate_market(
        ("BTC/USDT:USDT", "ETH/USDT:USDT"), "2024-01-01", "2024-04-01", "15m", seed=0
    )
    config = EnvConfig(random_start=True, episode_length=512)
    return TimedVecEnv(SB3VecEnv(CarryTradeVectorEnv(market, config, N_ENVS)))


def cartpole_vec() -> TimedVecEnv:
    """16 CartPole-v1 envs in SB3's DummyVecEnv."""
    return TimedVecEnv(DummyVecEnv([lambda: gym.make("CartPole-v1")] * N_ENVS))


def run(algo: type, policy: str, venv: TimedVecEnv, timesteps: int) -> tuple[float, float]:
    """(fps, env share of wall time) of one training run."""
    model = algo(
        policy,
        VecMonitor(venv),
        n_steps=N_STEPS,
        batch_size=BATCH,
        n_epochs=EPOCHS,
        policy_kwargs={"net_arch": NET},
        seed=0,
        device="cpu",
        verbose=0,
    )
    venv.seconds = 0.0
    t = time.perf_counter()
    model.learn(total_timesteps=timesteps)
    wall = time.perf_counter() - t
    return model.num_timesteps / wall, venv.seconds / wall


def main() -> None:
    """Print the figures."""
    torch.set_num_threads(1)
    run(PPO, "MlpPolicy", cartpole_vec(), 2_048)  # warm-up (torch, numba caches)
    carry_env_vec = carry_vec()
    run(PPO, "MlpPolicy", carry_env_vec, 2_048)
    cp_fps, cp_share = run(PPO, "MlpPolicy", cartpole_vec(), TIMESTEPS)
    c_fps, c_share = run(PPO, "MlpPolicy", carry_env_vec, TIMESTEPS)
    r_fps, r_share = run(RecurrentPPO, "MlpLstmPolicy", carry_env_vec, RECURRENT_TIMESTEPS)
    print(
        f"PPO {NET}, n_envs={N_ENVS}, n_steps={N_STEPS}, batch={BATCH}, epochs={EPOCHS}, 1 thread"
    )
    print(f"PPO on CartPole-v1:       {cp_fps:8,.0f} fps  (env {cp_share:5.1%} of wall time)")
    print(f"PPO on batched carry env: {c_fps:8,.0f} fps  (env {c_share:5.1%} of wall time)")
    print(f"  carry / CartPole:       {c_fps / cp_fps:8.2f}x  (target >= 0.9x)")
    print(f"  carry env share:        {c_share:8.1%}   (target < 5 %)")
    print(
        f"RecurrentPPO on carry:    {r_fps:8,.0f} fps  "
        f"({r_fps / c_fps:.2f}x PPO's; env {r_share:.1%})"
    )


if __name__ == "__main__":
    main()
