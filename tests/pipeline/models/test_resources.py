"""`ModelSettings.expert`: per-expert JSON overrides merge over the expert's defaults key by key
(observation, env_overrides, warm_start), `"warm_start": null` trains PPO alone, and bad fields
fail naming the expert."""

from __future__ import annotations

import json

import pytest

from carry_pipeline.defs.models.resources import ModelSettings
from carry_pipeline.lib.training.imitation import WarmStart
from carry_pipeline.lib.training.specs import expert_spec


def test_env_overrides_merge_over_the_experts_own() -> None:
    spec = ModelSettings(
        anomaly=json.dumps({"env_overrides": {"flash_crash_per_day": 1.0}})
    ).expert("anomaly")
    defaults = dict(expert_spec("anomaly").env_overrides)
    # The changed rate, and every other override of the expert kept (its reward scale included).
    assert dict(spec.env_overrides) == {**defaults, "flash_crash_per_day": 1.0}
    assert spec.env_config().reward_scale == 10.0


def test_warm_start_fields_merge_and_null_turns_it_off() -> None:
    settings = ModelSettings(seed=3, anomaly=json.dumps({"warm_start": {"epochs": 8}}))
    spec = settings.expert("anomaly")
    assert spec.warm_start == WarmStart(epochs=8) and spec.seed == 3
    assert ModelSettings(anomaly='{"warm_start": null}').expert("anomaly").warm_start is None
    assert ModelSettings().expert("anomaly").warm_start == WarmStart()


def test_bad_warm_start_field_fails_naming_it() -> None:
    with pytest.raises(ValueError, match=r"warm_start: \['epoch'\] are not WarmStart fields"):
        ModelSettings(anomaly='{"warm_start": {"epoch": 8}}').expert("anomaly")
    with pytest.raises(ValueError, match=r"expert 'sentiment': warm_start imitates the risk"):
        ModelSettings(sentiment='{"warm_start": {}}').expert("sentiment")
