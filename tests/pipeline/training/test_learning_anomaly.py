"""Learning test of the anomaly expert: on a market with scheduled perp squeezes (each one
liquidates a short perp of any size) and a precursor in the windows, the trained expert cuts its
exposure multiplier ahead of the held-out crashes far more often than a uniformly random
multiplier does.

"Cut" on a crash at bar c: the multiplier decided at bar c - 1 (the exposure held into the crash)
is below half the multiplier decided at bar c - 5, the last bar before the precursor starts. For a
multiplier drawn uniformly in [0, 1] at every bar, independently, P(U1 < U0 / 2) = 1/4 exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from carry_pipeline.lib.training.observation import exposure_multiplier
from carry_pipeline.lib.training.policy import load_expert
from carry_pipeline.lib.training.rollout import rollout
from carry_pipeline.lib.training.specs import expert_spec
from carry_pipeline.lib.training.train import train_expert

from .conftest import crash_frame, fold_inputs

TRAIN_BARS, TEST_BARS, WARNING = 480, 240, 4
# A crash every 30-44 bars (seeded jitter), in the train span and in the held-out test span.
CRASHES = tuple(int(c) for c in np.cumsum(np.random.default_rng(5).integers(30, 45, 40)) if c < 715)
RANDOM_CUT_RATE = 0.25
"""P(U1 < U0 / 2) for independent uniform multipliers U0 (before the warning), U1 (into the
crash)."""
LEAD = 16
"""Bars each held-out crash episode runs before its crash (it starts flat)."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):  # noqa: ANN201
    frame = crash_frame(TRAIN_BARS + 1 + TEST_BARS, CRASHES, warning_bars=WARNING)
    return fold_inputs(
        frame, tmp_path_factory.mktemp("w"), train_bars=TRAIN_BARS, test_bars=TEST_BARS
    )


def _multipliers_around(inputs, actor, spec, crash: int) -> np.ndarray:  # noqa: ANN001
    """Multipliers decided at bars crash - LEAD .. crash - 1 of one episode (flat start)."""
    decided: list[float] = []

    def recording(obs, starts, masks):  # noqa: ANN001, ANN202
        action = actor(obs, starts, masks)
        decided.append(float(exposure_multiplier(action).reshape(-1)[0]))
        return action

    rollout(
        recording,
        inputs.market,
        inputs.test_windows,
        spec.observation,
        spec.env_config(),
        start=crash - LEAD,
        end=crash + 1,
        output=spec.output,
        seed=7,
    )
    return np.array(decided[:LEAD])


@pytest.mark.xfail(
    reason="not learned yet (issue 9): at the anomaly spec's demo budget (8,192 steps) the expert "
    "holds a constant multiplier of ~0.3 and cuts on 0 of 6 held-out crashes; at lr 3e-3 and "
    "16,384 steps it goes to 0 into every crash but also sits at 0-0.37 before them (cut rate "
    "4/6); at 32,768 steps seeds 0 and 1 cut on 0/6. Needs a budget/shaping study.",
    # Strict: training is bitwise reproducible (seed and threads pinned), so the day the expert
    # learns, this XPASS fails the suite and the marker must come off.
    strict=True,
)
def test_anomaly_expert_cuts_exposure_before_held_out_crashes(inputs, tmp_path) -> None:
    spec = expert_spec(
        "anomaly",
        timesteps={"demo": 8_192, "full": 8_192},
        episode_length=48,
        n_envs=16,
        n_steps=32,
        batch_size=256,
    )
    rec = train_expert(
        spec, inputs.train_market, inputs.train_windows, inputs.fold, models_root=tmp_path
    )
    policy = load_expert(rec.model_path)
    first = inputs.test_start_bar + inputs.test_windows.lookback + LEAD  # windows from the start
    test_crashes = [c for c in CRASHES if first <= c < inputs.market.n_bars - 1]
    assert len(test_crashes) >= 5, test_crashes
    paths = np.stack([_multipliers_around(inputs, policy, spec, c) for c in test_crashes])
    before, into = paths[:, LEAD - WARNING - 1], paths[:, LEAD - 1]
    cut_rate = float(np.mean(into < 0.5 * before))
    print(f"anomaly: pre-warning multipliers {before.round(2)}, into the crash {into.round(2)}")
    # It holds the book in calm markets (a constant-zero multiplier would never "cut").
    assert before.mean() > 0.5, before
    # Cuts ahead of (nearly) every held-out crash: at least 3x the random multiplier's 1/4.
    assert cut_rate >= 3 * RANDOM_CUT_RATE, (cut_rate, before, into)
