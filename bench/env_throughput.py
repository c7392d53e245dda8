"""Env throughput, measured in one run: CartPole-v1 vs CarryTrade-v1 (single) and the batched env.

Prints steps/s of CartPole-v1 and of the single carry env with every mechanism on (both through
`gym.make`, so both pay gymnasium's wrappers; the unwrapped figures too), env-steps/s of the batched
env for B = 1, 64, 1024, 16384 (and B = 1024 on one thread, a figure a loaded machine disturbs
less than the two-thread one), and the ratios to the targets (single >= 1.0x CartPole; batched >=
10M env-steps/s at B = 1024). Beside each batched figure: the kernel alone (`Engine.step`, the
numba call with no gymnasium layer; ended envs are reset outside the timing) and the share of it
the full `step` keeps, which shows where the time goes, and `step_arrays` (the path `SB3VecEnv`
takes: no batch-wide info). Each figure is the best of three timed repeats, after a warm-up that
also compiles the kernels. It measures the `carry_env` of the checkout it sits in (not whichever one
the virtual environment has installed), and prints the load average: the parallel figures need an
idle machine.

    python bench/env_throughput.py [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import gymnasium as gym
import numpy as np

# `python bench/env_throughput.py` puts bench/ first on sys.path, so carry_env would otherwise come
# from the editable install, which may be another checkout (a worktree measured main's kernel).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import carry_env  # noqa: E402 - registers the env ids
from carry_env import EnvConfig, MarketData  # noqa: E402
from carry_env.synthetic import simulate_market  # noqa: E402
from carry_env.vector import CarryTradeVectorEnv  # noqa: E402

BATCH_SIZES = (1, 64, 1024, 16384)
SERIAL_CHECK = 1024
"""Also measured on one thread (`parallel=False`)."""
TARGET_BATCHED = 10_000_000.0


def single_rate(env: gym.Env, actions: list, seconds: float) -> float:
    """Steps per second of `env` over about `seconds`, resetting when an episode ends."""
    env.reset(seed=0)
    n, k = 0, len(actions)
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(1_000):
            _, _, terminated, truncated, _ = env.step(actions[n % k])
            n += 1
            if terminated or truncated:
                env.reset()
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - t0)


def batched_rate(venv: CarryTradeVectorEnv, actions: np.ndarray, seconds: float) -> float:
    """Env-steps per second of the batched env over about `seconds`."""
    venv.reset(seed=0)
    steps = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        venv.step(actions)
        steps += 1
        now = time.perf_counter()
        if now >= deadline:
            return steps * venv.num_envs / (now - t0)


def lean_rate(venv: CarryTradeVectorEnv, actions: np.ndarray, seconds: float) -> float:
    """Env-steps per second of `venv.step_arrays` (the SB3 adapter's path) over about `seconds`."""
    venv.reset(seed=0)
    steps = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        venv.step_arrays(actions)
        steps += 1
        now = time.perf_counter()
        if now >= deadline:
            return steps * venv.num_envs / (now - t0)


def kernel_rate(venv: CarryTradeVectorEnv, actions: np.ndarray, seconds: float) -> float:
    """Env-steps per second of the kernel alone (`Engine.step`) on `venv`'s envs; envs that end
    are reset between timed calls, so every timed call steps the whole batch."""
    venv.reset(seed=0)
    eng = venv.engine
    eng.act[:] = actions
    steps, spent = 0, 0.0
    while spent < seconds:
        t0 = time.perf_counter()
        for _ in range(10):
            eng.step()
        spent += time.perf_counter() - t0
        steps += 10
        ended = np.flatnonzero(eng.term | eng.trunc)
        if ended.size:
            eng.reset_envs(ended, [np.random.default_rng(b) for b in ended.tolist()])
    return steps * venv.num_envs / spent


def best_of(fn, repeats: int = 3) -> float:
    """Best rate of `repeats` runs (the machine is shared: the best run is the least disturbed)."""
    return max(fn() for _ in range(repeats))


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one timed repeat")
    args = parser.parse_args()
    sec = args.seconds
    start = datetime(2023, 1, 1, tzinfo=UTC)
    frame = simulate_market(("BTC/USDT:USDT",), start, start + timedelta(days=365), "15m", seed=1)
    market = MarketData.from_frame(frame)
    config = (
        EnvConfig()
    )  # every mechanism on: fees, spread, slippage, funding, borrow, margin, anomalies
    rng = np.random.default_rng(0)
    carry_actions = [rng.uniform(-1, 1, 1).astype(np.float32) for _ in range(4_096)]
    cart_actions = [int(x) for x in rng.integers(0, 2, 4_096)]

    print(
        f"env throughput — {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; market: "
        f"{market.n_bars} bars x {market.n_symbols} symbol, 15 min; best of 3 x {sec:g} s"
    )
    cart = gym.make("CartPole-v1")
    carry = gym.make("carry_env/CarryTrade-v1", market=market, config=config)
    single_rate(carry, carry_actions, 0.2)  # warm-up: compiles the kernel
    r_cart = best_of(lambda: single_rate(cart, cart_actions, sec))
    r_carry = best_of(lambda: single_rate(carry, carry_actions, sec))
    r_cart_raw = best_of(lambda: single_rate(cart.unwrapped, cart_actions, sec))
    r_carry_raw = best_of(lambda: single_rate(carry.unwrapped, carry_actions, sec))
    print(f"{'CartPole-v1 (gym.make)':<38}{r_cart:>14,.0f} steps/s")
    print(
        f"{'CarryTrade-v1 (gym.make, all on)':<38}{r_carry:>14,.0f} steps/s   "
        f"ratio {r_carry / r_cart:.2f}x "
        f"CartPole (target >= 1.0x)"
    )
    print(f"{'CartPole-v1 (unwrapped)':<38}{r_cart_raw:>14,.0f} steps/s")
    print(
        f"{'CarryTrade-v1 (unwrapped, all on)':<38}{r_carry_raw:>14,.0f} steps/s   ratio "
        f"{r_carry_raw / r_cart_raw:.2f}x"
    )
    batched_config = EnvConfig(random_start=True)  # envs spread over the year, as in training
    runs = [(b, None) for b in BATCH_SIZES] + [(SERIAL_CHECK, False)]
    for b, parallel in runs:
        venv = CarryTradeVectorEnv(market, batched_config, b, parallel=parallel)
        actions = rng.uniform(-1, 1, (b, 1))
        batched_rate(venv, actions, 0.2)  # warm-up
        rate = best_of(lambda venv=venv, actions=actions: batched_rate(venv, actions, sec))
        lean = best_of(lambda venv=venv, actions=actions: lean_rate(venv, actions, sec))
        kernel = best_of(lambda venv=venv, actions=actions: kernel_rate(venv, actions, sec))
        note = (
            f"   {rate / TARGET_BATCHED:.2f}x the 10M target"
            if b == 1024 and parallel is None
            else ""
        )
        mode = "parallel" if venv.engine._kernel is carry_env.kernel._step_parallel else "serial"
        print(
            f"{f'batched B={b} ({mode})':<38}{rate:>14,.0f} env-steps/s   "
            f"{rate / r_cart:,.1f}x CartPole{note}"
        )
        print(
            f"{'  step_arrays (SB3 path)':<38}{lean:>14,.0f} env-steps/s   "
            f"{lean / kernel:.2f} of the kernel's"
        )
        print(
            f"{'  kernel alone (Engine.step)':<38}{kernel:>14,.0f} env-steps/s   "
            f"step keeps {rate / kernel:.2f} of it"
        )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
