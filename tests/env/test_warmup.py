"""`carry_env/warmup.py`: the warm-up compiles (or loads) every kernel the pipeline calls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The kernels `make run` calls from Python (the others are inlined into these, or called by them
# and cached with them, so a cache hit registers no signature of theirs): the batched and single
# env step, the reset observation, the discrete action masks, the split path of an injected
# executor (paper trading: plan, quotes, apply) and the one-leg costs of the buy-and-hold
# baseline.
PIPELINE_KERNELS = (
    "_step_serial",
    "reset_obs_batch",
    "single_asset_masks",
    "plan_batch",
    "quotes_batch",
    "apply_batch",
    "leg_costs",
)


@pytest.mark.slow
def test_warm_up_compiles_every_kernel_the_pipeline_calls() -> None:
    # In a fresh process, so kernels other tests compiled in this one do not count: a dispatcher
    # has a signature only once the warm-up called it (compiled, or loaded from the cache).
    code = (
        "from carry_env import kernel; from carry_env.warmup import warm; warm(steps=2); "
        f"print([n for n in {PIPELINE_KERNELS!r} if not getattr(kernel, n).signatures])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
