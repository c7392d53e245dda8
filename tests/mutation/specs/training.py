"""Curated mutations of the training stage's risk and reuse mechanics (the exposure band, the
fitted multiplier, the meta-controller's risk overlay, the code version in the reuse key) and of
the expert observation's window gather and the inference fast path; each checked by hand
to fail at least one of its tests."""

from __future__ import annotations

from tests.mutation.spec import Mutation

_OBS = "carry_pipeline/lib/training/observation.py"
_META = "carry_pipeline/lib/training/meta.py"
_T = "tests/pipeline/training/"
_T_OBS = _T + "test_observation.py"
_T_CAD = _T + "test_cadence.py"
_T_META = _T + "test_meta.py"

MUTATIONS: list[Mutation] = [
    Mutation(
        id="band-cut-threshold",
        path=_OBS,
        old="cut = size_h - size_t > self.cut * size_h",
        new="cut = size_h - size_t > self.add * size_h",
        tests=(_T_OBS,),
        note="cuts need the (wider) addition band: a 15 % cut of the book waits",
    ),
    Mutation(
        id="band-add-threshold",
        path=_OBS,
        old="add = size_t - size_h > self.add * size_t",
        new="add = size_t - size_h > self.cut * size_t",
        tests=(_T_OBS,),
        note="additions trade as readily as cuts: the book re-enters fast",
    ),
    Mutation(
        id="band-thin-margin",
        path=_OBS,
        old="due = changes_side | ((target != 0.0) & (cut | add | thin))",
        new="due = changes_side | ((target != 0.0) & (cut | add))",
        tests=(_T_OBS,),
        note="a held pair with a thin perp margin is never re-traded",
    ),
    Mutation(
        id="band-unclamped-target",
        path=_OBS,
        old='target = leverage_fit(targets, entry("max_leverage"), leverage_cap)',
        new="target = np.asarray(targets, dtype=np.float64)",
        tests=(_T_OBS,),
        note="the band compares the held book with a target the env would clamp: it re-trades",
    ),
    Mutation(
        id="band-bypassed",
        path=_OBS,
        old="        return band.actions(targets, env_obs, env_names, leverage_cap)",
        new="        return targets",
        tests=(_T_OBS,),
        note="an exposure book re-trades at every move of the multiplier",
    ),
    Mutation(
        id="band-not-in-spec",
        path="carry_pipeline/lib/training/specs.py",
        old="        return ExposureBand(cut=self.band_cut, add=self.band_add)",
        new="        return None",
        tests=(_T + "test_specs.py",),
        note="the anomaly expert trains and backtests without its band",
    ),
    Mutation(
        id="meta-multiplier-before-fit",
        path=_META,
        old="        mixed = leverage_fit(mixed, max_leverage, leverage_cap)",
        new="        pass",
        tests=(_T_META, _T_CAD),
        note="the multiplier scales an over-limit book that the env's clamp then absorbs",
    ),
    Mutation(
        id="overlay-no-band",
        path=_META,
        old="cut = self.multiplier < (1.0 - self.anomaly.spec.band_cut) * self.applied",
        new="cut = self.multiplier < self.applied",
        tests=(_T_CAD,),
        note="every dip of the multiplier between decisions re-trades the meta book",
    ),
    Mutation(
        id="overlay-forgets-its-cut",
        path=_META,
        old="        self.applied = np.where(cut, self.multiplier, self.applied)\n",
        new="",
        tests=(_T_CAD,),
        note="after a cut the book counts as unsized, so later bars cut it again",
    ),
    Mutation(
        id="overlay-decision-keeps-old-size",
        path=_META,
        old="        self.applied = self.multiplier.copy()\n        return self._combine()",
        new="        return self._combine()",
        tests=(_T_CAD,),
        note="a decision does not reset the size the band is measured from",
    ),
    Mutation(
        id="overlay-not-in-training",
        path="carry_pipeline/lib/training/cadence.py",
        old="step = np.where(dones[:, None], hold, self.between(np.asarray(obs), bars))",
        new="step = hold",
        tests=(_T_CAD,),
        note="the meta-controller trains without the risk cuts it is backtested with",
    ),
    Mutation(
        id="overlay-not-in-backtest",
        path="carry_pipeline/lib/evaluation/policies.py",
        old="            held = core.between(np.asarray(observation)[None, :], np.array([bar]))",
        new="            held = np.full((1, env.market.n_symbols), np.nan)",
        tests=("tests/pipeline/trading/test_champion_session.py",),
        note="the backtest and the paper session hold through a stress cut",
    ),
    Mutation(
        id="code-version-keeps-docstrings",
        path="carry_pipeline/lib/training/code_version.py",
        old="            return None\n        return node",
        new="            return node\n        return node",
        tests=(_T + "test_code_version.py",),
        note="an edit to a docstring changes the version and retrains every model",
    ),
    Mutation(
        id="reuse-key-without-code-version",
        path="carry_pipeline/lib/training/reuse.py",
        old="        code_version=code_version(),",
        new='        code_version="x",',
        tests=("tests/pipeline/test_rerun.py",),
        note="the key's code version never matches a registry row: nothing is ever reused",
    ),
    Mutation(
        id="window-before-first-end-not-zeroed",
        path=_OBS,
        old="            win[~valid] = 0.0",
        new="            pass",
        tests=(_T_OBS,),
        note="a bar before any window has ended sees the first stored rows instead of zeros",
    ),
    Mutation(
        id="window-subset-read-from-every-feature",
        path=_OBS,
        old="if self.feature_idx.shape[0] == values.shape[2] and values.dtype == np.float32:",
        new="if values.dtype == np.float32:",
        tests=(_T_OBS,),
        note="a spec reading some features is given every feature of the windows",
    ),
    Mutation(
        id="eval-predict-critic-latent",
        path="carry_pipeline/lib/training/policy.py",
        old="policy.mlp_extractor.forward_actor(features)",
        new="policy.mlp_extractor.forward_critic(features)",
        tests=(
            _T + "test_train.py::test_eval_predict_equals_sb3_predict",
            _T + "test_train.py::test_eval_predict_equals_sb3_predict_on_a_flat_box_observation",
        ),
        note="the inference fast path reads the value network's latent: not the policy's action",
    ),
]
