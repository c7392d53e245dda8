"""A seeded demo rollout: rule-based carry policies on the simulated market, with every mechanism
on.

`python -m carry_env.demo [--seed N] [--days D]` prints, per policy, the equity, funding, cost and
risk summary of one episode. The policies are baselines that any trained agent must beat.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from carry_env.config import EnvConfig
from carry_env.env import CarryTradeEnv
from carry_env.market import MarketData
from carry_env.synthetic import simulate_market

Policy = Callable[[np.ndarray, list[str]], np.ndarray]


@dataclass(frozen=True)
class EpisodeSummary:
    """Totals of one episode."""

    policy: str
    steps: int
    final_equity: float
    funding: float
    price: float
    fees: float
    slippage: float
    borrow: float
    liquidation: float
    max_drawdown: float
    liquidated: bool
    halted_bars: int
    ended: str
    turnover: float = 0.0
    """Notional traded over the episode, USDT (both legs)."""


def funding_follower(threshold_bp: float = 0.5) -> Policy:
    """Long carry when the 3-settlement funding average exceeds `threshold_bp`, reverse below minus
    it.
    """

    def act(obs: np.ndarray, names: list[str]) -> np.ndarray:
        cols = [i for i, n in enumerate(names) if n.endswith(":funding_sma3_bp")]
        sma = obs[cols]
        weights = np.where(sma > threshold_bp, 1.0, np.where(sma < -threshold_bp, -1.0, 0.0))
        return weights / max(1, len(cols))

    return act


def always_long_carry(obs: np.ndarray, names: list[str]) -> np.ndarray:
    """Full long carry in every asset, all the time."""
    n = sum(1 for name in names if name.endswith(":funding_bp"))
    return np.full(n, 1.0 / n)


def flat(obs: np.ndarray, names: list[str]) -> np.ndarray:
    """Never trade."""
    n = sum(1 for name in names if name.endswith(":funding_bp"))
    return np.zeros(n)


def run_episode(env: CarryTradeEnv, policy: Policy, name: str, seed: int) -> EpisodeSummary:
    """Roll one episode of `policy` and add up its cash flows."""
    obs, info = env.reset(seed=seed)
    totals = dict.fromkeys(
        (
            "funding_pnl", "price_pnl", "fees", "slippage", "borrow_cost", "liquidation_loss",
            "turnover",
        ),
        0.0,
    )  # fmt: skip
    worst_dd, steps, halted = 0.0, 0, 0
    while True:
        obs, _, terminated, truncated, info = env.step(policy(obs, env.observation_names))
        steps += 1
        for key in totals:
            totals[key] += info[key]
        worst_dd = max(worst_dd, info["drawdown"])
        halted += int(info["halted"])
        if terminated or truncated:
            break
    ended = "liquidated" if info["liquidated"] else "terminated" if terminated else "end of data"
    return EpisodeSummary(
        policy=name,
        steps=steps,
        final_equity=info["equity"],
        funding=totals["funding_pnl"],
        price=totals["price_pnl"],
        fees=totals["fees"],
        slippage=totals["slippage"],
        borrow=totals["borrow_cost"],
        liquidation=totals["liquidation_loss"],
        max_drawdown=worst_dd,
        liquidated=info["liquidated"],
        halted_bars=halted,
        ended=ended,
        turnover=totals["turnover"],
    )


def format_table(rows: list[EpisodeSummary], initial: float, days: float) -> str:
    """A table of episode summaries, each column as wide as its widest header or value (two spaces
    apart), so figures of any size stay apart."""
    header = [
        "policy",
        "equity",
        "return",
        "ann.",
        "funding",
        "price",
        "fees",
        "slippage",
        "borrow",
        "liq.",
        "maxDD",
        "ended",
    ]
    body = [_summary_cells(r, initial, days) for r in rows]
    widths = [max(len(line[c]) for line in (header, *body)) for c in range(len(header))]
    lines = [_table_line(header, widths)]
    lines.append("-" * len(lines[0]))
    lines.extend(_table_line(cells, widths) for cells in body)
    return "\n".join(lines)


def _summary_cells(r: EpisodeSummary, initial: float, days: float) -> list[str]:
    ret = r.final_equity / initial - 1.0
    ann = (1.0 + ret) ** (365.0 / days) - 1.0 if r.final_equity > 0 else -1.0
    money = (r.final_equity, r.funding, r.price, r.fees, r.slippage, r.borrow, r.liquidation)
    equity, funding, price, fees, slippage, borrow, liq = (f"{x:,.2f}" for x in money)
    return [
        r.policy,
        equity,
        f"{ret:.2%}",
        f"{ann:.1%}",
        funding,
        price,
        fees,
        slippage,
        borrow,
        liq,
        f"{r.max_drawdown:.2%}",
        r.ended,
    ]


def _table_line(cells: list[str], widths: list[int]) -> str:
    # The first (policy) and last (ended) columns are text, left-aligned; the figures right-aligned.
    last = len(cells) - 1
    parts = [
        cell.ljust(w) if c in (0, last) else cell.rjust(w)
        for c, (cell, w) in enumerate(zip(cells, widths, strict=True))
    ]
    return "  ".join(parts).rstrip()


def main(argv: list[str] | None = None) -> None:
    """Run the demo from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=90)
    args = parser.parse_args(argv)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    frame = simulate_market(
        ("BTC/USDT:USDT", "ETH/USDT:USDT"),
        start,
        start + timedelta(days=args.days),
        "15m",
        seed=args.seed,
    )
    market = MarketData.from_frame(frame)
    config = EnvConfig()
    env = CarryTradeEnv(market, config)
    rows = [
        run_episode(env, funding_follower(), "funding follower", args.seed),
        run_episode(env, always_long_carry, "always long carry", args.seed),
        run_episode(env, flat, "flat", args.seed),
    ]
    print(
        f"carry_env demo: {market.n_symbols} symbols {', '.join(market.symbols)}, "
        f"{market.n_bars} bars of {market.bar_seconds / 60:g} min from {start:%Y-%m-%d}, "
        f"seed {args.seed}, every mechanism on "
        f"(fees, spread, depth slippage, funding, borrow, isolated margin, anomalies)"
    )
    print(format_table(rows, config.initial_cash, args.days))


if __name__ == "__main__":
    main()
