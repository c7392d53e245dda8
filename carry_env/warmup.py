"""Compile carry_env's numba kernels into their on-disk cache ahead of first use.

`python -m carry_env.warmup` steps the batched env, its discrete form (action masks), the single
env and the single env on the split path (an injected executor between planning and applying, the
paper trader's path: `plan_batch`, the planned orders, `apply_batch`) on two days of the simulated
market, and prices one leg (`kernel.leg_costs`, which the buy-and-hold baseline calls), so
every `cache=True` kernel that training, backtests and paper trading call is compiled once and
written to `carry_env/__pycache__`; later processes load the machine code instead of compiling. A
fresh clone has no cache: `make run` starts this in a background process as soon as numpy, numba,
gymnasium and polars are installed, so the compile runs on the second core while pip installs the
rest and then while ingestion runs; `carry_pipeline.main` starts one too. Each warm-up holds an
exclusive lock on `carry_env/__pycache__/warmup.lock` while it compiles, so a second one waits for
the first and then only loads what it wrote.

Kernels are compiled per argument types, and the arrays here have the dtypes the pipeline passes
(float64 market and state arrays, float32 actions), so the entries match; a process that needs a
kernel before the warm-up has written it compiles it itself, as it would without the warm-up.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from carry_env import kernel
from carry_env.config import EnvConfig
from carry_env.discrete import CarryTradeDiscreteVectorEnv
from carry_env.env import CarryTradeEnv
from carry_env.feeds import SimExecutor
from carry_env.market import MarketData
from carry_env.synthetic import simulate_market
from carry_env.vector import CarryTradeVectorEnv

STEPS = 8
"""Steps of each env: enough to trade, settle funding and hit the rebalance band."""
LOCK_PATH = Path(__file__).resolve().parent / "__pycache__" / "warmup.lock"
"""The file a warm-up locks while it compiles (beside the cache it writes)."""


class _SplitSimExecutor(SimExecutor):
    # The simulated fills, run on the split path (the env fuses only a `fused` executor).
    fused = False


def warm(steps: int = STEPS) -> float:
    """Compile (or load) every cached kernel; return the seconds it took."""
    t0 = time.perf_counter()
    market = MarketData.from_frame(simulate_market(start="2024-01-01", end="2024-01-03"))
    config = EnvConfig(random_start=True, episode_length=steps * 2)
    actions = np.linspace(-1.0, 1.0, market.n_symbols, dtype=np.float32)
    vec = CarryTradeVectorEnv(market, config, num_envs=2)
    vec.reset(seed=0)
    for i in range(steps):
        vec.step(np.stack([actions * (-1) ** i, -actions]))
    vec.engine.orders()  # the quotes of an injected executor (the paper trader's)
    discrete = CarryTradeDiscreteVectorEnv(market, config, num_envs=2)
    discrete.reset(seed=0)
    for _ in range(steps):
        mask = discrete.action_masks()
        discrete.step(np.argmax(mask, axis=1))
    single = CarryTradeEnv(market, config)
    single.reset(seed=0)
    for i in range(steps):
        single.step(actions * (-1) ** i)
    split = CarryTradeEnv(market, config, executor=_SplitSimExecutor(single.engine.cfg))
    split.reset(seed=0)
    for i in range(steps):
        split.step(actions * (-1) ** i)
    kernel.leg_costs(1_000.0, 1e6, 1.0, 0.0, 5e-4, single.engine.cfg)
    return time.perf_counter() - t0


@contextmanager
def compile_lock(path: Path = LOCK_PATH) -> Iterator[float]:
    """Hold an exclusive `flock` on `path` (created, with its folder, if missing) for the block;
    yields the seconds spent waiting for another holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        t0 = time.perf_counter()
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - t0
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main(lock_path: Path = LOCK_PATH) -> None:
    """Warm the cache under the lock at `lock_path` and say how long it took."""
    with compile_lock(lock_path) as waited:
        seconds = warm()
    after = f" after waiting {waited:.0f} s for another warm-up" if waited >= 1 else ""
    print(f"carry_env kernels compiled or loaded in {seconds:.1f} s{after}", flush=True)


if __name__ == "__main__":
    main()
