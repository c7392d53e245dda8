"""Backtest throughput: one policy over 175,000 bars (five years of 15-minute bars) for one symbol
and for six, every mechanism on, the policy's inference time shown apart from the env's.

The env part is the engine step plus the runner's per-step recording (`env_seconds` of
`run_backtest`); the target is under 2 s for six symbols. Each figure is the best of `--repeats`
runs after a warm-up that compiles the kernels.

    python bench/backtest.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

from carry_env import CarryTradeEnv, EnvConfig
from carry_env.synthetic import simulate_market
from carry_pipeline.lib.evaluation.backtest import run_backtest
from carry_pipeline.lib.evaluation.baselines import LongCarry
from carry_pipeline.lib.evaluation.metrics import summarise

BARS = 175_000
SYMBOLS = (
    "BTC/USDT:USDT",
    "ETH/USDT:USDT",
    "SOL/USDT:USDT",
    "BNB/USDT:USDT",
    "XRP/USDT:USDT",
    "DOGE/USDT:USDT",
)
TARGET_ENV_SECONDS = 2.0


def measure(n_symbols: int, repeats: int) -> tuple[float, float, float, int]:
    """(env seconds, policy seconds, metrics seconds, steps) of the best run."""
    start = datetime(2019, 1, 1, tzinfo=UTC)
    frame = simulate_market(SYMBOLS[:n_symbols], start, start + BARS * timedelta(minutes=15), "15m")
    env = CarryTradeEnv(frame, EnvConfig(drawdown_limit=0.0, liquidation_ends_episode=False))
    end = env.market.n_bars - 1
    run_backtest(env, LongCarry(), name="warm-up", start=0, end=100, seed=0)
    best = None
    for _ in range(repeats):
        r = run_backtest(env, LongCarry(), name="long_carry", start=0, end=end, seed=0)
        t0 = time.perf_counter()
        summarise(r)
        m_s = time.perf_counter() - t0
        if best is None or r.env_seconds < best[0]:
            best = (r.env_seconds, r.policy_seconds, m_s, r.n_steps)
    assert best is not None
    return best


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"backtest of LongCarry over {BARS:,} bars of 15 m, every mechanism on")
    for n in (1, 6):
        env_s, pol_s, met_s, steps = measure(n, args.repeats)
        print(
            f"{n} symbol(s): {steps:,} steps, env {env_s:.2f} s "
            f"({steps / env_s / 1e3:.0f}k steps/s, "
            f"{env_s / TARGET_ENV_SECONDS:.2f}x of the {TARGET_ENV_SECONDS:g} s target), "
            f"policy {pol_s:.2f} s, metrics {met_s:.2f} s"
        )


if __name__ == "__main__":
    main()
