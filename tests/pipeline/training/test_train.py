"""train_expert / load_expert: reproducible weights, the registry row and saved files, every
algorithm, bad input failing at once naming the fold, and a failed training leaving the saved
model as it was."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from carry_pipeline.lib.training.policy import eval_predict, load_expert, pinned_threads
from carry_pipeline.lib.training.specs import LONG_TERM_RECURRENT, ExpertSpec, expert_spec
from carry_pipeline.lib.training.train import data_sha256, train_expert

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


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> FoldInputs:
    root = tmp_path_factory.mktemp("windows")
    return fold_inputs(carry_frame(200, ("BTC", "ETH")), root, train_bars=150, test_bars=40)


def _train(spec: ExpertSpec, inputs: FoldInputs, root: Path, **kw):  # noqa: ANN202
    return train_expert(
        spec,
        inputs.train_market,
        inputs.train_windows,
        inputs.fold,
        models_root=root,
        stats=inputs.stats,
        **kw,
    )


def _params(path: str) -> dict[str, torch.Tensor]:
    return load_expert(path).model.policy.state_dict()


def test_same_seed_same_weights_other_seed_other_weights(inputs, tmp_path) -> None:
    spec = expert_spec("short_term", **TINY)
    a = _params(_train(spec, inputs, tmp_path / "a").model_path)
    b = _params(_train(spec, inputs, tmp_path / "b").model_path)
    c = _params(_train(replace(spec, seed=1), inputs, tmp_path / "c").model_path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_registry_row_and_saved_files(inputs, tmp_path) -> None:
    lines: list[str] = []

    class Log:
        def info(self, msg: str) -> None:
            lines.append(msg)

    spec = expert_spec("anomaly", **TINY)
    rec = _train(spec, inputs, tmp_path, logger=Log())
    folder = Path(rec.model_path)
    assert folder == tmp_path / "anomaly" / "fold0"
    names = {p.name for p in folder.iterdir()}
    assert {
        "model.zip",
        "spec.json",
        "env_config.json",
        "record.json",
        "normalisation_stats.parquet",
    } <= names
    assert rec.threads == 1 and rec.seed == 0 and rec.device == "cpu" and rec.timesteps == 512
    assert rec.train_start == inputs.fold.train_start and rec.train_end == inputs.fold.train_end
    # The held-out tail is inside the train span, after the fit part: 20 % of the covered bars.
    assert inputs.fold.train_start < rec.fit_end < inputs.fold.train_end
    assert rec.validation["steps"] == pytest.approx(0.2 * 143, abs=2)
    assert rec.env_config["flash_crash_per_day"] == 0.5
    assert rec.data_sha256 == data_sha256(inputs.train_windows, inputs.train_market)
    assert [p[0] for p in rec.curve["points"]] == [256, 512]
    assert any("anomaly: 512 timesteps" in m and "fps" in m for m in lines)
    # The anomaly expert is warm-started by imitation of the risk teacher; the row says how it went.
    warm = rec.curve["warm_start"]
    assert warm["observations"] == 2_048 and 0 < warm["teacher_cut_share"] < 1, warm
    assert any("anomaly: warm start on 2048 teacher-labelled observations" in m for m in lines)
    assert json.loads((folder / "record.json").read_text())["data_sha256"] == rec.data_sha256
    # The loaded policy acts as the trained one; its output is a multiplier in [0, 1].
    policy = load_expert(folder)
    obs = {
        k: np.asarray(v.sample()[None]) * 0.1
        for k, v in policy.model.observation_space.spaces.items()
    }
    out = policy.act(obs)
    assert out.output.shape == (1, 2) and ((out.output >= 0) & (out.output <= 1)).all()


def test_data_hash_sees_a_changed_window_value(inputs) -> None:
    w = inputs.train_windows
    changed = replace(w, values=np.array(w.values).copy())
    changed.values[50, 1, 2] += 1e-3
    assert data_sha256(changed, inputs.train_market) != data_sha256(w, inputs.train_market)


@pytest.mark.parametrize(
    "spec",
    [
        replace(LONG_TERM_RECURRENT, **TINY, lstm_hidden_size=16),
        expert_spec("sentiment", algorithm="MaskablePPO", **TINY),
        expert_spec("long_term", extractor="mlp", **TINY),
    ],
    ids=["recurrent_long_term", "maskable_sentiment", "mlp_frame_stacked_long_term"],
)
def test_every_algorithm_trains_saves_and_acts(spec: ExpertSpec, inputs, tmp_path) -> None:
    rec = _train(spec, inputs, tmp_path)
    policy = load_expert(rec.model_path)
    assert policy.spec == spec
    assert rec.validation["steps"] > 0
    obs = {
        k: np.zeros((2, *v.shape), np.float32)
        for k, v in policy.model.observation_space.spaces.items()
    }
    if spec.algorithm == "RecurrentPPO":
        out = policy.act(obs)
        again = policy.act(obs, out.state, episode_start=np.zeros(2, bool))
        assert out.state[0].shape == (1, 2, 16) and again.action.shape == (2, 2)
    elif spec.algorithm == "MaskablePPO":
        masks = np.zeros((2, 1 + 2 * 7), bool)
        masks[:, 0] = True  # only hold allowed
        assert (policy.act(obs, action_masks=masks).action == 0).all()


def test_bad_input_fails_naming_the_fold(inputs, tmp_path) -> None:
    spec = expert_spec("short_term", **TINY)
    few = fold_inputs(carry_frame(60, ("BTC", "ETH")), tmp_path / "w", train_bars=40, test_bars=8)
    with pytest.raises(ValueError, match=r"fold 0 \(short_term\): too few train bars: 40 bars"):
        _train(spec, few, tmp_path)
    other = fold_inputs(
        carry_frame(200, ("BTC", "ETH")).drop("f_noise"),
        tmp_path / "w2",
        train_bars=150,
        test_bars=40,
    )
    with pytest.raises(
        ValueError,
        match=r"fold 0 \(short_term\): window features differ .*"
        r"in the market only: \[\]; in the windows only: "
        r"\['f_noise'\]",
    ):
        train_expert(
            spec, other.train_market, inputs.train_windows, inputs.fold, models_root=tmp_path
        )
    with pytest.raises(ValueError, match=r"fold 0 \(short_term\): 50 market bars lie outside"):
        train_expert(spec, inputs.market, inputs.train_windows, inputs.fold, models_root=tmp_path)
    with pytest.raises(ValueError, match=r"'test' segment"):
        train_expert(
            spec, inputs.train_market, inputs.test_windows, inputs.fold, models_root=tmp_path
        )
    with pytest.raises(ValueError, match=r"expert 'short_term': algorithm 'A2C' is not one of"):
        ExpertSpec.from_dict({**spec.to_dict(), "algorithm": "A2C"})
    assert not (tmp_path / "short_term").exists()  # nothing was written


def test_failed_training_leaves_the_saved_model_untouched(inputs, tmp_path) -> None:
    spec = expert_spec("short_term", **TINY)
    folder = Path(_train(spec, inputs, tmp_path).model_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    class Crash:
        def info(self, msg: str) -> None:
            raise RuntimeError("killed mid-training")

    with pytest.raises(RuntimeError, match="killed mid-training"):
        _train(replace(spec, seed=5), inputs, tmp_path, logger=Crash())
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in folder.parent.iterdir()] == ["fold0"]  # no staging folder left


def test_eval_predict_equals_sb3_predict(inputs, tmp_path) -> None:
    # The inference fast path must give SB3's own deterministic and sampled actions, for one
    # observation and a batch, whether the policy was left in training mode or not.
    model = load_expert(
        _train(expert_spec("short_term", **TINY), inputs, tmp_path).model_path
    ).model
    rng = np.random.default_rng(0)
    spaces_ = model.observation_space.spaces
    batch = {k: rng.normal(0.0, 2.0, (5, *v.shape)).astype(np.float32) for k, v in spaces_.items()}
    single = {k: v[0] for k, v in batch.items()}
    for obs in (batch, single):
        model.policy.set_training_mode(True)
        fast = eval_predict(model, obs, deterministic=True)
        assert not model.policy.training
        np.testing.assert_array_equal(fast, model.predict(obs, deterministic=True)[0])
        torch.manual_seed(3)
        sampled = eval_predict(model, obs, deterministic=False)
        torch.manual_seed(3)
        np.testing.assert_array_equal(sampled, model.predict(obs, deterministic=False)[0])
    assert eval_predict(model, batch).shape == (5, 2)
    assert np.abs(eval_predict(model, batch)).max() <= 1.0  # clipped to the action space


def test_eval_predict_equals_sb3_predict_on_a_flat_box_observation() -> None:
    # The meta-controller's policy: an MLP over one (D,) array. Its deterministic fast path
    # (no deep copy, no distribution) must give SB3's own actions, and a wrong shape the same
    # error SB3 raises rather than a silent reshape.
    import gymnasium as gym
    from stable_baselines3 import PPO

    space = gym.spaces.Box(-5.0, 5.0, (7,), np.float32)
    actions = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)

    class Flat(gym.Env):
        observation_space, action_space = space, actions

    model = PPO("MlpPolicy", Flat(), seed=0, device="cpu")
    rng = np.random.default_rng(1)
    batch = rng.normal(0.0, 3.0, (6, 7)).astype(np.float32)
    frozen = batch.copy()
    frozen.flags.writeable = False  # as the env's read-only outputs: copied, no torch warning
    for obs in (batch, batch[0], batch.astype(np.float64), frozen):
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            fast = eval_predict(model, obs)
        np.testing.assert_array_equal(fast, model.predict(obs, deterministic=True)[0])
    with pytest.raises(ValueError, match="observation shape"):
        eval_predict(model, rng.normal(size=(14,)).astype(np.float32))


def test_pinned_threads_restores_the_count_even_when_the_block_fails() -> None:
    before = torch.get_num_threads()
    with pinned_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), pinned_threads(2):
        raise RuntimeError("training failed")
    assert torch.get_num_threads() == before


def test_tensorboard_logs_are_written_when_enabled(inputs, tmp_path) -> None:
    # `model_settings.tensorboard` passes a folder here; SB3 fails at `learn` when the tensorboard
    # package is missing, so this also guards the dependency.
    spec = expert_spec("short_term", **TINY)
    logs = tmp_path / "tb"
    _train(spec, inputs, tmp_path / "m", tensorboard_dir=logs)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [d for d in logs.iterdir() if d.is_dir()]
    assert runs, f"no TensorBoard run folder under {logs}"
    accumulator = EventAccumulator(str(runs[0]))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"rollout/ep_rew_mean", "train/loss", "time/fps"} <= tags, tags
    assert len(accumulator.Scalars("train/loss")) >= 1
