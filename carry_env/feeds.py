"""The two injected dependencies of the step API: where bars come from and who fills orders.

Simulation and paper trading share `CarryTradeEnv.step`; they differ only in the `MarketFeed` and
`Executor` handed to the env. `HistoricalFeed` + `SimExecutor` (the defaults) replay stored data
with modelled fills and run in one fused numba call per step. Any other executor runs the split
path: the kernel plans orders, the executor fills them (partially, at its own prices and costs, or
by asking a venue), and the kernel books the fills, settles funding and checks margin exactly as in
simulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numba as nb
import numpy as np

from carry_env.config import C_PERP_MAKER, C_PERP_TAKER, C_SPOT_MAKER, C_SPOT_TAKER
from carry_env.kernel import leg_costs
from carry_env.market import MarketData


@dataclass(frozen=True, eq=False)
class Orders:
    """Orders of one step for B envs and N assets (`[B, N]` arrays; quantities signed, in coins)."""

    spot_qty: np.ndarray
    perp_qty: np.ndarray
    spot_price: np.ndarray
    """Mid prices the orders were planned at (the env's view, anomalies included)."""
    perp_price: np.ndarray
    spot_depth_usd: np.ndarray
    perp_depth_usd: np.ndarray
    spread_bps: np.ndarray


@dataclass(frozen=True, eq=False)
class Fills:
    """What an executor did with `Orders` (`[B, N]` arrays).

    Filled quantities are booked at the planning mid; every difference from mid (spread, impact, a
    worse fill price) is reported as a cost, so the accounting identity keeps holding for any
    executor.
    """

    spot_qty: np.ndarray
    perp_qty: np.ndarray
    fees: np.ndarray
    spread_cost: np.ndarray
    impact_cost: np.ndarray


@runtime_checkable
class MarketFeed(Protocol):
    """Source of market bars for the env."""

    @property
    def market(self) -> MarketData:
        """The bars available so far, aligned (`MarketData`)."""
        ...

    def bar_ready(self, t: int) -> bool:
        """Whether bar `t` can be read; a live feed waits for it here and returns False when it
        stops.
        """
        ...


@runtime_checkable
class Executor(Protocol):
    """Fills the orders the env plans each step."""

    def execute(self, orders: Orders) -> Fills:
        """Fill `orders`; never raises for market reasons (unfilled quantity is simply not
        filled)."""
        ...


@dataclass(frozen=True, eq=False)
class HistoricalFeed:
    """Replays a `MarketData` already in memory."""

    data: MarketData

    @property
    def market(self) -> MarketData:
        """All bars of the replay."""
        return self.data

    def bar_ready(self, t: int) -> bool:
        """True for every bar inside the data."""
        return 0 <= t < self.data.n_bars


class SimExecutor:
    """Simulated fills: every order fills in full at mid plus fees, half-spread, depth impact and
    tick.

    The env recognises this executor and runs the fused kernel (the same `leg_costs` as `execute`
    uses).
    """

    fused = True

    def __init__(self, config_vector: np.ndarray) -> None:
        """Args: config_vector: `EnvConfig.to_vector(...)` of the env whose costs this executor
        models.
        """
        self._cfg = config_vector

    def execute(self, orders: Orders) -> Fills:
        """Full fills with modelled costs."""
        fees = np.zeros_like(orders.spot_qty)
        spread = np.zeros_like(orders.spot_qty)
        impact = np.zeros_like(orders.spot_qty)
        _sim_costs(
            orders.spot_qty,
            orders.perp_qty,
            orders.spot_price,
            orders.perp_price,
            orders.spot_depth_usd,
            orders.perp_depth_usd,
            orders.spread_bps,
            self._cfg,
            fees,
            spread,
            impact,
        )
        return Fills(orders.spot_qty.copy(), orders.perp_qty.copy(), fees, spread, impact)


@nb.njit(cache=True, error_model="numpy")  # type: ignore[untyped-decorator]
def _sim_costs(
    dq_s: np.ndarray,
    dq_p: np.ndarray,
    s: np.ndarray,
    p: np.ndarray,
    sd: np.ndarray,
    pd: np.ndarray,
    spread: np.ndarray,
    cfg: np.ndarray,
    fees: np.ndarray,
    spread_cost: np.ndarray,
    impact: np.ndarray,
) -> None:
    for b in range(dq_s.shape[0]):
        for i in range(dq_s.shape[1]):
            f1, c1, m1 = leg_costs(
                abs(dq_s[b, i]) * s[b, i],
                sd[b, i],
                spread[b, i],
                cfg[C_SPOT_MAKER],
                cfg[C_SPOT_TAKER],
                cfg,
            )
            f2, c2, m2 = leg_costs(
                abs(dq_p[b, i]) * p[b, i],
                pd[b, i],
                spread[b, i],
                cfg[C_PERP_MAKER],
                cfg[C_PERP_TAKER],
                cfg,
            )
            fees[b, i] = f1 + f2
            spread_cost[b, i] = c1 + c2
            impact[b, i] = m1 + m2
