"""Does PPO learn to hold the carry trade? The same market at three decision cadences.

    .venv/bin/python bench/cadence.py [--timesteps 600000]

Plain SB3 PPO (default observation, 16 batched envs, [64, 64], one torch thread) is trained on the
simulated 2023 of BTC and ETH and tested from flat on 2024 H1 (the pipeline's env config: auto-add
margin on, anomalies on), once on 8-hour bars (a decision per funding interval, 90-bar episodes =
30 days), once on 15-minute bars deciding every bar (256-bar episodes, what the experts trained on
before `decision_bars`), and once on 15-minute bars deciding every 32 bars through the pipeline's
`cadence.DecisionVecEnv` (1,024-bar episodes = 32 decisions; tested deciding every 32 bars from
the start and holding, NaN, in between; what the slow experts train on now). Beside it:
`carry_env.demo`'s `always_long_carry` (weight 1 / N on every asset, every bar) and `flat`, on the
test half-year, and PPO and long carry in sample on the training year (`carry_env.demo.run_episode`
for every run). Printed per run: the equity at the end, funding, fees, slippage, turnover in
multiples of the starting equity, and the policy's mean action per asset. The question it answers
for issue 9: at which cadence does the training objective reward entering and holding the trade
(README, Models stage, "Why the demo agents stay near flat"). Figures measured in this run; not a
test.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carry_env.demo import Policy, always_long_carry, flat, run_episode  # noqa: E402
from carry_env.env import CarryTradeEnv  # noqa: E402
from carry_env.sb3 import SB3VecEnv  # noqa: E402
from carry_env.synthetic import simulate_market  # noqa: E402
from carry_env.vector import CarryTradeVectorEnv  # noqa: E402
from carry_pipeline.lib.env_config import PIPELINE_ENV_CONFIG  # noqa: E402
from carry_pipeline.lib.training.cadence import DecisionVecEnv  # noqa: E402

SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT")
CADENCES = (("8h", 90, 1), ("15m", 256, 1), ("15m", 1_024, 32))
"""(bar, episode length in bars, bars per decision) of each run."""


def every(policy: Policy, decision_bars: int) -> Policy:
    """`policy` asked every `decision_bars` bars from the episode's start, holding (NaN) between."""
    bar = [0]

    def act(obs: np.ndarray, names: list[str]) -> np.ndarray:
        decide = bar[0] % decision_bars == 0
        bar[0] += 1
        action = np.asarray(policy(obs, names), dtype=np.float64)
        return action if decide else np.full_like(action, np.nan)

    return act


def recorded(policy: Policy, actions: list[np.ndarray]) -> Policy:
    """`policy`, appending each action it takes to `actions`."""

    def act(obs: np.ndarray, names: list[str]) -> np.ndarray:
        action = np.asarray(policy(obs, names), dtype=np.float64)
        actions.append(action)
        return action

    return act


def main() -> None:
    """Train at each cadence and print the backtests."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=600_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cash = PIPELINE_ENV_CONFIG.initial_cash
    for bar, episode, decision_bars in CADENCES:
        train = simulate_market(SYMBOLS, "2023-01-01", "2024-01-01", bar, seed=0)
        test = simulate_market(SYMBOLS, "2024-01-01", "2024-07-01", bar, seed=0)
        config = replace(PIPELINE_ENV_CONFIG, random_start=True, episode_length=episode)
        inner: VecEnv = SB3VecEnv(CarryTradeVectorEnv(train, config, 16))
        if decision_bars > 1:
            inner = DecisionVecEnv(inner, decision_bars)
        venv = VecMonitor(inner)
        model = PPO(
            "MlpPolicy", venv, n_steps=64, batch_size=512, n_epochs=4, learning_rate=3e-4,
            policy_kwargs={"net_arch": [64, 64], "log_std_init": -1.0}, seed=0, device="cpu",
        )  # fmt: skip
        t0 = time.perf_counter()
        model.learn(args.timesteps)
        wall = time.perf_counter() - t0
        print(
            f"{bar} bars, a decision every {decision_bars} bar(s), {episode}-bar episodes, "
            f"{args.timesteps:,} timesteps (decisions) in {wall:.0f} s:"
        )
        ppo: Policy = lambda o, _, m=model: m.predict(o, deterministic=True)[0]  # noqa: E731
        policies: dict[str, Policy] = {
            "ppo": ppo,
            "long_carry": always_long_carry,
            "flat": flat,
        }
        for span, name in [(s, n) for s in ("test", "train") for n in policies]:
            if span == "train" and name == "flat":
                continue
            market = test if span == "test" else train
            actions: list[np.ndarray] = []
            env = CarryTradeEnv(market, PIPELINE_ENV_CONFIG)
            policy = every(ppo, decision_bars) if name == "ppo" else policies[name]
            r = run_episode(env, recorded(policy, actions), name, seed=1)
            print(
                f"  {span:<5} {name:<10} equity {r.final_equity:>9,.0f}  funding "
                f"{r.funding:>7,.0f}  fees {r.fees:>7,.0f}  slippage {r.slippage:>6,.0f}  "
                f"turnover {r.turnover / cash:5.1f}x  mean action "
                f"{np.round(np.nanmean(actions, axis=0), 2)}",
                flush=True,
            )
    funding = simulate_market(SYMBOLS, "2024-01-01", "2024-07-01", "8h", seed=0)
    sums = funding.group_by("symbol").agg(pl.col("funding_rate").sum() * 1e4).sort("symbol")
    print("test span funding, sum of the prints (bp):", dict(sums.iter_rows()))


if __name__ == "__main__":
    main()
