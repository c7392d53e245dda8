"""`dg.materialize` of the reports stage on the session's tiny trained store (`conftest.py`): every
fold x policy row, the report folder, the champion kept on a non-promotion, a promotion appending
its row, the blocking validity check naming a fold without a model, and a model whose observation
does not fit the env failing the run naming the fold and the model."""

from __future__ import annotations

import json
import math
import shutil
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import matplotlib.image as mpimg
import polars as pl
from dagster_duckdb import DuckDBResource

from carry_pipeline.defs.reports import assets as ra
from carry_pipeline.defs.reports.resources import ReportSettings
from carry_pipeline.lib.duckdb_io import CarryDuckDBIOManager
from carry_pipeline.lib.evaluation.champion import append_champion, champion_row
from carry_pipeline.lib.evaluation.metrics import METRIC_COLUMNS
from carry_pipeline.lib.evaluation.promotion import PromotionRule, decide
from carry_pipeline.lib.evaluation.walk_forward import METRICS_SCHEMA
from tests.pipeline.reports.conftest import Store, read

POLICIES = {"flat", "long_carry", "funding_rule", "buy_and_hold", "anomaly", "short_term",
            "long_term", "sentiment", "meta_controller"}  # fmt: skip
STAGE = [ra.walk_forward_backtest, ra.stress_test_report, ra.backtest_report, ra.champion_model]


def _materialize(store: Store, assets: list, **settings) -> dg.ExecuteInProcessResult:
    upstream = {**ra.FEATURES, **ra.DATASETS, **ra.MODELS}
    known = {k for a in assets for k in a.keys}
    specs = [dg.AssetSpec(k) for k in [*upstream.values(), *ra.KEYS.values(),
             ra.backtest_report.key] if k not in known]  # fmt: skip
    return dg.materialize(
        [*specs, *assets],
        resources={
            "io_manager": CarryDuckDBIOManager(database=str(store.database)),
            "duckdb": DuckDBResource(database=str(store.database)),
            "report_settings": ReportSettings(
                reports_root=str(store.reports), real_crises=False, **settings
            ),
        },
        raise_on_error=False,
    )


def _seed_champion(store: Store) -> pl.DataFrame:
    # A previous champion, promoted by an earlier run on made-up but passing evidence.
    rows = [{**dict.fromkeys(METRIC_COLUMNS, 0.0), "fold": 0, "aggregate": "fold", "policy": p,
             "sharpe": s, "funding": 100.0, "fees": 10.0, "total_return": 0.01}
            for p, s in (("meta_controller", 2.0), ("long_carry", 1.0))]  # fmt: skip
    metrics = pl.DataFrame(rows, schema=METRICS_SCHEMA)
    model = {"fold": 1, "model_path": "/old/meta/fold1", "data_sha256": "abc",
             "trained_at": datetime(2024, 1, 1, tzinfo=UTC)}  # fmt: skip
    rule = PromotionRule()
    row = champion_row(run_id="old-run", model=model, fold_metrics=metrics.head(1),
                       decision=decide(metrics, rule), rule=rule)  # fmt: skip
    with duckdb.connect(str(store.database)) as con:
        append_champion(con, row)
    return _champions(store)


def _champions(store: Store) -> pl.DataFrame:
    return read(store, "select * from models.champion order by promoted_at")


def _metadata(result: dg.ExecuteInProcessResult, node: str) -> dict:
    [mat] = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in mat.metadata.items()}


def _failure(result: dg.ExecuteInProcessResult) -> str:
    return " ".join(
        str(e.event_specific_data.error)
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
    )


def test_stage_writes_every_fold_and_policy_and_keeps_the_champion_without_promotion(
    store: Store,
) -> None:
    previous = _seed_champion(store)
    result = _materialize(store, STAGE)
    assert result.success
    metrics = read(store, "select * from reports.backtest_metrics")
    folds = metrics.filter(pl.col("aggregate") == "fold")
    assert set(zip(folds["fold"], folds["policy"], strict=True)) == {(0, p) for p in POLICIES}
    for agg in ("mean", "worst_fold"):
        assert set(metrics.filter(pl.col("aggregate") == agg)["policy"]) == POLICIES
    for col in ("total_return", "fills", "fees", "funding", "max_drawdown"):
        assert all(math.isfinite(v) for v in folds[col]), col
    carry = folds.filter(pl.col("policy") == "long_carry").row(0, named=True)
    trades = read(store, "select * from reports.trades where policy = 'long_carry'")
    assert trades.height == carry["fills"] > 0
    assert math.isclose(trades["fee"].sum(), carry["fees"], rel_tol=1e-9)
    curves = read(store, "select policy, count(*) n from reports.equity_curves group by policy")
    assert set(curves["policy"]) == POLICIES and curves["n"].n_unique() == 1
    stress = read(store, "select * from reports.stress_test_report")
    assert stress.height == 6 * 5 and set(stress["policy"]) == POLICIES - {
        "anomaly", "short_term", "long_term", "sentiment"}  # fmt: skip

    # The report folder: every PNG at the size the report draws, all referenced by report.md.
    folder = store.reports / result.run_id
    pngs = sorted(folder.glob("*.png"))
    assert {p.stem for p in pngs} >= {"equity", "drawdown", "monthly_returns", "positions",
                                      "costs", "expert_weights"}  # fmt: skip
    for png in pngs:
        assert mpimg.imread(png).shape[:2] == (400, 800)
    text = (folder / "report.md").read_text()
    assert all(f"]({p.name})" in text for p in pngs) and "## Promotion" in text
    report = _metadata(result, "reports__backtest_report")
    assert "data:image/png;base64," in report["plots"]
    assert isinstance(report["long_carry_mean_sharpe"], float)

    # The untrained meta-controller does not beat always-long-carry: no promotion, run green,
    # the failed conditions and their figures in the metadata, the previous champion kept.
    champ = _metadata(result, "reports__champion_model")
    assert champ["promoted"] is False and "sharpe" in champ["failed_conditions"]
    assert champ["sharpe_passed"] is False and champ["sharpe_bound"] == carry["sharpe"]
    assert "| sharpe | **no** |" in champ["decision"]
    assert champ["champion_id"] == "old-run:meta_controller"
    assert _champions(store).equals(previous)


def _winning_metrics(store: Store) -> None:
    # Evidence on which the candidate passes every condition of the default rule.
    rows = [
        {
            **dict.fromkeys(METRIC_COLUMNS, 0.0),
            "fold": 0,
            "aggregate": "fold",
            "policy": p,
            "sharpe": s,
            "max_drawdown": 0.02,
            "funding": 100.0,
            "fees": 10.0,
            "fills": 2.0,
            "total_return": 0.01,
        }
        for p, s in (("meta_controller", 3.0), ("long_carry", 1.0))
    ]
    frame = pl.DataFrame(rows, schema=METRICS_SCHEMA)  # fmt: skip
    with duckdb.connect(str(store.database)) as con:
        con.execute("create schema if not exists reports")
        con.register("m", frame.to_arrow())
        con.execute("create or replace table reports.backtest_metrics as select * from m")


def test_promotion_appends_the_latest_window_model_and_a_refusal_keeps_it(store: Store) -> None:
    _winning_metrics(store)
    promoted = _materialize(store, [ra.champion_model])
    assert promoted.success
    [row] = _champions(store).to_dicts()
    latest = read(store, "select * from models.meta_controller where is_latest").row(0, named=True)
    assert row["model_path"] == latest["model_path"] and row["fold"] == latest["fold"]
    assert row["data_sha256"] == latest["data_sha256"] and row["run_id"] == promoted.run_id
    assert [r["sharpe"] for r in json.loads(row["fold_metrics"])] == [3.0]
    assert _metadata(promoted, "reports__champion_model")["champion_id"] == row["champion_id"]

    # A tighter cost bound refuses the same evidence: the run succeeds and the champion stays.
    refused = _materialize(store, [ra.champion_model], max_cost_ratio=0.01)
    assert refused.success
    meta = _metadata(refused, "reports__champion_model")
    assert meta["promoted"] is False and meta["failed_conditions"] == "cost_ratio"
    assert meta["cost_ratio_value"] == 0.1 and meta["champion_id"] == row["champion_id"]
    assert _champions(store).to_dicts() == [row]


def test_a_fold_without_a_model_fails_the_check_naming_it(store: Store) -> None:
    previous = _seed_champion(store)
    with duckdb.connect(str(store.database)) as con:
        con.execute("delete from models.meta_controller where fold = 0")
    result = _materialize(store, [ra.walk_forward_backtest, ra.backtest_report, ra.champion_model])
    assert not result.success
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.check_name == ra.VALIDITY_CHECK
    assert "fold 0: no trained model for 'meta_controller'" in check.description
    skipped = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SKIPPED"}
    assert "reports__champion_model" in skipped or not result.asset_materializations_for_node(
        "reports__champion_model"
    )
    assert _champions(store).equals(previous)


def test_a_model_whose_observation_does_not_fit_fails_naming_fold_and_model(
    store: Store, tmp_path: Path
) -> None:
    # A copy of fold 0's short-term expert whose spec now selects one window feature: the model
    # was trained on all four, so the observation the env and windows give is too small.
    own = read(store, "select model_path from models.short_term_expert where fold = 0")
    path = tmp_path / "short_term_fold0"
    shutil.copytree(own["model_path"][0], path)
    spec = json.loads((path / "spec.json").read_text())
    spec["observation"]["window_features"] = ["f_funding"]
    (path / "spec.json").write_text(json.dumps(spec))
    with duckdb.connect(str(store.database)) as con:
        con.execute(
            "update models.short_term_expert set model_path = ? where fold = 0", [str(path)]
        )
    result = _materialize(store, [ra.walk_forward_backtest])
    assert not result.success
    message = _failure(result)
    assert f"fold 0, model 'short_term' ({path}): the model expects observations" in message
    assert "'window': (2, 8, 4)" in message and "'window': (2, 8, 1)" in message
