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
from typing import Any

import dagster as dg
import duckdb
import gymnasium as gym
import matplotlib.image as mpimg
import numpy as np
import polars as pl
import pytest
import torch
from dagster_duckdb import DuckDBResource
from stable_baselines3 import PPO

from carry_pipeline.defs.models.resources import ModelSettings
from carry_pipeline.defs.reports import assets as ra
from carry_pipeline.defs.reports.resources import ReportSettings
from carry_pipeline.lib.duckdb_io import CarryDuckDBIOManager
from carry_pipeline.lib.evaluation.champion import append_champion, champion_folder, champion_row
from carry_pipeline.lib.evaluation.metrics import METRIC_COLUMNS
from carry_pipeline.lib.evaluation.promotion import PromotionRule, decide
from carry_pipeline.lib.evaluation.walk_forward import METRICS_SCHEMA
from carry_pipeline.lib.trading.champion import champion_source
from carry_pipeline.lib.training.meta import load_meta_controller
from carry_pipeline.lib.training.policy import ALGORITHM_CLASSES
from tests.pipeline.reports.conftest import Store, read

POLICIES = {"flat", "long_carry", "funding_rule", "buy_and_hold", "anomaly", "short_term",
            "long_term", "sentiment", "meta_controller"}  # fmt: skip
EXPERT_NAMES = ("anomaly", "short_term", "long_term", "sentiment")
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
            "model_settings": ModelSettings(models_root=str(store.champions_store)),
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


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


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
    # The row names the champion's own copy of the latest-window model, not its training folder.
    home = champion_folder(store.champions_store, row["champion_id"]).resolve()
    assert row["model_path"] == str(home / "meta") and row["fold"] == latest["fold"]
    assert json.loads((home / "source.json").read_text())["meta"] == latest["model_path"]
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


def _private_training_folders(store: Store, root: Path) -> Path:
    # A copy of the session's trained folders that this test may overwrite: the meta's spec.json
    # and every `models.*` row repointed at it.
    shutil.copytree(store.models, root)
    spec = next(root.glob("meta/fold*/spec.json"))
    spec.write_text(spec.read_text().replace(str(store.models), str(root)))
    with duckdb.connect(str(store.database)) as con:
        for table in [*(f"{n}_expert" for n in EXPERT_NAMES), "meta_controller"]:
            con.execute(f"update models.{table} set model_path = replace(model_path, ?, ?)",
                        [str(store.models), str(root)])  # fmt: skip
    return root


def _fixed(space: gym.Space, n: int = 4) -> Any:
    # `n` seeded observations of `space`, batched (a Box or a Dict of Boxes).
    space.seed(7)
    samples = [space.sample() for _ in range(n)]
    if isinstance(space, gym.spaces.Dict):
        return {k: np.stack([s[k] for s in samples]) for k in space.spaces}
    return np.stack(samples)


def _actions(meta_folder: str) -> list[np.ndarray]:
    # The deterministic actions of the meta-controller saved in `meta_folder` and of each expert
    # (and the anomaly expert) it loads with it, on fixed observations.
    meta, experts, anomaly = load_meta_controller(meta_folder, device="cpu")
    out = [meta(_fixed(meta.model.observation_space))]
    for p in [*experts.values(), *([anomaly] if anomaly else [])]:
        out.append(p.model.predict(_fixed(p.model.observation_space), deterministic=True)[0])
    return out


def _retrain_overwrites(root: Path) -> None:
    # What the next retrain does to the training folders: other weights in every model.zip.
    gen = torch.Generator().manual_seed(1)
    for zipped in sorted(root.glob("*/fold*/model.zip")):
        cls = PPO if zipped.parts[-3] == "meta" else ALGORITHM_CLASSES[
            json.loads((zipped.parent / "spec.json").read_text())["algorithm"]]  # fmt: skip
        model = cls.load(zipped, device="cpu")
        with torch.no_grad():
            for param in model.policy.parameters():
                param.add_(torch.randn(param.shape, generator=gen))
        model.save(zipped)


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.slow
def test_a_refused_retrain_leaves_the_champion_serving_its_own_weights(
    store: Store, tmp_path: Path
) -> None:
    training = _private_training_folders(store, tmp_path / "training")
    _winning_metrics(store)
    assert _materialize(store, [ra.champion_model]).success
    a = champion_source(str(store.database))
    a_home = Path(a.model_path).parent
    a_files, a_actions = _files(a_home), _actions(a.model_path)
    assert _same(a_actions, _actions(str(next(training.glob("meta/fold*")))))

    # The next retrain writes other models into the training folders and its candidate fails
    # the gate: the champion is still A, its folder unchanged, its policy acting as A did.
    _retrain_overwrites(training)
    retrained = _actions(str(next(training.glob("meta/fold*"))))
    assert not any(np.array_equal(x, y) for x, y in zip(a_actions, retrained, strict=True))
    refused = _materialize(store, [ra.champion_model], max_cost_ratio=0.01)
    assert refused.success and _metadata(refused, "reports__champion_model")["promoted"] is False
    assert champion_source(str(store.database)) == a
    assert _files(a_home) == a_files and _same(_actions(a.model_path), a_actions)

    # A later promotion B gets a folder of its own with the retrained weights; A's stays.
    promoted = _materialize(store, [ra.champion_model])
    assert promoted.success
    b = champion_source(str(store.database))
    assert b.champion_id == f"{promoted.run_id}:meta_controller" != a.champion_id
    assert Path(b.model_path).parent != a_home and _same(_actions(b.model_path), retrained)
    assert _files(a_home) == a_files and _same(_actions(a.model_path), a_actions)
    assert _champions(store)["model_path"].to_list() == [a.model_path, b.model_path]


def test_a_champion_row_naming_a_training_folder_still_loads(store: Store) -> None:
    # Rows promoted before champions were copied name the training folder itself.
    _seed_champion(store)
    latest = read(store, "select model_path from models.meta_controller where is_latest")
    with duckdb.connect(str(store.database)) as con:
        con.execute("update models.champion set model_path = ?", [latest["model_path"][0]])
    source = champion_source(str(store.database))
    assert source.model_path == latest["model_path"][0]
    assert len(_actions(source.model_path)) == 1 + len(EXPERT_NAMES)


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
