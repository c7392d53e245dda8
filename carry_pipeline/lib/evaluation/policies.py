"""Trained models as backtest policies: adapters from `CarryTradeEnv`'s flat observation to what the
experts and the meta-controller were trained on, behind stable-baselines3's `predict`.

An expert acts on a Dict observation built from the fold's normalised windows and chosen entries of
the env observation (`lib.training.observation.ObservationBuilder`), and its action is mapped to
the env's (`map_actions`: weights as they are, an exposure multiplier times the reference carry
book). The meta-controller asks its frozen experts for their suggestions, gates them and applies the
anomaly expert's multiplier (`lib.training.meta.MetaCore`). Both adapters do exactly what the
training wrappers (`ExpertVecEnv`, `MetaVecEnv`) do, on one env: `reset(env)`, which the backtest
runner calls before the first step, builds the gathers for that env's bars and names and checks
that the model's observation space is the one the env and the windows give; `predict` reads the
current bar from the env's engine.

For a fold's test span the windows are the fold's `test` segment of `training_windows` (normalised
with that fold's train statistics; the first window ends at the first test bar). On bars before any
window ends (a stress frame of other dates) the window part is zeros and `window_valid` 0, as in
training.

`baseline_policies()` names the four rule baselines as the `reports` tables name them.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import polars as pl
from gymnasium import spaces

from carry_env import kernel as k
from carry_env.env import CarryTradeEnv
from carry_pipeline.lib.evaluation.backtest import Policy
from carry_pipeline.lib.evaluation.baselines import Flat, FundingSignRule, LongCarry, SpotBuyAndHold
from carry_pipeline.lib.schemas import UTC_TS
from carry_pipeline.lib.training.cadence import DecisionClock
from carry_pipeline.lib.training.meta import MetaCore, MetaPolicy, load_meta_controller
from carry_pipeline.lib.training.observation import ObservationBuilder, WindowSet, map_actions
from carry_pipeline.lib.training.policy import ExpertPolicy, load_expert

BASELINES = ("flat", "long_carry", "funding_rule", "buy_and_hold")
"""Names of the rule baselines in `reports.backtest_metrics`."""

EXPERT_WEIGHTS_SCHEMA: dict[str, pl.DataType] = {
    "fold": pl.Int64(),
    "ts": UTC_TS,
    "option": pl.String(),
    "weight": pl.Float64(),
}
"""`reports.expert_weights`: the meta-controller's gating weight of each option (the gated experts
and `flat`) at each decision bar `ts`, and `option = "exposure"`: the anomaly expert's multiplier
(mean over assets; 1 without one)."""


def baseline_policies() -> dict[str, Policy]:
    """Fresh rule baselines at their defaults, by name (`BASELINES`)."""
    return {
        "flat": Flat(),
        "long_carry": LongCarry(),
        "funding_rule": FundingSignRule(),
        "buy_and_hold": SpotBuyAndHold(),
    }


def _shapes(space: Any) -> Any:
    if isinstance(space, spaces.Dict):
        return {key: sub.shape for key, sub in space.spaces.items()}
    return tuple(space.shape)


def _check_symbols(env: CarryTradeEnv, windows: WindowSet, where: str) -> None:
    if tuple(windows.symbols) != tuple(env.market.symbols):
        raise ValueError(
            f"{where}: the windows hold symbols {list(windows.symbols)}, the env trades "
            f"{list(env.market.symbols)}"
        )


def _current_bar(env: CarryTradeEnv | None, what: str) -> int:
    if env is None:
        raise RuntimeError(f"{what}.reset(env) must be called before predict()")
    return int(env.engine.is_[0, k.I_T])


class ExpertBacktestPolicy:
    """A trained expert on one `CarryTradeEnv` (module docstring).

    Args:
        expert: the loaded expert.
        windows: the fold's windows covering the bars it will act on.
        name: the expert's name in the reports (`short_term`, ...).
        fold: the fold it was trained on (named in errors).
        path: its model folder (named in errors).
    """

    def __init__(
        self, expert: ExpertPolicy, windows: WindowSet, *, name: str, fold: int | None, path: str
    ) -> None:
        self.expert, self.windows = expert, windows
        self.name, self.fold, self.path = name, fold, path
        self.where = f"fold {fold}, model {name!r} ({path})"
        if expert.spec.algorithm == "MaskablePPO":
            raise ValueError(
                f"{self.where}: MaskablePPO experts act on the discrete env; the backtest runs "
                "the continuous one"
            )
        self._env: CarryTradeEnv | None = None
        self._builder: ObservationBuilder | None = None
        self._state: Any = None
        self._clock: DecisionClock | None = None
        self.last_output = np.zeros(0)

    def reset(self, env: CarryTradeEnv) -> None:
        """Build the observation gathers for `env` and check the model fits them.

        Raises:
            ValueError: other symbols, or the model's observation space differs from the one the
                env and the windows give; the message names the fold and the model.
        """
        _check_symbols(env, self.windows, self.where)
        builder = ObservationBuilder(
            self.windows,
            self.expert.spec.observation,
            env.market.ts,
            env.observation_names,
            env.market.symbols,
        )
        want, got = _shapes(self.expert.model.observation_space), _shapes(builder.observation_space)
        if want != got:
            raise ValueError(
                f"{self.where}: the model expects observations of shape {want}, the env and the "
                f"fold's windows give {got} ({env.market.n_symbols} symbols, "
                f"{len(self.windows.features)} window features)"
            )
        self._env, self._builder, self._state = env, builder, None
        self._clock = DecisionClock(self.expert.spec.decision_bars, env.market.bar_seconds)

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """The env action of the expert's deterministic decision at the current bar, or hold
        (NaN) between its decision bars (`cadence.DecisionClock`)."""
        bar = _current_bar(self._env, "ExpertBacktestPolicy")
        assert self._builder is not None and self._env is not None and self._clock is not None
        if not self._clock.due(int(self._env.market.ts[bar])):
            return np.full(self._env.market.n_symbols, np.nan), state
        raw = np.asarray(observation)[None, :]
        obs = self._builder.build(raw, np.array([bar]))
        out = self.expert.act(obs, self._state, episode_start, deterministic=True)
        self._state = out.state
        self.last_output = np.asarray(out.output, dtype=np.float64)[0]
        action = map_actions(
            self.expert.spec.output,
            out.action,
            raw,
            self._env.observation_names,
            leverage_cap=self._env.config.leverage_cap,
            band=self.expert.spec.band(),
        )
        return np.asarray(action, dtype=np.float64)[0], state

    def get_state(self) -> dict[str, Any]:
        """What `predict` carries between bars: the expert's recurrent state (None for a
        feed-forward expert), its last output and its decision clock's last period."""
        clock = None if self._clock is None else self._clock.get_state()
        return {"state": self._state, "last_output": self.last_output.copy(), "clock": clock}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a `get_state()` (after `reset(env)`), e.g. when a paper session resumes."""
        self._state = state["state"]
        self.last_output = np.asarray(state["last_output"], dtype=np.float64)
        if self._clock is not None:
            self._clock.set_state(state.get("clock"))


class MetaBacktestPolicy:
    """A trained meta-controller and its frozen experts on one `CarryTradeEnv` (module docstring).

    After a backtest, `weights_frame()` holds its gating weights and exposure at every decision.
    """

    def __init__(
        self,
        meta: MetaPolicy,
        experts: dict[str, ExpertPolicy],
        anomaly: ExpertPolicy | None,
        windows: WindowSet,
        *,
        fold: int | None,
        path: str,
        name: str = "meta_controller",
    ) -> None:
        self.meta, self.experts, self.anomaly, self.windows = meta, experts, anomaly, windows
        self.fold, self.path, self.name = fold, path, name
        self.where = f"fold {fold}, model {name!r} ({path})"
        self._env: CarryTradeEnv | None = None
        self._core: MetaCore | None = None
        self._prev_bar: int | None = None
        self._clock: DecisionClock | None = None
        self.decided = False
        """Whether the last `predict` decided (False on a bar it held)."""
        self._ts: list[int] = []
        self._weights: list[np.ndarray] = []
        self._exposure: list[float] = []

    @property
    def options(self) -> tuple[str, ...]:
        """The gated experts and `flat`, in the order of the gating weights."""
        return (*self.meta.experts, "flat")

    @property
    def multiplier(self) -> float:
        """The anomaly expert's exposure multiplier last read (mean over assets): at the last
        decision, or at a later bar where the risk overlay read it (`MetaCore.between`)."""
        if self._core is None:
            raise RuntimeError("MetaBacktestPolicy.reset(env) must be called first")
        return float(np.mean(self._core.multiplier[0]))

    def reset(self, env: CarryTradeEnv) -> None:
        """Build the meta-environment's logic over `env` and check the model fits it.

        Raises:
            ValueError: other symbols, experts the meta cannot gate, or an observation size that
                differs from the model's; the message names the fold and the model.
        """
        _check_symbols(env, self.windows, self.where)
        view = SimpleNamespace(
            observation_names=env.observation_names, market=env.market, num_envs=1,
            config=env.config,
        )  # fmt: skip
        try:
            core = MetaCore(view, self.windows, self.experts, self.meta.spec, self.anomaly)
            for name, expert in (*self.experts.items(), ("anomaly", self.anomaly)):
                if expert is None:
                    continue
                builder = ObservationBuilder(
                    self.windows, expert.spec.observation, env.market.ts,
                    env.observation_names, env.market.symbols,
                )  # fmt: skip
                want = _shapes(expert.model.observation_space)
                if want != _shapes(builder.observation_space):
                    raise ValueError(
                        f"its expert {name!r} expects observations of shape {want}, the env and "
                        f"the fold's windows give {_shapes(builder.observation_space)}"
                    )
        except ValueError as exc:
            raise ValueError(f"{self.where}: {exc}") from exc
        want_meta = _shapes(self.meta.model.observation_space)
        if want_meta != _shapes(core.observation_space):
            raise ValueError(
                f"{self.where}: the model expects observations of shape {want_meta}, the env "
                f"gives {_shapes(core.observation_space)} ({len(self.experts)} experts, "
                f"{env.market.n_symbols} symbols)"
            )
        core.reset_envs(np.ones(1, dtype=bool))
        self._env, self._core, self._prev_bar = env, core, None
        self._clock = DecisionClock(self.meta.spec.decision_bars, env.market.bar_seconds)
        self._ts, self._weights, self._exposure = [], [], []

    def restart(self) -> None:
        """Start a new episode on the env of `reset(env)` without rebuilding its gathers: the
        experts' running statistics, the usage and the recurrent states restart and the recorded
        weights are dropped, so the next `predict` decides as the first one after `reset(env)`."""
        if self._core is None:
            raise RuntimeError("MetaBacktestPolicy.reset(env) must be called before restart()")
        self._core.reset_envs(np.ones(1, dtype=bool))
        self._prev_bar = None
        assert self._clock is not None  # set with the core by reset(env)
        self._clock.restart()
        self._ts, self._weights, self._exposure = [], [], []

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """On a decision bar (`cadence.DecisionClock` of the spec's `decision_bars`): update the
        experts' running statistics with the bars since the last decision, observe, gate,
        combine. On the other bars: hold (NaN), except where the anomaly expert cuts
        (`MetaCore.between`, as in training)."""
        bar = _current_bar(self._env, "MetaBacktestPolicy")
        core, env, clock = self._core, self._env, self._clock
        assert core is not None and env is not None and clock is not None
        self.decided = clock.due(int(env.market.ts[bar]))
        if not self.decided:
            held = core.between(np.asarray(observation)[None, :], np.array([bar]))
            return np.asarray(held, dtype=np.float64)[0], state
        if self._prev_bar is not None:
            # The running reward/Sharpe and usage do not depend on the env reward (only the
            # shaped training reward does), so zeros stand in for it.
            core.feedback(np.array([self._prev_bar]), np.zeros(1), np.array([bar]))
        meta_obs = core.observe(np.asarray(observation)[None, :], np.array([bar]))
        action = core.actions(self.meta(meta_obs))
        self._prev_bar = bar
        self._ts.append(int(env.market.ts[bar]))
        self._weights.append(core.weights[0].copy())
        self._exposure.append(float(np.mean(core.multiplier[0])))
        return np.asarray(action, dtype=np.float64)[0], state

    def get_state(self) -> dict[str, Any]:
        """What `predict` carries between bars: the meta core's state (`MetaCore.get_state`: the
        experts' LSTM states, running statistics, usage), the last decision's bar and its
        decision clock's period. The
        per-decision history behind `weights_frame()` is not part of it.

        Raises:
            RuntimeError: `reset(env)` was not called.
        """
        if self._core is None:
            raise RuntimeError("MetaBacktestPolicy.reset(env) must be called first")
        assert self._clock is not None  # set with the core by reset(env)
        return {
            "core": self._core.get_state(),
            "prev_bar": self._prev_bar,
            "clock": self._clock.get_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a `get_state()` after `reset(env)` (a paper session resuming).

        Raises:
            RuntimeError: `reset(env)` was not called.
            ValueError: the state does not fit this meta-controller (named).
        """
        if self._core is None:
            raise RuntimeError("MetaBacktestPolicy.reset(env) must be called first")
        try:
            self._core.set_state(state["core"])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{self.where}: cannot restore its state: {exc}") from exc
        prev = state["prev_bar"]
        self._prev_bar = None if prev is None else int(prev)
        # A state saved before decisions had a cadence decides at the next bar.
        assert self._clock is not None  # set with the core by reset(env)
        self._clock.set_state(state.get("clock"))

    def last_decision(self) -> dict[str, Any]:
        """The last `predict`'s per-expert suggestions (`expert_outputs`, per asset, plus the
        anomaly expert's multiplier under `exposure`) and `gating_weights` by option."""
        if self._core is None or self._prev_bar is None:
            raise RuntimeError("MetaBacktestPolicy.last_decision() needs a predict() first")
        core = self._core
        outputs = {n: core.suggestions[0, j].tolist() for j, n in enumerate(core.names)}
        outputs["exposure"] = core.multiplier[0].tolist()
        weights = dict(zip(self.options, core.weights[0].tolist(), strict=True))
        return {"expert_outputs": outputs, "gating_weights": weights}

    def weights_frame(self, fold: int | None = None) -> pl.DataFrame:
        """`EXPERT_WEIGHTS_SCHEMA` rows of the last backtest (fold defaults to the model's)."""
        n = len(self._ts)
        opts = (*self.options, "exposure")
        values = np.column_stack([np.array(self._weights).reshape(n, -1), self._exposure])
        ts = (
            pl.Series(np.repeat(np.array(self._ts, dtype=np.int64), len(opts)))
            .cast(pl.Datetime("ns"))
            .dt.replace_time_zone("UTC")
            .cast(UTC_TS)
        )
        return pl.DataFrame(
            {
                "fold": [self.fold if fold is None else fold] * (n * len(opts)),
                "ts": ts,
                "option": list(opts) * n,
                "weight": values.reshape(-1) if n else np.zeros(0),
            },
            schema=EXPERT_WEIGHTS_SCHEMA,
        )


def load_expert_policy(
    path: str | Path, windows: WindowSet, *, name: str, fold: int | None
) -> ExpertBacktestPolicy:
    """`ExpertBacktestPolicy` of the expert saved in `path` (loaded on the CPU).

    Raises:
        FileNotFoundError: no saved expert there (the message names the fold and model).
    """
    try:
        expert = load_expert(path, device="cpu")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"fold {fold}, model {name!r}: {exc}") from exc
    return ExpertBacktestPolicy(expert, windows, name=name, fold=fold, path=str(path))


def load_meta_policy(
    path: str | Path, windows: WindowSet, *, fold: int | None, name: str = "meta_controller"
) -> MetaBacktestPolicy:
    """`MetaBacktestPolicy` of the meta-controller saved in `path` with the experts it gates.

    Raises:
        FileNotFoundError: no saved meta-controller there, or one of its experts is gone.
    """
    try:
        meta, experts, anomaly = load_meta_controller(path, device="cpu")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"fold {fold}, model {name!r}: {exc}") from exc
    return MetaBacktestPolicy(meta, experts, anomaly, windows, fold=fold, path=str(path), name=name)
