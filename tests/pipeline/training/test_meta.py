"""The meta-controller: gating math, the anti-collapse terms, the combined action inside the env's
limits, reproducible weights, the saved files and registry row, bad input, and a learning test on
the positive-funding market (beats flat and random gating on held-out bars)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from carry_env.vector import CarryTradeVectorEnv
from carry_pipeline.lib.training.meta import (
    MetaCore,
    MetaSpec,
    collapse_penalty,
    combine,
    gate,
    load_meta_controller,
    meta_rollout,
    normalised_entropy,
    train_meta_controller,
)
from carry_pipeline.lib.training.observation import current_bars
from carry_pipeline.lib.training.policy import load_expert
from carry_pipeline.lib.training.specs import expert_spec
from carry_pipeline.lib.training.train import train_expert

from .conftest import FoldInputs, carry_frame, fold_inputs

TINY = {
    "timesteps": {"demo": 512, "full": 512},
    "n_envs": 4,
    "n_steps": 64,
    "batch_size": 128,
    "n_epochs": 1,
    "episode_length": 64,
    "progress_every": 256,
}


def test_softmax_weights_sum_to_one_and_top1_picks_the_argmax() -> None:
    logits = np.array([[0.0, 1.0, -2.0, 0.5], [3.0, 3.0, 0.0, -1.0]])
    w = gate(logits, "softmax")
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert (w > 0).all() and np.argmax(w[0]) == 1
    np.testing.assert_allclose(w[0], np.exp(logits[0]) / np.exp(logits[0]).sum())
    top = gate(logits, "top1")
    np.testing.assert_array_equal(top, [[0, 1, 0, 0], [1, 0, 0, 0]])


def test_combined_action_flat_zero_multiplier_scales_and_stays_in_bounds() -> None:
    a = np.array([[[1.0, -0.5], [0.2, 0.8]]])  # (B=1, K=2, N=2)
    ones = np.ones((1, 2))
    flat = np.array([[0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(combine(flat, a, ones), [[0.0, 0.0]])
    w = np.array([[0.5, 0.25, 0.25]])
    mixed = combine(w, a, ones)
    np.testing.assert_allclose(mixed, [[0.55, -0.05]])
    np.testing.assert_allclose(combine(w, a, np.array([[0.5, 0.0]])), [[0.275, 0.0]])
    # Any weights and suggestions in [-1, 1] and multipliers in [0, 1] stay in the action space.
    rng = np.random.default_rng(0)
    w = gate(rng.normal(0, 5, (256, 4)), "softmax")
    out = combine(w, rng.uniform(-1, 1, (256, 3, 2)), rng.uniform(0, 1, (256, 2)))
    assert (np.abs(out) <= 1.0).all()


def test_the_multiplier_cuts_the_book_the_env_would_hold() -> None:
    # Two experts both suggesting 1 per asset, at limits that allow half of it (cap 2, max
    # leverage 2 per asset: 1 + 1 = 2x the budget). Unfitted, m = 0.5 gives the book the env's
    # clamp makes of m = 1 anyway; fitted first, it halves the held book.
    a = np.ones((1, 2, 2))
    w = np.array([[0.5, 0.5, 0.0]])
    lev = np.full((1, 2), 2.0)
    half, full = np.full((1, 2), 0.5), np.ones((1, 2))
    np.testing.assert_allclose(combine(w, a, full, lev, 2.0), [[0.5, 0.5]])
    np.testing.assert_allclose(combine(w, a, half, lev, 2.0), [[0.25, 0.25]])
    np.testing.assert_allclose(combine(w, a, half), [[0.5, 0.5]])  # the clamp would absorb it


def test_anti_collapse_terms() -> None:
    even = np.full((1, 4), 0.25)
    one = np.array([[0.0, 1.0, 0.0, 0.0]])
    assert collapse_penalty(even)[0] == pytest.approx(0.0)
    assert collapse_penalty(one)[0] == pytest.approx(3.0)  # K = 3 gated + flat
    assert 0 < collapse_penalty(np.array([[0.1, 0.6, 0.2, 0.1]]))[0] < 3.0
    assert normalised_entropy(even)[0] == pytest.approx(1.0)
    assert normalised_entropy(one)[0] == pytest.approx(0.0, abs=1e-9)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> FoldInputs:
    root = tmp_path_factory.mktemp("windows")
    return fold_inputs(carry_frame(200, ("BTC", "ETH")), root, train_bars=150, test_bars=40)


@pytest.fixture(scope="module")
def expert_dirs(inputs: FoldInputs, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name in ("short_term", "sentiment", "anomaly"):
        rec = train_expert(
            expert_spec(name, **TINY),
            inputs.train_market,
            inputs.train_windows,
            inputs.fold,
            models_root=root,
        )
        out[name] = rec.model_path
    return out


def _core(inputs: FoldInputs, expert_dirs: dict[str, str], spec: MetaSpec, n: int = 4):
    base = CarryTradeVectorEnv(inputs.train_market, spec.env_config(), n)
    experts = {k: load_expert(v) for k, v in expert_dirs.items() if k != "anomaly"}
    return base, MetaCore(
        base, inputs.train_windows, experts, spec, load_expert(expert_dirs["anomaly"])
    )


def test_the_shaping_weights_are_per_day_of_bars(inputs, expert_dirs) -> None:
    # 2.4 bp a day on the fixture's 1-hour bars: 0.1 bp per step for even weights (entropy 1).
    spec = MetaSpec(entropy_weight=2.4, balance_weight=0.0, decision_bars=1)
    base, core = _core(inputs, expert_dirs, spec)
    assert core.shaping_scale == pytest.approx(1.0 / 24.0)  # the env's reward is in bp
    tenths = replace(spec, env_overrides={"reward_scale": 10.0})
    assert _core(inputs, expert_dirs, tenths)[1].shaping_scale == pytest.approx(1e-3 / 24.0)
    # A decision of 8 bars holds for 8 hours: its shaping is 8 bars' worth.
    eight = replace(spec, decision_bars=8)
    assert _core(inputs, expert_dirs, eight)[1].shaping_scale == pytest.approx(8.0 / 24.0)
    raw, _ = base.reset(seed=0)
    core.reset_envs(np.ones(4, bool))
    for _ in range(3):
        bars = current_bars(base)
        core.observe(raw, bars)
        core.actions(np.zeros((4, core.action_space.shape[0])))  # even weights
        np.testing.assert_allclose(core.feedback(bars, np.full(4, 0.5)), 0.5 + 0.1)
        raw = base.step(np.zeros((4, 2)))[0]


def test_the_default_shaping_stays_small_next_to_a_day_of_carry() -> None:
    # From the best shaping (entropy 1) to the worst (all usage on one of the pipeline's K + 1 = 4
    # options: penalty 3) is at most a tenth of the ~2 bp a day a full carry book earns on the
    # demo market, so the shaping cannot outweigh the carry.
    spec = MetaSpec()
    assert spec.entropy_weight * 1.0 + spec.balance_weight * 3.0 <= 0.1 * 2.0 + 1e-12


def test_the_load_balancing_term_penalises_collapse_in_the_reward(inputs, expert_dirs) -> None:
    spec = MetaSpec(entropy_weight=0.0, balance_weight=2.4, decision_bars=1)  # 0.1 bp an hour
    rewards = {}
    for label, logits in {"even": np.zeros(3), "collapsed": np.array([1.0, -1.0, -1.0])}.items():
        base, core = _core(inputs, expert_dirs, spec)
        raw, _ = base.reset(seed=0)
        core.reset_envs(np.ones(4, bool))
        total = np.zeros(4)
        for _ in range(20):
            bars = current_bars(base)
            core.observe(raw, bars)
            core.actions(np.tile(logits, (4, 1)))
            # The same env reward for both, so only the shaping differs.
            total += core.feedback(bars, np.zeros(4))
            raw = base.step(np.zeros((4, 2)))[0]
        rewards[label] = total
    assert (rewards["even"] == 0).all()
    assert (rewards["collapsed"] < -0.01).all()  # usage drifts onto one option: penalised


def test_the_anomaly_multiplier_applies_on_top(inputs, expert_dirs) -> None:
    base, core = _core(inputs, expert_dirs, MetaSpec(gating="top1"))
    raw, _ = base.reset(seed=0)
    core.reset_envs(np.ones(4, bool))
    obs = core.observe(raw, current_bars(base))
    assert obs.shape == (4, core.obs_dim) and np.isfinite(obs).all()
    assert ((core.multiplier >= 0) & (core.multiplier <= 1)).all()
    action = core.actions(np.tile([1.0, -1.0, -1.0], (4, 1)))  # top-1: short_term
    np.testing.assert_allclose(action, core.multiplier * core.suggestions[:, 0])


def _train(spec: MetaSpec, inputs: FoldInputs, experts: dict[str, str], root: Path, **kw):  # noqa: ANN202
    return train_meta_controller(
        spec,
        {k: v for k, v in experts.items() if k != "anomaly"},
        inputs.train_market,
        inputs.train_windows,
        inputs.fold,
        models_root=root,
        anomaly=experts["anomaly"],
        stats=inputs.stats,
        **kw,
    )


def test_same_seed_same_weights_saved_files_and_registry_row(inputs, expert_dirs, tmp_path) -> None:
    spec = MetaSpec(**TINY)
    a = _train(spec, inputs, expert_dirs, tmp_path / "a")
    b = _train(spec, inputs, expert_dirs, tmp_path / "b")
    c = _train(replace(spec, seed=1), inputs, expert_dirs, tmp_path / "c")
    pa, _, _ = load_meta_controller(a.model_path)
    pb, _, _ = load_meta_controller(b.model_path)
    pc, experts, anomaly = load_meta_controller(c.model_path)
    sa, sb, sc = (p.model.policy.state_dict() for p in (pa, pb, pc))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # bitwise
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert set(experts) == {"short_term", "sentiment"} and anomaly is not None
    folder = Path(a.model_path)
    assert folder == tmp_path / "a" / "meta" / "fold0"
    assert {"model.zip", "spec.json", "record.json", "normalisation_stats.parquet"} <= {
        p.name for p in folder.iterdir()
    }
    assert a.expert == "meta" and a.timesteps == 512 and a.threads == 1 and a.seed == 0
    assert a.spec["experts"]["short_term"] == expert_dirs["short_term"]
    weights = a.validation["mean_weights"]
    assert set(weights) == {"short_term", "sentiment", "flat"}
    assert sum(weights.values()) == pytest.approx(1.0)
    assert json.loads((folder / "record.json").read_text())["validation"] == a.validation


def test_bad_input_fails_naming_the_problem(inputs, expert_dirs, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"meta-controller 'meta': gating 'argmax' is not one"):
        MetaSpec(gating="argmax")
    with pytest.raises(ValueError, match=r"balance_weight=-1.0 must be >= 0"):
        MetaSpec(balance_weight=-1.0)
    with pytest.raises(ValueError, match=r"expert 'anomaly' .* is not a continuous weights"):
        train_meta_controller(
            MetaSpec(**TINY),
            {"anomaly": expert_dirs["anomaly"]},
            inputs.train_market,
            inputs.train_windows,
            inputs.fold,
            models_root=tmp_path,
        )
    with pytest.raises(ValueError, match=r"fold 0 \(meta\): 50 market bars lie outside"):
        train_meta_controller(
            MetaSpec(**TINY),
            {"short_term": expert_dirs["short_term"]},
            inputs.market,
            inputs.train_windows,
            inputs.fold,
            models_root=tmp_path,
        )
    assert not (tmp_path / "meta").exists()


TRAIN_BARS, TEST_BARS = 400, 120


def test_meta_over_trained_experts_beats_flat_and_random_on_held_out_bars(tmp_path) -> None:
    frame = carry_frame(TRAIN_BARS + 1 + TEST_BARS, ("BTC", "ETH"), funding_bp=10.0)
    data = fold_inputs(frame, tmp_path / "w", train_bars=TRAIN_BARS, test_bars=TEST_BARS)
    # Hourly bars: every agent decides every 4 hours, 12 decisions a 48-bar episode.
    budget = {
        "episode_length": 48, "decision_bars": 4, "n_envs": 16, "n_steps": 32, "batch_size": 256,
    }  # fmt: skip
    short = train_expert(
        expert_spec("short_term", timesteps={"demo": 4_096, "full": 4_096}, **budget),
        data.train_market,
        data.train_windows,
        data.fold,
        models_root=tmp_path,
    )
    # A barely trained second expert: the gate has something worse to avoid.
    weak = train_expert(
        expert_spec("sentiment", timesteps={"demo": 512, "full": 512}, **budget),
        data.train_market,
        data.train_windows,
        data.fold,
        models_root=tmp_path,
    )
    experts = {"short_term": short.model_path, "sentiment": weak.model_path}
    spec = MetaSpec(timesteps={"demo": 4_096, "full": 4_096}, **budget)
    rec = train_meta_controller(
        spec, experts, data.train_market, data.train_windows, data.fold, models_root=tmp_path
    )
    meta, policies, _ = load_meta_controller(rec.model_path)
    rng = np.random.default_rng(0)

    def held_out(actor, gating: str = "softmax"):  # noqa: ANN001, ANN202
        return meta_rollout(
            actor,
            data.market,
            data.test_windows,
            policies,
            replace(spec, gating=gating),
            spec.env_config(),
            start=data.test_start_bar,
            end=data.market.n_bars - 1,
            seed=7,
        ).metrics

    trained = held_out(meta)
    flat = held_out(lambda o: np.array([[-1.0, -1.0, 1.0]]), "top1")
    random = held_out(lambda o: rng.uniform(-1, 1, (1, 3)))
    assert trained.steps == flat.steps == TEST_BARS - 1
    assert flat.net_carry == pytest.approx(0.0, abs=1e-6)
    # Full long carry on both assets nets about 8,700 USDT over these bars (test_learning.py).
    assert trained.net_carry > 2_000, trained
    assert trained.net_carry > random.net_carry + 500, (trained, random)
