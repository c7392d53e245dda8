"""Roll an actor over a chosen bar range of a market and total its cash flows.

Validation (on the held-out tail of a train span) and the learning tests use it; any callable
`actor(obs, episode_start, action_masks) -> action` works (an `ExpertPolicy`, flat, random).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from carry_env.config import EnvConfig
from carry_env.market import MarketData
from carry_pipeline.lib.training.cadence import DecisionClock, hold_action
from carry_pipeline.lib.training.observation import (
    ExposureBand,
    ObservationSpec,
    Output,
    WindowSet,
    current_bars,
    make_expert_env,
    map_actions,
)

Actor = Callable[[dict[str, np.ndarray], np.ndarray, np.ndarray | None], np.ndarray]


@dataclass(frozen=True)
class RolloutMetrics:
    """Totals of one rollout, in USDT unless noted."""

    steps: int
    reward: float
    """Sum of the env's rewards (bp of equity by default)."""
    funding: float
    costs: float
    """Fees + slippage + borrow + liquidation loss."""
    net_carry: float
    """Funding minus costs: what the carry earned net of what trading it cost."""
    price_pnl: float
    pnl: float
    """Final minus initial equity."""
    max_drawdown: float
    liquidations: int
    mean_gross_leverage: float

    def to_dict(self) -> dict[str, float | int]:
        """Plain values."""
        return asdict(self)


def rollout(
    actor: Actor,
    market: MarketData,
    windows: WindowSet,
    spec: ObservationSpec,
    config: EnvConfig,
    *,
    start: int,
    end: int,
    output: Output = "weights",
    discrete: bool = False,
    seed: int = 0,
    decision_bars: int = 1,
    band: ExposureBand | None = None,
) -> RolloutMetrics:
    """One episode of `actor` on bars `start..end` of `market` (one env, `config` with fixed
    bounds). With `decision_bars` > 1 the actor is asked only on the decision bars of a
    `cadence.DecisionClock` and the book is held on the others, as in the backtest. An exposure
    actor's book re-trades only past `band` (`observation.ExposureBand`; None: every move).

    Raises:
        ValueError: the range is not inside the market (from the env).
    """
    env = make_expert_env(
        market, windows, spec, _fixed_span(config), 1, output=output, discrete=discrete
    )
    base, builder = env._base, env.builder
    raw, _ = base.reset(seed=seed, options={"start": int(start), "end": int(end)})
    totals = dict.fromkeys(("reward", "funding", "costs", "price_pnl", "leverage"), 0.0)
    equity = [float(config.initial_cash)]
    liquidations, steps, first = 0, 0, True
    clock = DecisionClock(decision_bars, market.bar_seconds)
    hold = hold_action(1, market.n_symbols, discrete)
    while True:
        bar = int(current_bars(base)[0])
        if clock.due(int(market.ts[bar])):
            obs = builder.build(raw, np.array([bar]))
            masks = base.action_masks() if discrete else None
            action = map_actions(output, actor(obs, np.array([first]), masks), raw,
                                 base.observation_names, leverage_cap=config.leverage_cap,
                                 band=band)  # fmt: skip
            first = False
        else:
            action = hold
        raw, rew, term, trunc, infos = base.step(action)
        done = bool(term[0] or trunc[0])
        info = infos["final_info"] if done else infos
        _accumulate(totals, info, float(rew[0]))
        equity.append(float(info["equity"][0]))
        liquidations += int(info["liquidated"][0])
        steps += 1
        if done:
            break
    path = np.array(equity)
    drawdown = float(np.max(1.0 - path / np.maximum.accumulate(path)))
    return RolloutMetrics(
        steps=steps,
        reward=totals["reward"],
        funding=totals["funding"],
        costs=totals["costs"],
        net_carry=totals["funding"] - totals["costs"],
        price_pnl=totals["price_pnl"],
        pnl=float(path[-1] - path[0]),
        max_drawdown=drawdown,
        liquidations=liquidations,
        mean_gross_leverage=totals["leverage"] / steps,
    )


def _fixed_span(config: EnvConfig) -> EnvConfig:
    from dataclasses import replace

    return replace(config, random_start=False, episode_length=None)


def _accumulate(totals: dict[str, float], info: dict[str, Any], reward: float) -> None:
    totals["reward"] += reward
    totals["funding"] += float(info["funding_pnl"][0])
    totals["costs"] += float(
        info["fees"][0] + info["slippage"][0] + info["borrow_cost"][0] + info["liquidation_loss"][0]
    )
    totals["price_pnl"] += float(info["price_pnl"][0])
    totals["leverage"] += float(info["leverage"][0])
