"""Expert specs: the issue's defaults, JSON round trips, and bad values failing at once with the
expert and the field named."""

from __future__ import annotations

import pytest

from carry_pipeline.lib.training.observation import ExposureBand
from carry_pipeline.lib.training.specs import (
    EXPERT_SPECS,
    LONG_TERM_RECURRENT,
    ExpertSpec,
    expert_spec,
)


def test_defaults_follow_the_issue() -> None:
    sizes = {name: spec.net_arch for name, spec in EXPERT_SPECS.items()}
    assert sizes == {
        "anomaly": (128, 64),
        "short_term": (32, 16),
        "long_term": (128, 64),
        "sentiment": (32, 16),
    }
    assert EXPERT_SPECS["anomaly"].output == "exposure"
    assert EXPERT_SPECS["anomaly"].env_config().flash_crash_per_day == 0.5  # 50x the default
    # Rewards in tenths of a percent, not bp (see specs.py), and the teacher's warm start.
    assert EXPERT_SPECS["anomaly"].env_config().reward_scale == 10.0
    assert EXPERT_SPECS["anomaly"].warm_start is not None
    assert all(EXPERT_SPECS[n].warm_start is None for n in ("short_term", "long_term"))
    assert EXPERT_SPECS["long_term"].observation.history_windows == 4
    assert LONG_TERM_RECURRENT.algorithm == "RecurrentPPO"
    assert EXPERT_SPECS["sentiment"].observation.window_features == ("f_sent_", "f_funding")


@pytest.mark.parametrize(
    "spec", [*EXPERT_SPECS.values(), LONG_TERM_RECURRENT], ids=lambda s: s.name
)
def test_json_round_trip(spec: ExpertSpec) -> None:
    assert ExpertSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"algorithm": "SAC"}, r"expert 'short_term': algorithm 'SAC' is not one of"),
        ({"batch_size": 4096}, r"expert 'short_term': batch_size=4096 must be in \[2, "),
        ({"env_overrides": {"fee_bps": 1.0}}, r"env_overrides \['fee_bps'\] are not EnvConfig"),
        ({"env_overrides": {"drawdown_limit": 2.0}}, r"env_overrides: invalid EnvConfig: drawdown"),
        (
            {"timesteps": {"demo": 10}},
            r"timesteps \{'demo': 10\} needs positive \['demo', 'full'\]",
        ),
        ({"extractor": "cnn"}, r"extractor 'cnn' is not one of"),
        ({"algorithm": "MaskablePPO", "output": "exposure"}, r"needs a continuous algorithm"),
        ({"embed_dim": 30, "attention_heads": 4}, r"embed_dim=30 is not divisible"),
        ({"band_cut": 1.0}, r"band_cut=1.0 must be in \[0, 1\)"),
        ({"band_add": -0.1}, r"band_add=-0.1 must be in \[0, 1\)"),
    ],
)
def test_bad_values_fail_naming_expert_and_field(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expert_spec("short_term", **overrides)


def test_unknown_expert_field_and_profile() -> None:
    with pytest.raises(ValueError, match=r"unknown expert 'macro'"):
        expert_spec("macro")
    with pytest.raises(ValueError, match=r"expert 'anomaly': \['lr'\] are not ExpertSpec fields"):
        expert_spec("anomaly", lr=1e-3)
    with pytest.raises(ValueError, match=r"expert 'anomaly': profile 'huge' is not one of"):
        expert_spec("anomaly").total_timesteps("huge")


def test_an_exposure_expert_trades_through_its_band_and_a_weights_expert_has_none() -> None:
    assert EXPERT_SPECS["anomaly"].band() == ExposureBand(cut=0.1, add=0.25)
    assert expert_spec("anomaly", band_cut=0.3, band_add=0.0).band() == ExposureBand(0.3, 0.0)
    assert all(EXPERT_SPECS[n].band() is None for n in ("short_term", "long_term", "sentiment"))
