"""Decision cadence: an agent decides once every `decision_bars` bars and holds its book between.

On 15-minute bars a policy that re-decides every bar pays for every wobble of its output: plain
PPO traded its book 107 times over in half a year and lost 9.9 % even in sample, where holding
long carry earned 6.3 % (`bench/cadence.py`); the same PPO on 8-hour bars learned to hold. A
decision every 32 bars (once per 8-hour funding interval) gives the policy the 8-hour problem on
the 15-minute market, while the env still books every bar's funding, marks and margin.

Two forms of the same rule:

- `DecisionVecEnv` (training): one SB3 step is `decision_bars` bars of the batched env: the
  decided action on the first bar, "hold" (NaN weights, or the discrete env's choice 0) on the
  others (or, given `between`, that function's action: the meta-controller's risk overlay,
  `meta.MetaCore.between`, which holds except where the anomaly expert cuts); the rewards of
  those bars are summed, so a decision's reward is what it earned until the next one, and PPO's
  discount is per decision.
- `DecisionClock` (backtest, validation, paper trading): a bar is a decision bar when it is the
  first one or when it falls in another period of `decision_bars * bar_seconds` since the Unix
  epoch than the last decision (so with 32 fifteen-minute bars, at 00:00, 08:00 and 16:00 UTC;
  the phase comes from the bar's time, so a paper session that restarts keeps it, and a gap in
  the bars never delays a decision past its period). Between decision bars the action is hold
  (a meta-controller's risk overlay aside, as in training).

Training starts its decisions at a random bar (the episode's random start), so a policy learns
them at every phase of the funding interval; the clock then uses one phase.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from carry_pipeline.lib.training.observation import base_vector_env, current_bars

NS_PER_SECOND = 1_000_000_000


def hold_action(n_envs: int, n_assets: int, discrete: bool) -> np.ndarray:
    """The action that holds every book: NaN weights `(B, N)`, or the discrete env's choice 0
    ("hold every asset") `(B,)`."""
    if discrete:
        return np.zeros(n_envs, dtype=np.int64)
    return np.full((n_envs, n_assets), np.nan)


def episode_problems(episode_length: int, decision_bars: int) -> list[str]:
    """What is wrong with an episode length for a cadence (empty when it holds two decisions)."""
    if episode_length < 2 * decision_bars:
        return [
            f"episode_length={episode_length} must hold at least two decisions of "
            f"decision_bars={decision_bars} bars"
        ]
    return []


class DecisionClock:
    """Which bars are decision bars (module docstring), one clock per env.

    Args:
        decision_bars: bars per decision (1: every bar).
        bar_seconds: the market's bar length.
    """

    def __init__(self, decision_bars: int, bar_seconds: float) -> None:
        if decision_bars < 1:
            raise ValueError(f"decision_bars={decision_bars} must be >= 1")
        if not bar_seconds > 0:
            raise ValueError(f"bar_seconds={bar_seconds} must be > 0")
        self.decision_bars = int(decision_bars)
        self.period_ns = int(round(decision_bars * bar_seconds * NS_PER_SECOND))
        self.last_period: int | None = None
        """Period index (bar time // period) of the last decision; None before the first."""

    def due(self, ts_ns: int) -> bool:
        """Whether the bar at `ts_ns` is a decision bar; if so it becomes the last decision."""
        period = int(ts_ns) // self.period_ns
        if self.decision_bars > 1 and self.last_period is not None and period <= self.last_period:
            return False
        self.last_period = period
        return True

    def restart(self) -> None:
        """Forget the last decision: the next bar decides."""
        self.last_period = None

    def get_state(self) -> int | None:
        """The last decision's period (JSON-able), for a paper session's resume."""
        return self.last_period

    def set_state(self, state: int | None) -> None:
        """Restore `get_state()`."""
        self.last_period = None if state is None else int(state)


class DecisionVecEnv(VecEnvWrapper):
    """SB3 `VecEnv` wrapper over `SB3VecEnv(CarryTradeVectorEnv)`: one step is `decision_bars`
    bars (module docstring).

    A done env reports the info of the bar its episode ended on, plus `terminal_bar` (the bar of
    its `terminal_observation`) and `decision_start_bar`; its reward is the sum up to that bar.
    It is reset by the env at once and holds its fresh (flat) book for the decision's remaining
    bars, whose rewards belong to no decision and are dropped; its next decision comes with the
    next step. Every env's `decision_start_bar` is also in `self.start_bars` after each step.
    """

    def __init__(
        self,
        venv: VecEnv,
        decision_bars: int,
        *,
        discrete: bool = False,
        between: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        if decision_bars < 1:
            raise ValueError(f"decision_bars={decision_bars} must be >= 1")
        if between is not None and discrete:
            raise ValueError("between-decision actions need continuous weights, not discrete")
        super().__init__(venv)
        self.decision_bars = int(decision_bars)
        self.discrete = discrete
        self.between = between
        self._base = base_vector_env(venv)
        self._actions: np.ndarray | None = None
        self.start_bars = np.zeros(self.num_envs, dtype=np.int64)

    def reset(self) -> Any:
        """Reset the envs (the first decision is at their first bar)."""
        return self.venv.reset()

    def step_async(self, actions: np.ndarray) -> None:
        """Remember the decision for `step_wait`."""
        self._actions = np.asarray(actions)

    def step_wait(self) -> tuple[Any, np.ndarray, np.ndarray, list[dict]]:
        """Step `decision_bars` bars: the decision, then holds."""
        if self._actions is None:
            raise RuntimeError("DecisionVecEnv.step_async() must come before step_wait()")
        n = self.num_envs
        self.start_bars = current_bars(self._base)
        total = np.zeros(n, dtype=np.float64)
        dones = np.zeros(n, dtype=bool)
        infos: list[dict] = [{} for _ in range(n)]
        hold = hold_action(n, self._base.market.n_symbols, self.discrete)
        actions = self._actions
        obs: Any = None
        for j in range(self.decision_bars):
            bars = current_bars(self._base)
            if j == 0:
                step = actions
            elif self.between is None:
                step = hold
            else:
                # An env whose episode ended inside this decision holds its fresh book.
                step = np.where(dones[:, None], hold, self.between(np.asarray(obs), bars))
            self.venv.step_async(step)
            obs, rew, done, info = self.venv.step_wait()
            live = ~dones
            total[live] += rew[live]
            for b in np.flatnonzero(done & live):
                infos[b] = {
                    **info[b],
                    "terminal_bar": int(bars[b]) + 1,
                    "decision_start_bar": int(self.start_bars[b]),
                }
            dones |= done
        self._actions = None
        return obs, total.astype(np.float32), dones, infos
