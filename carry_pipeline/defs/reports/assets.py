"""Reports assets (DuckDB schema `reports`): `walk_forward_backtest`, `stress_test_report`,
`backtest_report` and `champion_model`.

- `walk_forward_backtest` is one op (a multi-asset) writing five tables, because one set of
  backtests produces all of them: `reports.backtest_metrics` (fold x policy rows, then per policy
  the mean over folds and the worst fold), `reports.equity_curves` (per bar), `reports.trades`
  (every fill), `reports.positions` (per bar and symbol) and `reports.expert_weights` (the
  meta-controller's gating). Each is its own asset, so downstream assets depend on what they read.
  Its blocking check `backtest_evidence_valid` (on `backtest_metrics`) runs in the same op: when
  the evidence cannot be judged (a fold without a model, non-finite metrics, a backtest that does
  not cover its test span, no latest-window model) the run fails naming the fold and the cause,
  and the report and the promotion downstream are skipped.
- `stress_test_report`: the stress scenarios (`lib.evaluation.stage`), one row per scenario and
  policy.
- `backtest_report`: PNGs and `report.md` under `<reports_root>/<run_id>/`, with the promotion
  decision; the same plots embedded in the materialisation's Markdown metadata, and the key
  figures as float metadata (plotted across retrains).
- `champion_model`: the promotion decision (`lib.evaluation.promotion.decide`). The latest
  window's meta-controller becomes champion (a new row of the append-only `models.champion`) only
  when every condition passes; otherwise the previous champion stays and the run still succeeds,
  the metadata naming the failed conditions with their figures. A promoted meta-controller and the
  experts it gates are first copied into `<models_root>/champions/<champion>/`
  (`lib.evaluation.champion.install_champion`), and the row names that copy: the next retrain
  overwrites the training folders whether it promotes or not. `promoted` and `champion_id` in the
  metadata tell a sensor whether this materialisation changed the champion.
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext
from dagster_duckdb import DuckDBResource

from carry_pipeline.defs.models.resources import ModelSettings
from carry_pipeline.defs.reports.resources import ReportSettings
from carry_pipeline.lib.evaluation.champion import (
    champion_row,
    current_champion,
    promote_champion,
)
from carry_pipeline.lib.evaluation.policies import BASELINES
from carry_pipeline.lib.evaluation.promotion import (
    ValidityFailure,
    decide,
    validity_failures,
)
from carry_pipeline.lib.evaluation.report import metadata_markdown, render_report
from carry_pipeline.lib.evaluation.stage import (
    CANDIDATE,
    EXPERTS,
    fold_policies,
    fold_windows,
    model_paths,
    run_stress_report,
    run_walk_forward,
)
from carry_pipeline.lib.evaluation.walk_forward import fold_spans
from carry_pipeline.lib.features.pipeline import build_market_frame
from carry_pipeline.lib.training.registry import market_data

SCHEMA = "reports"
GROUP = "reports"
POOL = "duckdb"
FEATURES = {
    "market_bars": dg.AssetKey(["features", "market_bars"]),
    "carry_features": dg.AssetKey(["features", "carry_features"]),
    "sentiment_windows": dg.AssetKey(["features", "sentiment_windows"]),
}
DATASETS = {
    "walk_forward_folds": dg.AssetKey(["datasets", "walk_forward_folds"]),
    "training_windows": dg.AssetKey(["datasets", "training_windows"]),
}
MODELS = {
    **{f"{n}_expert": dg.AssetKey(["models", f"{n}_expert"]) for n in EXPERTS},
    "meta_controller": dg.AssetKey(["models", "meta_controller"]),
}
TABLES = {
    "backtest_metrics": "One row per fold x policy on the fold's test span, then per policy the "
    "mean over folds and the worst fold (metric definitions: lib.evaluation.metrics).",
    "equity_curves": "Per fold, policy and bar: equity and every cash flow of the env's info.",
    "trades": "Every fill (both legs: quantity, price, fee, slippage) and every forced close.",
    "positions": "Per fold, policy, bar and symbol: action, legs, marks and the asset's P&L.",
    "expert_weights": "The meta-controller's gating weight per option and its exposure "
    "multiplier at every decision of each fold's test span.",
}
KEYS = {name: dg.AssetKey([SCHEMA, name]) for name in TABLES}
METRICS_KEY = KEYS["backtest_metrics"]
VALIDITY_CHECK = "backtest_evidence_valid"
CHAMPION_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(days=14, hours=6), warn_window=timedelta(days=7, hours=6)
)
"""`weekly_retrain_schedule` re-decides the champion every Monday at 03:00 UTC (a kept champion is
a materialisation too): older than a week and 6 h is one missed retrain (WARN), two weeks (FAIL)."""


@contextmanager
def failing_for(what: str) -> Iterator[None]:
    """Turn a lib `ValueError` / `FileNotFoundError` into a non-retried `dg.Failure`."""
    try:
        yield
    except (ValueError, FileNotFoundError) as exc:
        raise dg.Failure(description=f"{what}: {exc}", allow_retries=False) from exc


def _paths(inputs: dict[str, pl.DataFrame]) -> dict[str, dict[int, str]]:
    return model_paths({arg.removesuffix("_expert"): inputs[arg] for arg in MODELS})


def _latest_fold(folds: pl.DataFrame) -> int | None:
    latest = folds.filter(pl.col("is_latest"))
    return int(latest["fold"][0]) if latest.height else None


def evidence_failures(
    run: Any, folds: pl.DataFrame, paths: dict[str, dict[int, str]], bar: timedelta
) -> list[ValidityFailure]:
    """`validity_failures` of the walk forward, plus a missing latest-window candidate (the model
    a promotion would install)."""
    ev = run.evaluation
    out = validity_failures(
        run.spans,
        {s.fold: paths.get(CANDIDATE, {}).get(s.fold) for s in run.spans},
        ev.metrics,
        ev.equity_curves.filter(pl.col("policy") == CANDIDATE),
        bar=bar,
    )
    latest = _latest_fold(folds)
    if latest is None or latest not in paths.get(CANDIDATE, {}):
        out.append(ValidityFailure(latest, f"no latest-window model for {CANDIDATE!r} to promote"))
    return out


def trades_and_fees_markdown(metrics: pl.DataFrame) -> str:
    """Per fold and policy: total return, fills (trade count), fees, slippage and funding."""
    rows = metrics.filter(pl.col("aggregate") == "fold")
    lines = [
        "| fold | policy | total return | fills | fees | slippage | funding |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows.iter_rows(named=True):
        lines.append(
            f"| {r['fold']} | {r['policy']} | {r['total_return']:.4%} | {r['fills']:.0f} | "
            f"{r['fees']:.2f} | {r['slippage']:.2f} | {r['funding']:.2f} |"
        )
    return "\n".join(lines)


@dg.multi_asset(
    name="walk_forward_backtest",
    group_name=GROUP,
    outs={
        name: dg.AssetOut(key=KEYS[name], description=text, kinds={"duckdb", "polars"})
        for name, text in TABLES.items()
    },
    ins={arg: dg.AssetIn(key=key) for arg, key in {**FEATURES, **DATASETS, **MODELS}.items()},
    check_specs=[
        dg.AssetCheckSpec(
            VALIDITY_CHECK,
            asset=METRICS_KEY,
            blocking=True,
            description="Every fold has a model and finite metrics, the candidate's backtest "
            "covers each test span, and the latest window has a candidate to promote.",
        )
    ],
    pool=POOL,
)
def walk_forward_backtest(
    context: AssetExecutionContext, report_settings: ReportSettings, **inputs: pl.DataFrame
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Each fold's baselines, experts and meta-controller on its test span (module docstring)."""
    with failing_for("walk_forward_backtest"):
        market = market_data(
            inputs["market_bars"], inputs["carry_features"], inputs["sentiment_windows"]
        )
        paths = _paths(inputs)
        run = run_walk_forward(
            market,
            inputs["walk_forward_folds"],
            inputs["training_windows"],
            paths,
            seed=report_settings.seed,
        )
    ev = run.evaluation
    for fold, names in run.missing.items():
        context.log.warning(f"fold {fold}: no model for {names}; left out of its backtest")
    env_s = sum(r.env_seconds for r in ev.results.values())
    policy_s = sum(r.policy_seconds for r in ev.results.values())
    context.log.info(
        f"walk_forward_backtest: {len(ev.results)} backtests over {len(run.spans)} folds in "
        f"{run.seconds:.1f} s (env {env_s:.1f} s, policies {policy_s:.1f} s)"
    )
    yield dg.Output(
        ev.metrics,
        output_name="backtest_metrics",
        metadata={
            "folds": len(run.spans),
            "backtests": len(ev.results),
            "wall_seconds": run.seconds,
            "env_seconds": env_s,
            "policy_seconds": policy_s,
            "returns_trades_fees": dg.MetadataValue.md(trades_and_fees_markdown(ev.metrics)),
        },
    )
    yield dg.Output(ev.equity_curves, output_name="equity_curves")
    yield dg.Output(ev.trades, output_name="trades", metadata={"fills": ev.trades.height})
    yield dg.Output(ev.positions, output_name="positions")
    yield dg.Output(run.expert_weights, output_name="expert_weights")
    failures = evidence_failures(
        run, inputs["walk_forward_folds"], paths, timedelta(seconds=market.bar_seconds)
    )
    yield dg.AssetCheckResult(
        check_name=VALIDITY_CHECK,
        asset_key=METRICS_KEY,
        passed=not failures,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(str(f) for f in failures) or "the evidence can be judged",
        metadata={"failures": len(failures), "causes": "\n".join(str(f) for f in failures)},
    )


@dg.asset(
    key_prefix=SCHEMA,
    group_name=GROUP,
    pool=POOL,
    ins={
        **{arg: dg.AssetIn(key=key) for arg, key in {**FEATURES, **DATASETS}.items()},
        "meta_controller": dg.AssetIn(key=MODELS["meta_controller"]),
    },
    kinds={"duckdb", "polars"},
)
def stress_test_report(
    context: AssetExecutionContext, report_settings: ReportSettings, **inputs: pl.DataFrame
) -> dg.Output[pl.DataFrame]:
    """The baselines and the last fold's meta-controller on the injected shocks (applied to that
    fold's test span) and the rebuilt real crises: one row per scenario and policy."""
    with failing_for("stress_test_report"):
        frame = build_market_frame(
            inputs["market_bars"], inputs["carry_features"], inputs["sentiment_windows"]
        )
        span = fold_spans(inputs["walk_forward_folds"])[-1]
        # Only the meta-controller's table: its experts are loaded from the folders it names.
        paths = model_paths({CANDIDATE: inputs["meta_controller"]})
        windows = fold_windows(inputs["training_windows"], span.fold)
        meta = fold_policies(span.fold, paths, windows).meta
        run = run_stress_report(
            frame,
            span,
            meta,
            seed=report_settings.seed,
            at=report_settings.stress_at,
            crises=report_settings.real_crises,
        )
    if meta is None:
        context.log.warning(f"fold {span.fold}: no meta-controller; stress runs the baselines")
    rows = run.rows
    return dg.Output(
        rows,
        metadata={
            "base_span": f"fold {span.fold} test span {span.test_start} .. {span.test_end}",
            "shock_start": str(run.shock_start),
            "scenarios": rows["scenario"].n_unique(),
            "rows": rows.height,
            "wall_seconds": run.seconds,
            "model_skipped_on": ", ".join(run.models_skipped) or "none",
            "worst_drawdown": float(rows["max_drawdown"].max()),  # type: ignore[arg-type]
            "liquidated_runs": int(rows["liquidated"].sum()),
            "table": dg.MetadataValue.md(_stress_markdown(rows)),
        },
    )


def _stress_markdown(rows: pl.DataFrame) -> str:
    lines = [
        "| scenario | policy | max drawdown | liquidated | funding paid | exposure cut |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows.iter_rows(named=True):
        cut = "" if r["exposure_cut"] is None else str(r["exposure_cut"])
        lines.append(
            f"| {r['scenario']} | {r['policy']} | {r['max_drawdown']:.2%} | {r['liquidated']} | "
            f"{r['funding_paid']:.2f} | {cut} |"
        )
    return "\n".join(lines)


REPORT_POLICIES = (CANDIDATE, *BASELINES)
HEADLINE = ("total_return", "sharpe", "max_drawdown", "cost_ratio", "fills", "fees")


def report_dir(settings: ReportSettings, run_id: str) -> Path:
    """Where a run's report lands: `<reports_root>/<run_id>/`."""
    return Path(settings.reports_root) / run_id


def headline_metadata(metrics: pl.DataFrame) -> dict[str, float]:
    """`<policy>_mean_<metric>` floats of the candidate and the baselines (finite ones only: the
    UI plots them across materialisations)."""
    mean = metrics.filter((pl.col("aggregate") == "mean") & pl.col("policy").is_in(REPORT_POLICIES))
    out = {}
    for r in mean.iter_rows(named=True):
        for m in HEADLINE:
            v = r[m]
            if v is not None and math.isfinite(v):
                out[f"{r['policy']}_mean_{m}"] = float(v)
    return out


def _weights_wide(weights: pl.DataFrame) -> pl.DataFrame | None:
    gating = weights.filter(pl.col("option") != "exposure")
    if gating.height == 0:
        return None
    return gating.pivot(on="option", index="ts", values="weight", aggregate_function="first").sort(
        "ts"
    )


@dg.asset(
    key_prefix=SCHEMA,
    group_name=GROUP,
    ins={name: dg.AssetIn(key=KEYS[name]) for name in TABLES if name != "trades"},
    kinds={"markdown"},
)
def backtest_report(
    context: AssetExecutionContext,
    report_settings: ReportSettings,
    backtest_metrics: pl.DataFrame,
    equity_curves: pl.DataFrame,
    positions: pl.DataFrame,
    expert_weights: pl.DataFrame,
) -> dg.MaterializeResult:
    """The walk-forward report (plots and Markdown) under `<reports_root>/<run_id>/`, with the
    promotion decision; the plots and the key figures in the metadata."""
    out = report_dir(report_settings, context.run.run_id)
    with failing_for("backtest_report"):
        decision = decide(backtest_metrics, report_settings.rule())
        report = render_report(
            out,
            equity_curves.filter(pl.col("policy").is_in(REPORT_POLICIES)),
            backtest_metrics.filter(pl.col("policy").is_in(REPORT_POLICIES)),
            candidate=CANDIDATE,
            positions=positions.filter(pl.col("policy") == CANDIDATE),
            expert_weights=_weights_wide(expert_weights),
            decision_markdown=decision.markdown(),
        )
    context.log.info(f"backtest report written to {report.markdown}")
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.path(str(report.markdown)),
            "plots": dg.MetadataValue.md(metadata_markdown(report)),
            "decision": dg.MetadataValue.md(decision.markdown()),
            "images": len(report.images),
            **headline_metadata(backtest_metrics),
        }
    )


@dg.asset(
    key_prefix=SCHEMA,
    group_name=GROUP,
    pool=POOL,
    ins={
        "backtest_metrics": dg.AssetIn(key=METRICS_KEY),
        "meta_controller": dg.AssetIn(key=MODELS["meta_controller"]),
    },
    deps=[backtest_report],
    kinds={"duckdb"},
    freshness_policy=CHAMPION_FRESHNESS,
)
def champion_model(
    context: AssetExecutionContext,
    report_settings: ReportSettings,
    model_settings: ModelSettings,
    duckdb: DuckDBResource,
    backtest_metrics: pl.DataFrame,
    meta_controller: pl.DataFrame,
) -> dg.MaterializeResult:
    """Promote the latest window's meta-controller to `models.champion` when the rule passes;
    otherwise keep the previous champion (module docstring)."""
    rule = report_settings.rule()
    with failing_for("champion_model"):
        decision = decide(backtest_metrics, rule)
        latest = meta_controller.filter(pl.col("is_latest"))
        if latest.height != 1:
            raise ValueError(
                f"models.meta_controller has {latest.height} latest-window rows, expected 1"
            )
    model = latest.row(0, named=True)
    run_id = context.run.run_id
    champion: dict[str, Any] | None
    with duckdb.get_connection() as con:
        previous = current_champion(con)
        if decision.promote:
            fold_rows = backtest_metrics.filter(
                (pl.col("aggregate") == "fold") & (pl.col("policy") == CANDIDATE)
            )
            row = champion_row(
                run_id=run_id, model=model, fold_metrics=fold_rows, decision=decision, rule=rule
            )
            with failing_for("champion_model"):
                installed, total = promote_champion(con, row, model_settings.models_root)
            champion = installed.row(0, named=True)
            context.log.info(
                f"promoted {champion['champion_id']}: {model['model_path']} and its experts "
                f"copied to {champion['model_path']}"
            )
        else:
            total = None
            champion = previous
            context.log.info(
                f"not promoted (failed: {', '.join(decision.failed)}); the champion stays "
                f"{previous['champion_id'] if previous else 'none (nothing promoted yet)'}"
            )
    meta: dict[str, Any] = {
        "promoted": decision.promote,
        "failed_conditions": ", ".join(decision.failed) or "none",
        "decision": dg.MetadataValue.md(decision.markdown()),
        "champion_id": champion["champion_id"] if champion else "none",
        "champion_model_path": champion["model_path"] if champion else "none",
        "candidate_model_path": str(model["model_path"]),
        "report": str(report_dir(report_settings, run_id) / "report.md"),
    }
    if total is not None:
        meta["champion_rows"] = total
    for c in decision.conditions:
        meta[f"{c.name}_passed"] = c.passed
        if math.isfinite(c.value):
            meta[f"{c.name}_value"] = float(c.value)
        meta[f"{c.name}_bound"] = float(c.bound)
    return dg.MaterializeResult(metadata=meta)
