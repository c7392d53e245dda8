"""`carry_env/warmup.py`: the warm-up compiles (or loads) every kernel the pipeline calls."""

from __future__ import annotations

import subprocess
import sys
import time
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


HOLDER = """
import fcntl, sys, time
with open(sys.argv[1], "a") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_warm_up_waits_for_the_one_holding_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `make run` starts a warm-up while pip installs the rest and `carry_pipeline.main` starts
    # another: the second must not compile beside the first, it waits for its lock.
    from carry_env import warmup

    lock = tmp_path / "cache" / "warmup.lock"
    lock.parent.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock), "1.5"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    locked_at = time.perf_counter()
    calls: list[float] = []
    monkeypatch.setattr(warmup, "warm", lambda: calls.append(time.perf_counter()) or 0.25)
    warmup.main(lock_path=lock)
    assert holder.wait(timeout=30) == 0
    assert len(calls) == 1 and calls[0] - locked_at >= 1.2  # only after the holder let go
    out = capsys.readouterr().out
    assert "compiled or loaded in 0.2 s after waiting" in out and "for another warm-up" in out


def test_the_lock_is_free_once_a_warm_up_ends(tmp_path: Path) -> None:
    from carry_env.warmup import compile_lock

    lock = tmp_path / "new" / "warmup.lock"  # its folder is created, as in a fresh clone
    with compile_lock(lock) as waited:
        assert waited < 1.0 and lock.exists()
    with compile_lock(lock) as waited:  # not left held
        assert waited < 1.0
