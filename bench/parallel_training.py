"""The four experts of one fold under the multiprocess executor: side by side vs one at a time.

    .venv/bin/python bench/parallel_training.py [--timesteps 2048]

Runs the job of `tests/pipeline/models/test_parallel_training.py` (the constructed 200-bar market,
fold 0, tiny networks, one torch thread per step, forkserver step processes) twice on a temporary
instance with the project's `dagster.yaml`: `max_concurrent` 4, then 1. Prints, for each, the run's
wall time, the span from the first training's start to the last one's end (from the event log),
the most trainings at once, and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.pipeline.models import test_parallel_training as job_module  # noqa: E402
from tests.pipeline.models.test_model_assets import _upstream_tables  # noqa: E402


def run(max_concurrent: int, timesteps: int) -> tuple[float, float, int]:
    """(run wall s, first-training-start to last-training-end s, most trainings at once)."""
    tmp = Path(tempfile.mkdtemp(prefix="carry-parallel-"))
    _upstream_tables(tmp / "carry.duckdb", tmp / "windows")
    (tmp / "home").mkdir()
    config = job_module.run_config(tmp / "carry.duckdb", tmp / "models", max_concurrent)
    config["resources"]["model_settings"]["config"]["timesteps"] = timesteps
    with dg.instance_for_test(temp_dir=str(tmp / "home"), overrides=job_module.INSTANCE) as inst:
        t0 = time.perf_counter()
        result = dg.execute_job(
            dg.reconstructable(job_module.expert_job), instance=inst, run_config=config
        )
        wall = time.perf_counter() - t0
        if not result.success:
            raise SystemExit(f"run {result.run_id} failed")
        spans = list(job_module.training_spans(inst, result.run_id).values())
    span = max(e for _, e in spans) - min(s for s, _ in spans)
    return wall, span, job_module.most_at_once(spans)


def main() -> None:
    """Parallel, then serial; print both and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=2048)
    args = parser.parse_args()
    figures = {}
    for n in (4, 1):
        figures[n] = run(n, args.timesteps)
        wall, span, most = figures[n]
        print(
            f"max_concurrent={n}: run {wall:.1f} s, trainings {span:.1f} s first start to last "
            f"end, at most {most} at once",
            flush=True,
        )
    print(
        f"serial / parallel: run {figures[1][0] / figures[4][0]:.2f}x, "
        f"trainings {figures[1][1] / figures[4][1]:.2f}x ({args.timesteps} timesteps each)"
    )


if __name__ == "__main__":
    main()
