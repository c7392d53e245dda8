"""What the `reports` assets compute, from the tables the earlier stages stored (no Dagster here).

- `model_paths`: per model name and fold, the saved folder, from the `models.<expert>` and
  `models.meta_controller` tables.
- `run_walk_forward`: for each fold, on its test span only, the rule baselines, each expert and the
  meta-controller of that fold through `CarryTradeEnv` at `PIPELINE_ENV_CONFIG` (every mechanism
  on: fees, spread, slippage, funding, borrow, margin with isolated auto-add, liquidation, leverage
  limit and the seeded anomalies). A model with no row for a fold is left out of that fold and
  listed in `missing`, so the validity check can name it; a model whose folder or observation does
  not fit fails at once, naming the fold and the model.
- `stress_frames` / `run_stress_report`: the stress scenarios. Injected shocks are applied to the
  last walk-forward fold's test span of the market frame (the latest bars a model of the walk
  forward has not trained on), starting `at` a fraction into it; the policies are the baselines and
  that fold's meta-controller (its anomaly expert's multiplier gives `exposure_cut`), acting on the
  fold's test windows. The window features are those of the unshocked data (the windows are built
  upstream), the env's own observation entries see the shock. The rebuilt real crises carry no
  window features and trade BTC and ETH perps: the meta-controller runs on them (windows zero,
  `window_valid` 0) only when the market trades exactly those symbols, the baselines always.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl

from carry_env import EnvConfig
from carry_env.env import CarryTradeEnv
from carry_env.market import MarketData
from carry_pipeline.lib.env_config import PIPELINE_ENV_CONFIG
from carry_pipeline.lib.evaluation.backtest import Policy
from carry_pipeline.lib.evaluation.policies import (
    EXPERT_WEIGHTS_SCHEMA,
    MetaBacktestPolicy,
    baseline_policies,
    load_expert_policy,
    load_meta_policy,
)
from carry_pipeline.lib.evaluation.stress import (
    STRESS_SCHEMA,
    injected_scenarios,
    real_crises,
    run_stress,
    stress_config,
)
from carry_pipeline.lib.evaluation.walk_forward import (
    Evaluation,
    FoldSpan,
    fold_spans,
    walk_forward,
)
from carry_pipeline.lib.training.observation import WindowSet
from carry_pipeline.lib.training.policy import pinned_threads

INFERENCE_THREADS = 1
"""Torch CPU threads while models decide bar by bar (`pinned_threads`): measured on a loaded 2-core
machine, 1.4 ms a decision with one thread, several times that with torch's default."""


EXPERTS = ("anomaly", "short_term", "long_term", "sentiment")
CANDIDATE = "meta_controller"


def model_paths(tables: Mapping[str, pl.DataFrame]) -> dict[str, dict[int, str]]:
    """Per model name (`anomaly`, ..., `meta_controller`), fold -> saved folder.

    Args:
        tables: the `models.<name>_expert` tables by expert name and `models.meta_controller`
            under `meta_controller`.

    Raises:
        ValueError: a table holds two rows for one fold.
    """
    out: dict[str, dict[int, str]] = {}
    for name, table in tables.items():
        dup = table.group_by("fold").len().filter(pl.col("len") > 1)
        if dup.height:
            raise ValueError(
                f"models.{name}: {dup.height} folds have several rows ({dup['fold'].to_list()})"
            )
        out[name] = {int(r["fold"]): str(r["model_path"]) for r in table.iter_rows(named=True)}
    return out


def fold_windows(training_windows: pl.DataFrame, fold: int, segment: str = "test") -> WindowSet:
    """The fold's windows of `segment` from the `training_windows` manifest.

    Raises:
        ValueError: the manifest has no (or several) rows for the fold and segment.
    """
    rows = training_windows.filter((pl.col("fold") == fold) & (pl.col("segment") == segment))
    if rows.height != 1:
        raise ValueError(
            f"fold {fold}: training_windows has {rows.height} {segment!r} rows, expected 1"
        )
    return WindowSet.from_manifest_row(rows.row(0, named=True))


@dataclass(frozen=True, eq=False)
class FoldPolicies:
    """The named policies of one fold, its meta-controller adapter, and the models it lacks."""

    policies: dict[str, Policy]
    meta: MetaBacktestPolicy | None
    missing: list[str] = field(default_factory=list)


def fold_policies(
    fold: int, paths: Mapping[str, Mapping[int, str]], windows: WindowSet
) -> FoldPolicies:
    """Baselines, then each expert and the meta-controller of `fold` that has a model.

    Raises:
        FileNotFoundError: a listed model folder holds no saved model (naming fold and model).
    """
    policies: dict[str, Policy] = dict(baseline_policies())
    missing: list[str] = []
    for name in EXPERTS:
        path = paths.get(name, {}).get(fold)
        if path is None:
            missing.append(name)
            continue
        policies[name] = load_expert_policy(path, windows, name=name, fold=fold)
    meta = None
    path = paths.get(CANDIDATE, {}).get(fold)
    if path is None:
        missing.append(CANDIDATE)
    else:
        meta = load_meta_policy(path, windows, fold=fold)
        policies[CANDIDATE] = meta
    return FoldPolicies(policies, meta, missing)


@dataclass(frozen=True, eq=False)
class WalkForwardRun:
    """`walk_forward`'s tables, the meta-controller's gating weights, what was missing, timings."""

    spans: list[FoldSpan]
    evaluation: Evaluation
    expert_weights: pl.DataFrame
    missing: dict[int, list[str]]
    seconds: float


def run_walk_forward(
    market: MarketData,
    walk_forward_folds: pl.DataFrame,
    training_windows: pl.DataFrame,
    paths: Mapping[str, Mapping[int, str]],
    *,
    seed: int,
    config: EnvConfig | None = None,
) -> WalkForwardRun:
    """Every fold's policies on its test span (module docstring).

    Raises:
        ValueError: no folds, a fold without test windows or with an empty test span, or a model
            that does not fit the env; the message names the fold (and model).
    """
    started = time.perf_counter()
    spans = fold_spans(walk_forward_folds)
    env = CarryTradeEnv(market, config or PIPELINE_ENV_CONFIG)
    per_fold = {
        s.fold: fold_policies(s.fold, paths, fold_windows(training_windows, s.fold)) for s in spans
    }
    with pinned_threads(INFERENCE_THREADS):
        ev = walk_forward(env, spans, {f: p.policies for f, p in per_fold.items()}, seed=seed)
    weights = [p.meta.weights_frame() for p in per_fold.values() if p.meta is not None]
    return WalkForwardRun(
        spans=spans,
        evaluation=ev,
        expert_weights=pl.concat(weights)
        if weights
        else pl.DataFrame(schema=EXPERT_WEIGHTS_SCHEMA),
        missing={f: p.missing for f, p in per_fold.items() if p.missing},
        seconds=time.perf_counter() - started,
    )


def stress_base(market_frame: pl.DataFrame, span: FoldSpan) -> pl.DataFrame:
    """The rows of the market frame in the span's test window `[test_start, test_end)`.

    Raises:
        ValueError: no bar falls in it.
    """
    base = market_frame.filter(
        (pl.col("ts") >= span.test_start) & (pl.col("ts") < span.test_end)
    ).sort("ts", "symbol")
    if base.height == 0:
        raise ValueError(f"fold {span.fold}: no market bar in its test span for the stress base")
    return base


def shock_start(base: pl.DataFrame, at: float) -> datetime:
    """The bar `at` (a fraction in (0, 1)) into the base frame, never its first bar."""
    if not 0.0 < at < 1.0:
        raise ValueError(f"stress_at={at} must be in (0, 1)")
    ts = base.get_column("ts").unique().sort()
    return ts[max(1, int(at * ts.len()))]  # type: ignore[no-any-return]


@dataclass(frozen=True, eq=False)
class StressRun:
    """`STRESS_SCHEMA` rows, the base span and which scenarios ran without the models."""

    rows: pl.DataFrame
    span: FoldSpan
    shock_start: datetime
    models_skipped: list[str]
    seconds: float


def run_stress_report(
    market_frame: pl.DataFrame,
    span: FoldSpan,
    meta: MetaBacktestPolicy | None,
    *,
    seed: int,
    at: float,
    crises: bool,
    config: EnvConfig | None = None,
) -> StressRun:
    """The baselines and the fold's meta-controller on every scenario (module docstring)."""
    started = time.perf_counter()
    cfg = stress_config(config)
    base = stress_base(market_frame, span)
    start = shock_start(base, at)

    def policies(with_model: bool) -> tuple[dict[str, Policy], dict]:
        named: dict[str, Policy] = dict(baseline_policies())
        if meta is None or not with_model:
            return named, {}
        named[CANDIDATE] = meta
        return named, {CANDIDATE: lambda obs, act: meta.multiplier}

    named, exposure = policies(True)
    skipped: list[str] = []
    with pinned_threads(INFERENCE_THREADS):
        scenarios = injected_scenarios(base, start)
        parts = [run_stress(named, scenarios, cfg, seed=seed, exposure=exposure)]
        if crises:
            for sc in real_crises():
                fits = meta is not None and tuple(meta.windows.symbols) == tuple(
                    MarketData.from_frame(sc.frame).symbols
                )
                if not fits or meta is None:
                    skipped.append(sc.name)
                named, exposure = policies(fits)
                parts.append(run_stress(named, [sc], cfg, seed=seed, exposure=exposure))
    rows = pl.concat(parts) if parts else pl.DataFrame(schema=STRESS_SCHEMA)
    return StressRun(rows, span, start, skipped, time.perf_counter() - started)
