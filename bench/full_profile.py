"""How long the `full` training profile takes here: measured marginal fps per model, extrapolated.

    make run    # first: the demo's DuckDB file and training windows
    .venv/bin/python bench/full_profile.py [--duckdb data/carry.duckdb] [--fold 0]

Trains each expert (its default spec, the pipeline's env config) and then the meta-controller over
them on one fold of `make run`'s data, twice: at `--small` and at `--large` timesteps, into a
temporary models folder (`data/models` is not touched). The difference of the two learning walls
gives each model's marginal fps (setup, warm start and the first rollout cancel out); the rest of a
training call (validation rollout, saving) is its fixed cost. The `full` profile's timesteps over
that fps, plus the fixed cost, is the estimate per model and fold, printed with the total for one
fold and for every fold of the DuckDB file's `walk_forward_folds`, one model after another on one
torch thread (`make run`'s in-process executor). Figures measured in this run; not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carry_pipeline.defs.models.assets import GATED, UPSTREAM  # noqa: E402
from carry_pipeline.lib.duckdb_lock import connect  # noqa: E402
from carry_pipeline.lib.training.meta import MetaSpec, train_meta_controller  # noqa: E402
from carry_pipeline.lib.training.registry import FoldData, fold_inputs, market_data  # noqa: E402
from carry_pipeline.lib.training.specs import EXPERT_SPECS  # noqa: E402
from carry_pipeline.lib.training.train import TrainingRecord, train_expert  # noqa: E402

TABLES = {arg: ".".join(key.path) for arg, key in UPSTREAM.items()}
"""The stage tables the model assets read (their inputs), as `schema.table`."""


@dataclass(frozen=True)
class Rate:
    """One model's measured training speed."""

    name: str
    full_timesteps: int
    marginal_fps: float
    fixed_s: float
    """Seconds of a training call outside PPO's learning (validation, saving)."""

    @property
    def full_seconds(self) -> float:
        """Estimated seconds of one `full` training of this model on one fold."""
        return self.full_timesteps / self.marginal_fps + self.fixed_s


def read_tables(path: Path) -> dict[str, pl.DataFrame]:
    """The stage tables the model assets read, from the DuckDB file at `path`."""
    with connect(path, read_only=True) as con:
        return {arg: con.sql(f"select * from {table}").pl() for arg, table in TABLES.items()}


def demo_folds(path: Path) -> tuple[dict[str, pl.DataFrame], list[FoldData]]:
    """The stage tables of `make run`'s DuckDB file at `path` and every fold's training inputs
    (the walk-forward folds and the latest window); exits saying so when the file is missing."""
    if not path.exists():
        raise SystemExit(f"{path} does not exist: run `make run` first")
    inputs = read_tables(path)
    market = market_data(
        inputs["market_bars"], inputs["carry_features"], inputs["sentiment_windows"]
    )
    return inputs, fold_inputs(market, inputs["walk_forward_folds"], inputs["training_windows"])


def timed(train: Callable[[int], TrainingRecord], steps: int) -> tuple[TrainingRecord, float]:
    """(record, wall seconds of the whole call) of `train(steps)`."""
    t0 = time.perf_counter()
    record = train(steps)
    return record, time.perf_counter() - t0


def measure(
    name: str, full: int, train: Callable[[int], TrainingRecord], small: int, large: int
) -> Rate:
    """Marginal fps and fixed cost of `train` from a `small` and a `large` training."""
    rec_s, call_s = timed(train, small)
    rec_l, call_l = timed(train, large)
    if rec_l.timesteps <= rec_s.timesteps:
        raise SystemExit(
            f"{name}: --large {large} trained {rec_l.timesteps} steps, no more than --small "
            f"{small} ({rec_s.timesteps}; PPO rounds up to whole rollouts): raise --large"
        )
    fps = (rec_l.timesteps - rec_s.timesteps) / max(rec_l.wall_seconds - rec_s.wall_seconds, 1e-9)
    fixed = call_l - rec_l.wall_seconds
    print(
        f"  {name:<11} {small:>6} steps {rec_s.wall_seconds:6.1f} s, {large:>6} steps "
        f"{rec_l.wall_seconds:6.1f} s of learning -> {fps:6,.0f} fps marginal; "
        f"fixed {fixed:5.1f} s",
        flush=True,
    )
    return Rate(name, full, fps, fixed)


def main() -> None:
    """Measure each model on one fold and print the extrapolation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duckdb", type=Path, default=Path("data/carry.duckdb"))
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--small", type=int, default=2_048)
    parser.add_argument("--large", type=int, default=34_816)
    args = parser.parse_args()
    torch.set_num_threads(1)
    inputs, folds = demo_folds(args.duckdb)
    data: FoldData = next(f for f in folds if f.fold.fold == args.fold)
    stats = inputs["normalisation_stats"]
    root = Path(tempfile.mkdtemp(prefix="carry-full-profile-"))
    print(
        f"fold {args.fold}: {data.market.n_bars} train bars x {data.market.n_symbols} symbols, "
        f"{len(folds)} trainings per model in {args.duckdb}; 1 torch thread, device "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}",
        flush=True,
    )
    rates, paths = [], {}
    for name, spec in EXPERT_SPECS.items():

        def train(steps: int, spec=spec) -> TrainingRecord:  # noqa: ANN001
            return train_expert(
                spec, data.market, data.windows, data.fold, models_root=root, stats=stats,
                timesteps=steps,
            )  # fmt: skip

        rates.append(measure(name, spec.total_timesteps("full"), train, args.small, args.large))
        paths[name] = root / name / data.fold.name
    meta = MetaSpec()

    def train_meta(steps: int) -> TrainingRecord:
        return train_meta_controller(
            meta, {k: paths[k] for k in GATED}, data.market, data.windows, data.fold,
            models_root=root, anomaly=paths["anomaly"], stats=stats, timesteps=steps,
        )  # fmt: skip

    rates.append(measure("meta", meta.total_timesteps("full"), train_meta, args.small, args.large))
    print("full profile, extrapolated (one fold, one model after another, 1 thread):")
    for r in rates:
        print(f"  {r.name:<11} {r.full_timesteps:>9,} steps  {r.full_seconds / 60:7.1f} min")
    per_fold = sum(r.full_seconds for r in rates)
    print(f"  one fold: {per_fold / 3600:.2f} h; all {len(folds)} (the walk-forward folds and the "
          f"latest window): {per_fold * len(folds) / 3600:.2f} h")  # fmt: skip


if __name__ == "__main__":
    main()
