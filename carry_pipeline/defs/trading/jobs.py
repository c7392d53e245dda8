"""`paper_trading_job`: one paper session, simulated (default) or on a ccxt public feed.

The op resolves the policy, builds the feed, checks the live-trading guard when asked for live
trading, runs `run_paper_session` into the ledger (`paper` schema of the DuckDB file) with
`SessionMetrics` on the bar hook, logs every alert, and returns the session's result as metadata.
Policies: `rule` (the funding-sign rule, `FundingRulePolicy`) or `champion` / a model folder:
the champion's folder is read from `models.champion.model_path`; loading a saved expert or
meta-controller into the flat observation of the paper env is not built yet, so those fail at
once with that message (see the README).
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import duckdb
import numpy as np
from pydantic import Field

from carry_env.config import EnvConfig
from carry_env.env import CarryTradeEnv
from carry_pipeline.lib.duckdb_io import default_database
from carry_pipeline.lib.features.carry import CarryFeaturesConfig
from carry_pipeline.lib.trading.books import SimulatedExchangeBooks
from carry_pipeline.lib.trading.feeds import simulated_feed
from carry_pipeline.lib.trading.ledger import Ledger
from carry_pipeline.lib.trading.live import check_live_allowed
from carry_pipeline.lib.trading.monitoring import SessionMetrics
from carry_pipeline.lib.trading.risk import RiskConfig
from carry_pipeline.lib.trading.session import SessionSpec, run_paper_session


class FundingRulePolicy:
    """Long carry (0.5) where the last funding print is positive, flat elsewhere."""

    def __init__(self, names: list[str], symbols: tuple[str, ...]) -> None:
        self.idx = [names.index(f"{s}:funding_bp") for s in symbols]

    def predict(self, observation: np.ndarray, state: Any = None, **_: Any) -> tuple[Any, Any]:
        """The action per asset."""
        return np.where(observation[self.idx] > 0.0, 0.5, 0.0).astype(np.float32), state


class PaperTradingConfig(dg.Config):
    """What `paper_trading_job` runs."""

    session_id: str = Field(description="Ledger key; rerunning the same id resumes the session.")
    policy: str = Field(default="rule", description="rule | champion | a saved model folder.")
    feed: str = Field(default="simulated", description="simulated | ccxt.")
    bases: list[str] = Field(default=["BTC", "ETH"], description="Assets.")
    start: str = Field(default="2024-01-01", description="simulated: first raw day (UTC).")
    days: int = Field(default=75, description="simulated: days of raw data (about 60 warm-up).")
    higher_timeframes: list[str] = Field(
        default=["4h", "1d"], description="carry_features higher timeframes (as the pipeline)."
    )
    seed: int = Field(default=0, description="simulated: exchange seed.")
    max_bars: int | None = Field(default=None, description="Stop after this many bars.")
    risk: dict[str, float] = Field(default={}, description="RiskConfig fields to override.")
    database: str | None = Field(default=None, description="DuckDB file; default the pipeline's.")
    live_trading: bool = Field(
        default=False, description="Real orders; also needs CARRY_LIVE_TRADING=I_UNDERSTAND."
    )
    champion_id: str | None = Field(default=None, description="Set by champion_model_sensor.")


def champion_model_path(database: str) -> tuple[str, str]:
    """`(champion_id, model_path)` of the current row of `models.champion`.

    Raises:
        ValueError: the table does not exist or is empty.
    """
    con = duckdb.connect(database, read_only=True)
    try:
        row = con.execute(
            "select champion_id, model_path from models.champion order by promoted_at desc limit 1"
        ).fetchone()
    except duckdb.CatalogException as exc:
        raise ValueError(
            f"{database} has no models.champion table; materialise reports/champion_model first"
        ) from exc
    finally:
        con.close()
    if row is None:
        raise ValueError(f"{database}: models.champion is empty; no champion has been promoted")
    return str(row[0]), str(row[1])


def _policy(config: PaperTradingConfig, env: CarryTradeEnv, database: str) -> Any:
    if config.policy == "rule":
        return FundingRulePolicy(env.observation_names, env.market.symbols)
    path = champion_model_path(database)[1] if config.policy == "champion" else config.policy
    raise dg.Failure(
        description=f"policy {config.policy!r} resolves to the saved model {path}; adapting a "
        "saved expert or meta-controller to the paper env's flat observation is not built yet. "
        "Use policy: rule.",
        allow_retries=False,
    )


@dg.op(description="Run one paper session into the ledger.")
def paper_session(context: dg.OpExecutionContext, config: PaperTradingConfig) -> dg.Output[int]:
    """Build feed, policy and books, run the session, log alerts, report the result."""
    if config.live_trading:
        check_live_allowed(config.live_trading)
    if config.feed != "simulated":
        raise dg.Failure(
            description=f"feed {config.feed!r}: this job runs the simulated feed; the ccxt feed "
            "(lib/trading/feeds.ExchangeFeed) is not wired into the job yet",
            allow_retries=False,
        )
    database = config.database or default_database()
    start = datetime.fromisoformat(config.start).replace(tzinfo=UTC)
    feed, snapshots = simulated_feed(
        tuple(config.bases),
        start,
        start + timedelta(days=config.days),
        seed=config.seed,
        carry=CarryFeaturesConfig(higher_timeframes=tuple(config.higher_timeframes)),
    )
    env_config = EnvConfig()
    env = CarryTradeEnv(feed.market, env_config)
    policy = _policy(config, env, database)
    metrics = SessionMetrics(
        config.session_id, env_config.initial_cash, lambda k, m: context.log.warning(f"{k}: {m}")
    )
    ledger = Ledger(database)
    try:
        result = run_paper_session(
            spec=SessionSpec(config.session_id, env_config, RiskConfig(**config.risk)),
            feed=feed,
            policy=policy,
            books=SimulatedExchangeBooks(snapshots, feed.now),
            ledger=ledger,
            max_bars=config.max_bars,
            on_bar=metrics.observe,
        )
    finally:
        ledger.close()
    return dg.Output(
        result.new_bars,
        metadata={"last_bar": result.last_bar, "equity": result.equity, "ended": result.ended},
    )


@dg.job(description="One paper session (simulated feed by default); never a real order.")
def paper_trading_job() -> None:
    """The paper session op."""
    paper_session()
