"""Does PPO learn to hold the carry trade? The same market at two decision cadences.

    .venv/bin/python bench/cadence.py [--timesteps 600000]

Plain SB3 PPO (default observation, 16 batched envs, [64, 64], one torch thread) is trained on the
simulated 2023 of BTC and ETH and tested from flat on 2024 H1 (the pipeline's env config: auto-add
margin on, anomalies on), once on 8-hour bars (a decision per funding interval, 90-bar episodes =
30 days) and once on 15-minute bars (256-bar episodes, what the experts train on). Beside each:
`long_carry` (a = 1 on every asset every bar) and `flat`, on the test half-year and (PPO and
`long_carry`) in sample on the training year. Printed per run: the equity at the end,
funding, fees, slippage, turnover in multiples of the starting equity, and the policy's mean
action per asset. The question it answers for issue 9: at which cadence does the training
objective reward entering and holding the trade (README, Models stage, "Why the demo agents stay
near flat"). Figures measured in this run; not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecMonitor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carry_env.env import CarryTradeEnv  # noqa: E402
from carry_env.sb3 import SB3VecEnv  # noqa: E402
from carry_env.synthetic import simulate_market  # noqa: E402
from carry_env.vector import CarryTradeVectorEnv  # noqa: E402
from carry_pipeline.lib.env_config import PIPELINE_ENV_CONFIG  # noqa: E402

SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT")
CADENCES = (("8h", 90), ("15m", 256))
"""(bar, episode length in bars) of each run."""
Policy = Callable[[np.ndarray], np.ndarray]


def backtest(market: pl.DataFrame, policy: Policy) -> dict[str, float | np.ndarray]:
    """Run `policy` from flat over the whole `market`; its totals."""
    env = CarryTradeEnv(market, PIPELINE_ENV_CONFIG)
    obs, _ = env.reset(seed=1)
    totals = {"funding_pnl": 0.0, "fees": 0.0, "slippage": 0.0, "turnover": 0.0}
    actions, done, info = [], False, {}
    while not done:
        action = policy(obs)
        obs, _, terminated, truncated, info = env.step(action)
        for key in totals:
            totals[key] += float(np.sum(info[key]))
        actions.append(np.asarray(action, dtype=np.float64))
        done = terminated or truncated
    equity = float(np.ravel(info["equity"])[0])
    return {**totals, "equity": equity, "mean_action": np.mean(actions, axis=0)}


def main() -> None:
    """Train at each cadence and print the backtests."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=600_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cash = PIPELINE_ENV_CONFIG.initial_cash
    for bar, episode in CADENCES:
        train = simulate_market(SYMBOLS, "2023-01-01", "2024-01-01", bar, seed=0)
        test = simulate_market(SYMBOLS, "2024-01-01", "2024-07-01", bar, seed=0)
        config = replace(PIPELINE_ENV_CONFIG, random_start=True, episode_length=episode)
        venv = VecMonitor(SB3VecEnv(CarryTradeVectorEnv(train, config, 16)))
        model = PPO(
            "MlpPolicy", venv, n_steps=64, batch_size=512, n_epochs=4, learning_rate=3e-4,
            policy_kwargs={"net_arch": [64, 64], "log_std_init": -1.0}, seed=0, device="cpu",
        )  # fmt: skip
        t0 = time.perf_counter()
        model.learn(args.timesteps)
        wall = time.perf_counter() - t0
        print(f"{bar} bars, {episode}-bar episodes, {args.timesteps:,} timesteps in {wall:.0f} s:")
        policies: dict[str, Policy] = {
            "ppo": lambda o, m=model: m.predict(o, deterministic=True)[0],
            "long_carry": lambda o: np.ones(len(SYMBOLS), np.float32),
            "flat": lambda o: np.zeros(len(SYMBOLS), np.float32),
        }
        runs = [(span, name) for span in ("test", "train") for name in policies]
        for span, name in runs:
            if span == "train" and name == "flat":
                continue
            r = backtest(test if span == "test" else train, policies[name])
            print(
                f"  {span:<5} {name:<10} equity {r['equity']:>9,.0f}  funding "
                f"{r['funding_pnl']:>7,.0f}  fees {r['fees']:>7,.0f}  slippage "
                f"{r['slippage']:>6,.0f}  turnover {r['turnover'] / cash:5.1f}x  mean action "
                f"{np.round(r['mean_action'], 2)}",
                flush=True,
            )
    funding = simulate_market(SYMBOLS, "2024-01-01", "2024-07-01", "8h", seed=0)
    sums = funding.group_by("symbol").agg(pl.col("funding_rate").sum() * 1e4).sort("symbol")
    print("test span funding, sum of the prints (bp):", dict(sums.iter_rows()))


if __name__ == "__main__":
    main()
