"""One paper session the session tests and the crash worker share: market, policy, spec, books."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from carry_env.config import EnvConfig
from carry_env.market import MarketData
from carry_env.synthetic import simulate_market
from carry_pipeline.lib.trading.books import ModelBookSource
from carry_pipeline.lib.trading.ledger import Ledger
from carry_pipeline.lib.trading.risk import RiskConfig
from carry_pipeline.lib.trading.session import (
    PaperFeed,
    ReplayFeed,
    SessionResult,
    SessionSpec,
    run_paper_session,
)

SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT")
ENV_CONFIG = EnvConfig()
# Wide limits: the session tests look at the loop and the ledger, the risk tests at the rules.
WIDE_RISK = RiskConfig(
    max_notional_per_asset_usd=1e7,
    max_total_notional_usd=1e8,
    max_leverage=10.0,
    min_margin_buffer=0.01,
    max_depth_fraction=0.9,
    daily_loss_limit=0.5,
    max_losing_bars=10_000,
    sharp_move=0.9,
    max_drawdown=0.9,
)


@lru_cache(maxsize=1)
def make_market() -> MarketData:
    """Three simulated days of hourly bars (seed 5); cached, so forked workers inherit it."""
    return MarketData.from_frame(simulate_market(SYMBOLS, "2024-03-01", "2024-03-04", "1h", seed=5))


class FundingPolicy:
    """Rule policy with SB3's `predict`: long carry where the last funding print is positive,
    a small reverse carry where it is negative; reports itself as one expert with weight 1."""

    def __init__(self, observation_names: list[str]) -> None:
        self.idx = [observation_names.index(f"{s}:funding_bp") for s in SYMBOLS]

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        f = observation[self.idx]
        return np.where(f > 0.0, 0.8, -0.3).astype(np.float32), state

    def explain(self, observation: np.ndarray) -> dict[str, Any]:
        a, _ = self.predict(observation)
        return {"expert_outputs": {"funding": a.tolist()}, "gating_weights": {"funding": 1.0}}


def observation_names(market: MarketData) -> list[str]:
    from carry_env.engine import observation_names as names

    return names(market.symbols, market.feature_names, ENV_CONFIG.expert_context_dim)


def run_session(
    db: Path | str,
    *,
    feed: PaperFeed | None = None,
    max_bars: int | None = None,
    on_commit: Any = None,
    risk: RiskConfig = WIDE_RISK,
    session_id: str = "s1",
    on_bar: Any = None,
    policy: Any = None,
) -> SessionResult:
    """Run (or resume) the shared session into the DuckDB file `db` (`FundingPolicy` unless
    `policy` is given)."""
    market = feed.market if feed is not None else make_market()
    ledger = Ledger(db)
    try:
        return run_paper_session(
            spec=SessionSpec(session_id, ENV_CONFIG, risk, seed=7, start=0),
            feed=feed if feed is not None else ReplayFeed(market),
            policy=policy if policy is not None else FundingPolicy(observation_names(market)),
            books=ModelBookSource(ENV_CONFIG, levels=50, span_depths=4.0),
            ledger=ledger,
            max_bars=max_bars,
            on_commit=on_commit,
            on_bar=on_bar,
        )
    finally:
        ledger.close()
