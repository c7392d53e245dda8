"""Discrete carry-trade envs with exact action masks (sb3-contrib MaskablePPO): one asset is
resized per step, so the masks of the joint action are exact.

`CarryTradeDiscreteEnv` is the single env; `CarryTradeDiscreteVectorEnv` the batched one, whose
`action_masks()` gives one row per env (and so does `SB3VecEnv.env_method("action_masks")`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import batch_space

from carry_env import kernel as k
from carry_env.config import EnvConfig
from carry_env.env import CarryTradeEnv
from carry_env.feeds import Executor, MarketFeed
from carry_env.market import MarketData
from carry_env.vector import CarryTradeVectorEnv

DEFAULT_BUCKETS = (0.25, 0.5, 1.0)
"""Default size buckets: fractions of the full weight `a = 1`."""


def bucket_weights(size_buckets: Sequence[float]) -> np.ndarray:
    """Per-asset weights of the discrete choices: flatten, the K long buckets, the K reverse ones.

    Raises:
        ValueError: the buckets are empty, unsorted, repeated or outside (0, 1].
    """
    buckets = tuple(float(x) for x in size_buckets)
    if (
        not buckets
        or any(not 0.0 < x <= 1.0 for x in buckets)
        or list(buckets) != sorted(set(buckets))
    ):
        raise ValueError(
            f"size_buckets must be increasing, distinct values in (0, 1]; got {size_buckets}"
        )
    return np.array([0.0, *buckets, *(-x for x in buckets)])


def choice_to_weights(choice: np.ndarray, n_symbols: int, weights: np.ndarray) -> np.ndarray:
    """`[B]` discrete choices -> `[B, N]` kernel actions (NaN = hold).

    Choice 0 holds every asset; choice `1 + i * W + j` sets asset i to `weights[j]` and holds the
    others (W = `len(weights)`).

    Raises:
        ValueError: a choice is not an integer in `[0, N * W]`; the message names it.
    """
    c = np.asarray(choice)
    n_choices = 1 + n_symbols * weights.shape[0]
    if c.ndim != 1 or not np.issubdtype(c.dtype, np.integer) and not np.all(c == np.round(c)):
        raise ValueError(f"discrete actions {choice!r} must be integers, one per env")
    c = c.astype(np.int64)
    if (c < 0).any() or (c >= n_choices).any():
        raise ValueError(f"discrete actions {choice!r} must lie in [0, {n_choices - 1}]")
    out = np.full((c.shape[0], n_symbols), np.nan)
    active = np.flatnonzero(c > 0)
    asset, which = np.divmod(c[active] - 1, weights.shape[0])
    out[active, asset] = weights[which]
    return out


class CarryTradeDiscreteEnv(CarryTradeEnv):
    """`CarryTradeEnv` with one discrete choice per step, acting on one asset at a time, and exact
    masks of what is infeasible.

    ## Action Space
    `Discrete(1 + N * (1 + 2K))` with K size buckets (default 0.25, 0.5, 1.0):

    | value | meaning |
    |-------|---------|
    | 0 | hold every asset |
    | 1 + i * (1 + 2K) | asset i: flatten (close both legs) |
    | 1 + i * (1 + 2K) + j, j = 1 .. K | asset i: long carry, weight `+bucket_j` |
    | 1 + i * (1 + 2K) + K + j, j = 1 .. K | asset i: reverse carry, weight `-bucket_j` |

    Every asset but the chosen one holds. A weight acts exactly as the continuous env's action
    (`size = weight * equity * leverage_cap`). One asset per step is the design choice that makes
    the masks exact: a per-asset (MultiDiscrete) mask cannot express a budget shared by assets
    moving together.

    ## Action Masks
    `action_masks()` returns `1 + N * (1 + 2K)` booleans, computed for this joint action space by
    the kernel (`kernel.single_asset_masks`) with `plan_env`'s own arithmetic: an action is
    allowed iff it trades without being clamped. Masked out: every action but hold while the
    exchange is halted or equity is not positive (nothing can fill); reverse-carry buckets when
    `allow_reverse_carry` is off; buckets whose leverage `|w| * equity * leverage_cap /
    max_leverage_t,i` exceeds what the other (held) assets leave of the budget `sum_i |size_i| /
    max_leverage_t,i <= equity`. Hold is never masked, so no feasible action is masked and no
    allowed action is clamped.

    Observation, reward and episode end are those of `CarryTradeEnv`.

    ## Version History
    - v1: the dynamics and reward of `CarryTrade-v1` (see `CarryTradeEnv`);
      `Discrete` one-asset-at-a-time actions with exact masks (v0's per-asset MultiDiscrete
      masks ignored that the other assets move in the same step: feasible joint actions were
      masked and allowed ones clamped).
    - v0: first release.
    """

    def __init__(
        self,
        market: MarketData | Any,
        config: EnvConfig | None = None,
        *,
        size_buckets: Sequence[float] = DEFAULT_BUCKETS,
        feed: MarketFeed | None = None,
        executor: Executor | None = None,
        render_mode: str | None = None,
    ) -> None:
        weights = bucket_weights(size_buckets)
        super().__init__(market, config, feed=feed, executor=executor, render_mode=render_mode)
        self.size_buckets = tuple(float(x) for x in size_buckets)
        self._weights = weights
        action_space = spaces.Discrete(1 + self.market.n_symbols * weights.shape[0])
        # One discrete choice replaces the base env's Box action: CarryTradeEnv is declared
        # gym.Env[np.ndarray, np.ndarray], and this subclass narrows the action type on purpose.
        self.action_space = action_space  # type: ignore[assignment]
        self._mask_buf = np.zeros((1, int(action_space.n)), dtype=np.bool_)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Map the choice to per-asset weights (the unchosen assets hold) and step."""
        choice = np.asarray(action)
        if choice.shape not in ((), (1,)):
            raise ValueError(f"action has shape {choice.shape}; expected () (one discrete choice)")
        weights = choice_to_weights(choice.reshape(1), self.market.n_symbols, self._weights)
        return super().step(weights[0])

    def action_masks(self) -> np.ndarray:
        """Allowed actions now (see the class docstring)."""
        eng = self.engine
        k.single_asset_masks(
            self._weights, eng.tensor.mkt, eng.cfg, eng.fs, eng.as_, eng.is_, self._mask_buf
        )
        return self._mask_buf[0].copy()


class CarryTradeDiscreteVectorEnv(CarryTradeVectorEnv):
    """`num_envs` discrete carry-trade accounts stepped together: the batched
    `CarryTradeDiscreteEnv` (same actions, masks and semantics; env i seeded with `seed + i`
    behaves as a `CarryTradeDiscreteEnv` reset with `seed + i`).

    `action_masks()` is `[num_envs, 1 + N * (1 + 2K)]`; wrapped in `SB3VecEnv`,
    `env_method("action_masks")` gives env i its own row, as sb3-contrib's MaskablePPO expects.
    """

    per_env_methods = ("action_masks",)
    """Methods whose result is batched: `SB3VecEnv.env_method` hands each env its own row."""

    def __init__(
        self,
        market: MarketData | Any,
        config: EnvConfig | None = None,
        num_envs: int = 1,
        *,
        size_buckets: Sequence[float] = DEFAULT_BUCKETS,
        parallel: bool | None = None,
    ) -> None:
        weights = bucket_weights(size_buckets)
        super().__init__(market, config, num_envs, parallel=parallel)
        self.size_buckets = tuple(float(x) for x in size_buckets)
        self._weights = weights
        self.single_action_space = spaces.Discrete(1 + self.market.n_symbols * weights.shape[0])
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._mask_buf = np.zeros((num_envs, int(self.single_action_space.n)), dtype=np.bool_)

    def _as_weights(self, actions: Any) -> np.ndarray:
        # Each env's choice as per-asset weights (`step` and `step_arrays` take choices).
        choice = np.asarray(actions)
        if choice.shape != (self.num_envs,):
            raise ValueError(
                f"actions have shape {choice.shape}; expected ({self.num_envs},) "
                "(one discrete choice per env)"
            )
        return choice_to_weights(choice, self.market.n_symbols, self._weights)

    def action_masks(self) -> np.ndarray:
        """Allowed actions of every env now, `[num_envs, n_actions]`."""
        eng = self.engine
        k.single_asset_masks(
            self._weights, eng.tensor.mkt, eng.cfg, eng.fs, eng.as_, eng.is_, self._mask_buf
        )
        return self._mask_buf.copy()
