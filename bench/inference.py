"""Inference cost per decision: building an expert's observation and acting on it, at 16 envs.

    make run    # first: the demo's DuckDB file and training windows
    .venv/bin/python bench/inference.py [--duckdb data/carry.duckdb] [--fold 0] [--batch 16]

Every frozen expert pays both on every bar it decides (backtest, validation rollouts, paper), and
the meta-controller's training pays them for its four experts at each decision and for the
anomaly expert on every held bar (the risk overlay). For each expert's default spec on one fold of
`make run`'s data this prints, measured in this run on one torch thread:

- `ObservationBuilder.build` against `reference_windows`, the three-pass gather it replaced (rows,
  then features, then a transpose into a contiguous copy), both on the same bars, with a check that
  their windows are equal;
- `policy.eval_predict` against stable-baselines3's own `model.predict` on the same observation,
  with a check that their actions are equal (a model trained for 512 steps: the cost does not
  depend on the weights).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from full_profile import demo_folds  # noqa: E402

from carry_env.config import EnvConfig  # noqa: E402
from carry_env.vector import CarryTradeVectorEnv  # noqa: E402
from carry_pipeline.lib.training.observation import ObservationBuilder  # noqa: E402
from carry_pipeline.lib.training.policy import eval_predict, load_expert  # noqa: E402
from carry_pipeline.lib.training.specs import EXPERT_SPECS  # noqa: E402
from carry_pipeline.lib.training.train import train_expert  # noqa: E402


def reference_windows(builder: ObservationBuilder, bars: np.ndarray) -> np.ndarray:
    """The `(B, S, R, F)` windows as the builder gathered them before its one-step gather."""
    rows = builder.rows[bars]
    win = np.asarray(builder.windows.values[rows.reshape(-1)])  # (B*R, S, F)
    win = win[:, :, builder.feature_idx].reshape(bars.shape[0], rows.shape[1], win.shape[1], -1)
    win = np.ascontiguousarray(win.transpose(0, 2, 1, 3), dtype=np.float32)
    win *= builder.valid[bars][:, None, None, None]
    return win


def per_call_ms(call: Callable[[], object], seconds: float = 0.5) -> float:
    """Best of three timings of `call`, each repeated for about `seconds`, in ms per call."""
    call()
    t0 = time.perf_counter()
    call()
    n = max(1, int(seconds / max(time.perf_counter() - t0, 1e-7)))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e3


def main() -> None:
    """Measure each expert's observation build and decision on one fold and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duckdb", type=Path, default=Path("data/carry.duckdb"))
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    inputs, folds = demo_folds(args.duckdb)
    data = next(f for f in folds if f.fold.fold == args.fold)
    env = CarryTradeVectorEnv(data.market, EnvConfig(), args.batch)
    env_obs, _ = env.reset(seed=0)
    bars = np.random.default_rng(0).integers(0, data.market.n_bars, args.batch)
    root = Path(tempfile.mkdtemp(prefix="carry-inference-"))
    print(
        f"fold {args.fold}: {data.market.n_bars} bars x {data.market.n_symbols} symbols, "
        f"{args.batch} envs, 1 torch thread (ms per call, best of 3)"
    )
    header = ("expert", "build", "3-pass", "ratio", "act", "SB3", "ratio")
    print("  {:<11} {:>7} {:>7} {:>6}   {:>7} {:>7} {:>6}".format(*header))
    for name, spec in EXPERT_SPECS.items():
        builder = ObservationBuilder(
            data.windows, spec.observation, data.market.ts, env.observation_names,
            data.market.symbols,
        )  # fmt: skip
        obs = builder.build(env_obs, bars)
        if not np.array_equal(obs["window"], reference_windows(builder, bars)):
            raise SystemExit(f"{name}: the one-step gather differs from the three-pass one")
        build = per_call_ms(partial(builder.build, env_obs, bars))
        three = per_call_ms(partial(reference_windows, builder, bars))
        record = train_expert(
            spec, data.market, data.windows, data.fold, models_root=root,
            stats=inputs["normalisation_stats"], timesteps=512,
        )  # fmt: skip
        model = load_expert(record.model_path).model
        line = f"  {name:<11} {build:7.3f} {three:7.3f} {three / build:5.1f}x"
        if spec.algorithm != "PPO":  # recurrent and masked experts take SB3's own predict
            print(f"{line}   ({spec.algorithm}: SB3's predict)")
            continue
        if not np.array_equal(eval_predict(model, obs), model.predict(obs, deterministic=True)[0]):
            raise SystemExit(f"{name}: eval_predict differs from SB3's predict")
        act = per_call_ms(partial(eval_predict, model, obs))
        sb3 = per_call_ms(partial(model.predict, obs, deterministic=True))
        print(f"{line}   {act:7.3f} {sb3:7.3f} {sb3 / act:5.1f}x")


if __name__ == "__main__":
    main()
