"""`carry_pipeline.lib.env_config`: the env config every stage starts from differs from carry_env's
defaults in auto-add margin only, and each stage's default is it (a stage falling back to
`EnvConfig()` would train, backtest or paper-trade without auto-add margin)."""

from __future__ import annotations

import dataclasses

from carry_env import EnvConfig
from carry_pipeline.lib.env_config import PIPELINE_ENV_CONFIG
from carry_pipeline.lib.evaluation.stress import stress_config
from carry_pipeline.lib.training.meta import MetaSpec
from carry_pipeline.lib.training.specs import EXPERT_SPECS


def test_pipeline_config_is_the_env_default_with_auto_add_margin() -> None:
    changed = {
        f.name
        for f in dataclasses.fields(EnvConfig)
        if getattr(PIPELINE_ENV_CONFIG, f.name) != getattr(EnvConfig(), f.name)
    }
    assert changed == {"isolated_auto_add_margin"}
    assert PIPELINE_ENV_CONFIG.isolated_auto_add_margin
    assert PIPELINE_ENV_CONFIG.margin_mode == "isolated"


def test_every_stage_starts_from_the_pipeline_config() -> None:
    # Training (each expert and the meta-controller) and the stress test; the walk-forward
    # backtest and the paper trading job use PIPELINE_ENV_CONFIG directly.
    configs = [spec.env_config() for spec in EXPERT_SPECS.values()]
    configs += [MetaSpec().env_config(), stress_config()]
    assert all(c.isolated_auto_add_margin for c in configs)
    # A base given explicitly still wins.
    assert not MetaSpec().env_config(EnvConfig()).isolated_auto_add_margin
    assert not stress_config(EnvConfig()).isolated_auto_add_margin
