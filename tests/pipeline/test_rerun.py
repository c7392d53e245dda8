"""The main job run twice on the same data (`carry_pipeline_job`, every stage, the smallest profile
that runs them all): the second run reuses what did not change and keeps the first champion when
its candidate does not pass the gate.

Run 1 ingests twelve days of BTC from the seeded simulated exchange and, with a lax promotion rule,
promotes its meta-controller. Run 2 re-fetches the same days and rebuilds every stage with a
stricter rule (a drawdown bound below the candidate's): the training windows are the same folder
(same content hash, `reused` in the metadata), no model is retrained (no new registry row, the
model files untouched, `reused` in the metadata), the candidate is not promoted and
`models.champion` still names run 1's champion; the run succeeds.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import polars as pl
import pytest
import torch
from dagster_duckdb import DuckDBResource

from carry_pipeline.definitions import defs
from carry_pipeline.defs.datasets.assets import training_windows
from carry_pipeline.defs.features.resources import FeatureSettings
from carry_pipeline.defs.models.assets import GATED
from carry_pipeline.defs.models.resources import ModelSettings
from carry_pipeline.defs.reports.resources import ReportSettings
from carry_pipeline.lib.duckdb_io import CarryDuckDBIOManager, utc_frame
from carry_pipeline.main import range_tags

pytestmark = pytest.mark.slow

FIRST, LAST = date(2024, 1, 1), date(2024, 1, 12)
TINY: dict[str, Any] = {
    "n_envs": 4,
    "n_steps": 32,
    "batch_size": 64,
    "n_epochs": 1,
    "episode_length": 32,
    # Decisions every bar: on 1-day test spans a 128-step agent deciding every 8 or 32 bars makes
    # 1-3 decisions, too few for its evidence to pass even the lax rule. This test is about what
    # a second run reuses, not about the cadence (tests/pipeline/training/test_cadence.py).
    "decision_bars": 1,
    "progress_every": 64,
}
# Discrete (MaskablePPO) experts suggest whole positions even untrained, so the meta-controller
# trades and its evidence can pass a lax rule; continuous ones this small suggest near-zero
# weights, inside the env's rebalance band.
MODELS = {
    "anomaly": json.dumps(TINY),
    **{n: json.dumps({**TINY, "learning_rate": 0.05, "n_epochs": 4}) for n in GATED},
    "meta": json.dumps(TINY),
}
FEATURES: dict[str, Any] = {
    # Hourly bars and short windows: about two days of warm-up, then 4 days of train and two
    # folds of 1 test day each (the latest window on top), in twelve days.
    "bar": "1h",
    "symbols": None,
    "correlation_pair": None,
    "zscore_window": "1d",
    "funding_zscore_periods": 6,
    "vol_of_vol_window": "1d",
    "higher_timeframes": [],
    "ema_length": 6,
    "sentiment_zscore_window": "1d",
    "sentiment_mean_windows": ["1d"],
    "sentiment_history": "1d",
    "train_span": "4d",
    "test_span": "1d",
    "n_folds": 2,
    "embargo": "1h",
    "lookback": 8,
    "pit_samples": 1,
    "pit_history": "3d",
    "pit_future": "1d",
}
LAX = {"baseline": "buy_and_hold", "max_drawdown": 1.0, "max_cost_ratio": 1e9, "real_crises": False}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _definitions(root: Path, rule: dict[str, Any]) -> dg.Definitions:
    """The code location's assets, checks and jobs on storage under `root`, with the smallest
    profile and the promotion `rule`."""
    database = str(root / "carry.duckdb")
    resources = {
        **defs.resources,
        "io_manager": CarryDuckDBIOManager(database=database),
        "duckdb": DuckDBResource(database=database),
        "feature_settings": FeatureSettings(**FEATURES, windows_root=str(root / "windows")),
        "model_settings": ModelSettings(timesteps=128, models_root=str(root / "models"), **MODELS),
        "report_settings": ReportSettings(reports_root=str(root / "reports"), **rule),
    }
    return dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, resources=resources
    )


def _run_main_job(
    root: Path, instance: dg.DagsterInstance, rule: dict[str, Any]
) -> dg.ExecuteInProcessResult:
    job = _definitions(root, rule).resolve_job_def("carry_pipeline_job")
    return job.execute_in_process(
        instance=instance, tags=range_tags("BTC", FIRST, LAST), raise_on_error=False
    )


def _table(root: Path, name: str) -> pl.DataFrame:
    with duckdb.connect(str(root / "carry.duckdb"), read_only=True) as con:
        return utc_frame(con.sql(f"select * from {name}").pl())


def _metadata(result: dg.ExecuteInProcessResult, node: str) -> dict[str, Any]:
    [mat] = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in mat.metadata.items()}


def _model_files(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted((root / "models").rglob("*"))
        if p.is_file()
    }


def test_second_run_reuses_windows_and_models_and_keeps_the_champion(tmp_path: Path) -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        first = _run_main_job(tmp_path, instance, LAX)
        assert first.success
        decision = _metadata(first, "reports__champion_model")
        assert decision["promoted"], f"run 1 must promote: failed {decision['failed_conditions']}"
        champion = _table(tmp_path, "models.champion")
        registry = _table(tmp_path, "models.registry")
        windows = _metadata(first, training_windows.op.name)
        files = _model_files(tmp_path)
        assert not windows["reused"] and registry.height == 5 * 3  # 5 models x (2 folds + latest)
        assert registry["run_id"].unique().to_list() == [first.run_id]

        # A stricter gate: the candidate's worst drawdown is above the bound.
        worst = decision["drawdown_value"]
        strict = {**LAX, "max_drawdown": worst / 2}
        second = _run_main_job(tmp_path, instance, strict)
        assert second.success

    # The windows: the same inputs, the same folder, nothing rewritten.
    again = _metadata(second, training_windows.op.name)
    assert again["reused"] and again["key"] == windows["key"]
    # The models: no training, the registry unchanged, every file as it was (bytes and mtime).
    assert _table(tmp_path, "models.registry").equals(registry)
    assert _model_files(tmp_path) == files
    for node in (
        *(f"{n}_expert" for n in ("anomaly", "short_term", "long_term", "sentiment")),
        "meta_controller",
    ):
        meta = _metadata(second, f"models__{node}")
        assert (meta["trainings"], meta["reused"]) == (0, 3), node
    # Each asset's table names the run that trained its models (run 1), not run 2.
    assert _table(tmp_path, "models.meta_controller")["run_id"].unique().to_list() == [first.run_id]
    # The gate: not promoted on the drawdown, and run 1's champion is still the current one.
    kept = _metadata(second, "reports__champion_model")
    assert not kept["promoted"] and kept["failed_conditions"] == "drawdown"
    assert kept["champion_id"] == champion["champion_id"][0] == f"{first.run_id}:meta_controller"
    assert _table(tmp_path, "models.champion").equals(champion)
