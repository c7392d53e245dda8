"""`CarryTradeDiscreteEnv`: the carry trade with discrete actions and action masks (sb3-contrib
MaskablePPO)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from carry_env import kernel as k
from carry_env.config import EnvConfig
from carry_env.env import CarryTradeEnv
from carry_env.feeds import Executor, MarketFeed
from carry_env.market import MarketData


class CarryTradeDiscreteEnv(CarryTradeEnv):
    """`CarryTradeEnv` with one discrete choice per asset and masks of what is infeasible.

    ## Action Space
    `MultiDiscrete([2 + 2 * K] * N)` with K size buckets (default 0.25, 0.5, 1.0). Per asset:

    | value | meaning |
    |-------|---------|
    | 0 | hold: leave the asset's position as it is |
    | 1 | flatten: close both legs |
    | 2 .. 1 + K | long carry (long spot, short perp) at bucket 1 .. K: weight `+bucket` |
    | 2 + K .. 1 + 2K | reverse carry (short spot, long perp) at bucket 1 .. K: weight `-bucket` |

    A weight acts exactly as the continuous env's action (`size = weight * equity * leverage_cap`).

    ## Action Masks
    `action_masks()` returns `N * (2 + 2K)` booleans (MaskablePPO's layout for MultiDiscrete).
    Masked out: every action but hold while the exchange is halted (nothing can fill); reverse-carry
    buckets when `allow_reverse_carry` is off; buckets whose leverage would exceed what is left of
    the budget `sum_i |size_i| / max_leverage_t,i <= equity` given the other assets' positions. Hold
    is never masked.

    Observation, reward and episode end are those of `CarryTradeEnv`.

    ## Version History
    - v1: the dynamics and reward of `CarryTrade-v1` (see `CarryTradeEnv`).
    - v0: first release.
    """

    def __init__(
        self,
        market: MarketData | Any,
        config: EnvConfig | None = None,
        *,
        size_buckets: Sequence[float] = (0.25, 0.5, 1.0),
        feed: MarketFeed | None = None,
        executor: Executor | None = None,
        render_mode: str | None = None,
    ) -> None:
        buckets = tuple(float(x) for x in size_buckets)
        if (
            not buckets
            or any(not 0.0 < x <= 1.0 for x in buckets)
            or list(buckets) != sorted(set(buckets))
        ):
            raise ValueError(
                f"size_buckets must be increasing, distinct values in (0, 1]; got {size_buckets}"
            )
        super().__init__(market, config, feed=feed, executor=executor, render_mode=render_mode)
        self.size_buckets = buckets
        self._n_choices = 2 + 2 * len(buckets)
        self.action_space = spaces.MultiDiscrete([self._n_choices] * self.market.n_symbols)
        self._weights = np.array([np.nan, 0.0, *buckets, *(-x for x in buckets)])

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Map each asset's choice to its weight (hold = no order) and step."""
        choice = np.asarray(action, dtype=np.int64).reshape(-1)
        if (
            choice.shape[0] != self.market.n_symbols
            or (choice < 0).any()
            or (choice >= self._n_choices).any()
        ):
            raise ValueError(
                f"action {action!r} must hold {self.market.n_symbols} values "
                f"in [0, {self._n_choices - 1}]"
            )
        return super().step(self._weights[choice])

    def action_masks(self) -> np.ndarray:
        """Feasible actions now, flattened per asset (see the class docstring)."""
        eng = self.engine
        n, nb = self.market.n_symbols, len(self.size_buckets)
        mask = np.ones((n, self._n_choices), dtype=bool)
        if eng.is_[0, k.I_HALT] > 0:
            mask[:, 1:] = False
            return mask.reshape(-1)
        if not self.config.allow_reverse_carry:
            mask[:, 2 + nb :] = False
        equity = eng.fs[0, k.F_EQUITY]
        if equity <= 0.0:
            mask[:, 2:] = False
            return mask.reshape(-1)
        t = int(eng.is_[0, k.I_T])
        maxlev = eng.tensor.mkt[t, :, k.M_MAXLEV]
        used = np.empty(n)
        for i in range(n):
            s, p, _, _ = k.effective_prices(0, i, t, eng.tensor.mkt, eng.fs, eng.as_, eng.cfg)
            used[i] = (
                abs(eng.as_[0, i, k.A_SPOT] * s) + abs(eng.as_[0, i, k.A_PERP] * p)
            ) / maxlev[i]
        for i in range(n):
            left = equity - (used.sum() - used[i])
            need = np.asarray(self.size_buckets) * equity * self.config.leverage_cap / maxlev[i]
            ok = need <= left * (1.0 + 1e-9)
            mask[i, 2 : 2 + nb] &= ok
            mask[i, 2 + nb :] &= ok
        return mask.reshape(-1)
