"""`paper_trading_job`: one paper session, simulated (default) or on a ccxt public feed, and its
report against the backtest of the same bars.

The op resolves the policy, builds the feed (`feed.kind`: `simulated`, the seeded exchange
replayed; `ccxt`, `lib/trading/feeds.ccxt_feed` polling a venue's public endpoints at the bar
interval, warmed up from the DuckDB raw history, on the `paper_clock` resource's clock), checks
the live-trading guard when asked for live trading (and then fills with the live
`CcxtOrderExecutor` instead of the paper `BookExecutor`), runs `run_paper_session` into the
ledger (`paper` schema of the DuckDB file) with `SessionMetrics` on the bar hook, logs every
alert, then backtests the same policy over the session's bars (`lib/trading/tracking.py`),
writes a `policy_divergence` alert when the actions differ beyond `divergence_threshold`, saves
the tracking figure under `report_dir` and returns the session's result with the tracking
figures and the plot as the output's metadata (the `paper_trading_report`: metadata, not an
asset, because a report belongs to one session run).
Policies: `rule` (the funding-sign rule, `FundingRulePolicy`), `champion` (the last row of
`models.champion`) or a saved meta-controller folder; both of the latter run through
`lib/trading/champion.py` on paper windows built for the feed's bars, which grow with the ccxt
feed's bars. A champion whose windows hold `f_sent_` features gets them from the simulated
exchange's sentiment index on the simulated feed, and from the stored `features.sentiment_scores`
carried forward on the ccxt feed (`lib/trading/feeds.py`).
"""

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import numpy as np
from pydantic import Field

from carry_env.config import EnvConfig
from carry_env.env import CarryTradeEnv
from carry_pipeline.lib.duckdb_io import default_database
from carry_pipeline.lib.env_config import PIPELINE_ENV_CONFIG
from carry_pipeline.lib.exchanges.base import PermanentExchangeError
from carry_pipeline.lib.features.bars import MarketBarsConfig
from carry_pipeline.lib.features.carry import CarryFeaturesConfig
from carry_pipeline.lib.trading.books import SimulatedExchangeBooks
from carry_pipeline.lib.trading.champion import (
    ChampionError,
    ChampionSource,
    champion_source,
    load_champion_policy,
    model_folder_source,
    window_settings,
)
from carry_pipeline.lib.trading.executor import TakerFees
from carry_pipeline.lib.trading.feeds import WallClock, ccxt_feed, simulated_feed
from carry_pipeline.lib.trading.ledger import Ledger
from carry_pipeline.lib.trading.live import (
    CcxtOrderExecutor,
    Credentials,
    check_live_allowed,
    live_order_client,
)
from carry_pipeline.lib.trading.monitoring import SessionMetrics
from carry_pipeline.lib.trading.risk import RiskConfig
from carry_pipeline.lib.trading.session import SessionSpec, run_paper_session
from carry_pipeline.lib.trading.tracking import (
    DIVERGENCE_THRESHOLD,
    TrackingResult,
    divergence_alert,
    figure_png,
    read_session,
    track_session,
    tracking_figure,
)


class FundingRulePolicy:
    """Long carry (0.5) where the last funding print is positive, flat elsewhere."""

    def __init__(self, names: list[str], symbols: tuple[str, ...]) -> None:
        self.idx = [names.index(f"{s}:funding_bp") for s in symbols]

    def predict(self, observation: np.ndarray, state: Any = None, **_: Any) -> tuple[Any, Any]:
        """The action per asset."""
        return np.where(observation[self.idx] > 0.0, 0.5, 0.0).astype(np.float32), state


class FeedConfig(dg.Config):
    """Where the session's bars come from."""

    kind: Literal["simulated", "ccxt"] = Field(
        default="simulated",
        description="simulated: the seeded exchange replayed (offline); ccxt: a venue's public "
        "endpoints, polled at the bar interval, warmed up from the DuckDB raw history.",
    )
    bar: str = Field(default="1h", description="Bar interval of the env (market_bars' bar).")
    raw_timeframe: str | None = Field(
        default=None,
        description="ccxt: kline size fetched and stored in raw_*_ohlcv (default the bar).",
    )
    spot_exchange: str = Field(default="binance", description="ccxt: spot exchange id.")
    perp_exchange: str = Field(default="binanceusdm", description="ccxt: perp exchange id.")
    api_url: str | None = Field(
        default=None, description="ccxt: replaces scheme://host of every endpoint (proxy, stub)."
    )
    timeout_ms: int = Field(default=10_000, gt=0, description="ccxt: per-request timeout.")
    max_retries: int = Field(default=5, ge=0, description="ccxt: retries per request.")
    settle_s: float = Field(
        default=2.0, ge=0, description="ccxt: seconds after a bar's close before it is fetched."
    )
    max_wait_bars: int = Field(
        default=3, ge=1, description="ccxt: bars without a new bar before the bar is a fault."
    )
    seconds_per_bar: float = Field(
        default=0.0, ge=0, description="simulated: wall seconds per bar (0: as fast as possible)."
    )


class PaperTradingConfig(dg.Config):
    """What `paper_trading_job` runs."""

    session_id: str = Field(description="Ledger key; rerunning the same id resumes the session.")
    policy: str = Field(default="rule", description="rule | champion | a saved model folder.")
    feed: FeedConfig = Field(default_factory=FeedConfig, description="The market feed.")
    bases: list[str] = Field(default=["BTC", "ETH"], description="Assets.")
    start: str = Field(
        default="2024-01-01",
        description="First raw day (UTC): simulated, of the replay; ccxt, of the DuckDB history "
        "that warms the features up (keep it fixed for a session: it anchors the bar indices).",
    )
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
    divergence_threshold: float = Field(
        default=DIVERGENCE_THRESHOLD,
        description="Alert when a bar's policy action differs from the backtest's by more.",
    )
    report_dir: str | None = Field(
        default=None, description="Tracking figure folder; default <database dir>/reports/paper."
    )


def champion_model_path(database: str) -> tuple[str, str]:
    """`(champion_id, model_path)` of the current row of `models.champion`.

    Raises:
        ValueError: the table does not exist or is empty.
    """
    source = champion_source(database)
    return source.champion_id, source.model_path


def _champion(config: PaperTradingConfig, database: str) -> ChampionSource | None:
    # The saved meta-controller the config names (None for the rule policy).
    if config.policy == "rule":
        return None
    try:
        if config.policy == "champion":
            # The sensor names the champion it launched for; without an id, the latest row.
            return champion_source(database, config.champion_id)
        return model_folder_source(database, config.policy)
    except ChampionError as exc:
        raise dg.Failure(
            description=f"policy {config.policy!r}: {exc}", allow_retries=False
        ) from exc


def _policy(source: ChampionSource | None, env: CarryTradeEnv, database: str) -> Any:
    if source is None:
        return FundingRulePolicy(env.observation_names, env.market.symbols)
    try:
        return load_champion_policy(database, source, env.market)
    except ChampionError as exc:
        raise dg.Failure(description=f"champion: {exc}", allow_retries=False) from exc


def _needs_sentiment(source: ChampionSource | None, database: str) -> bool:
    # The champion's windows hold f_sent_ features: the feed must build them too.
    if source is None:
        return False
    try:
        features = window_settings(database, source.fold, source.model_path).features
    except ChampionError as exc:
        raise dg.Failure(description=f"champion: {exc}", allow_retries=False) from exc
    return any(f.startswith("f_sent_") for f in features)


def _report_metadata(result: TrackingResult, folder: Path) -> dict[str, Any]:
    # The figures, the thumbnail inline (a few tens of KB) and the full-size file beside it.
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tracking.png"
    path.write_bytes(figure_png(tracking_figure(result), dpi=110))
    thumb = base64.b64encode(figure_png(tracking_figure(result, (6.0, 3.6)), dpi=60)).decode()
    return {
        **result.metadata(),
        "tracking_plot": dg.MetadataValue.md(f"![tracking](data:image/png;base64,{thumb})"),
        "tracking_plot_path": dg.MetadataValue.path(str(path)),
    }


def _feed(
    config: PaperTradingConfig, source: ChampionSource | None, database: str, clock: Any
) -> tuple[Any, Any]:
    # The session's feed and the books its executor walks.
    start = datetime.fromisoformat(config.start).replace(tzinfo=UTC)
    carry = CarryFeaturesConfig(higher_timeframes=tuple(config.higher_timeframes))
    f = config.feed
    if f.kind == "simulated":
        feed, snapshots = simulated_feed(
            tuple(config.bases),
            start,
            start + timedelta(days=config.days),
            timeframe=f.bar,
            seed=config.seed,
            seconds_per_bar=f.seconds_per_bar,
            carry=carry,
            sentiment=_needs_sentiment(source, database),
        )
        return feed, SimulatedExchangeBooks(snapshots, feed.now)
    try:
        return ccxt_feed(
            database,
            tuple(config.bases),
            clock,
            history_start=start,
            bars=MarketBarsConfig(bar=f.bar),
            carry=carry,
            raw_timeframe=f.raw_timeframe,
            spot_exchange=f.spot_exchange,
            perp_exchange=f.perp_exchange,
            api_url=f.api_url,
            timeout_ms=f.timeout_ms,
            max_retries=f.max_retries,
            settle_s=f.settle_s,
            max_wait_bars=f.max_wait_bars,
            sentiment=_needs_sentiment(source, database),
        )
    except (ValueError, PermanentExchangeError) as exc:
        raise dg.Failure(description=f"ccxt feed: {exc}", allow_retries=False) from exc


def _live_executor(
    config: PaperTradingConfig, feed: Any, books: Any, env_config: EnvConfig
) -> CcxtOrderExecutor | None:
    # The live order executor, only with live_trading AND CARRY_LIVE_TRADING=I_UNDERSTAND (the
    # guard), on the ccxt feed, with keys read from their environment variables.
    if not config.live_trading:
        return None
    check_live_allowed(config.live_trading)
    if config.feed.kind != "ccxt":
        raise dg.Failure(
            description="live_trading needs feed.kind: ccxt (real orders against the venue's "
            "live prices, not the simulated exchange's)",
            allow_retries=False,
        )
    key, secret = dg.EnvVar("CARRY_API_KEY"), dg.EnvVar("CARRY_API_SECRET")
    keys = Credentials(key.get_value() or "", secret.get_value() or "")
    venue = live_order_client(
        enabled=config.live_trading,
        credentials=keys,
        spot_exchange=config.feed.spot_exchange,
        perp_exchange=config.feed.perp_exchange,
        api_url=config.feed.api_url,
        timeout_ms=config.feed.timeout_ms,
    )
    fees = TakerFees.from_env_config(env_config)
    return CcxtOrderExecutor(feed.market.symbols, venue, books, fees)


def _start_bar(ledger: Ledger, session_id: str, feed: Any) -> int:
    # A live feed's session starts at the last closed bar; a resumed one where it started.
    if not getattr(feed, "live", False):
        return 0
    stored = ledger.session_start(session_id)
    return int(feed.market.n_bars - 1) if stored is None else stored


@dg.op(
    description="Run one paper session into the ledger.",
    out=dg.Out(dg.Nothing),
    required_resource_keys={"paper_clock"},
)
def paper_session(context: dg.OpExecutionContext, config: PaperTradingConfig) -> dg.Output[None]:
    """Build feed, policy and books, run the session, log alerts, report the result.

    The session's rows live in the ledger (`paper.*`); the op's output is `Nothing` with the
    figures as metadata, so no IO manager is asked to store it (the code location's default, the
    DuckDB one, stores tables only).
    """
    if config.live_trading:
        check_live_allowed(config.live_trading)  # before any data is fetched
    database = config.database or default_database()
    source = _champion(config, database)
    feed, books = _feed(config, source, database, context.resources.paper_clock)
    env_config = PIPELINE_ENV_CONFIG
    env = CarryTradeEnv(feed.market, env_config)
    policy = _policy(source, env, database)
    live = _live_executor(config, feed, books, env_config)
    metrics = SessionMetrics(
        config.session_id, env_config.initial_cash, lambda k, m: context.log.warning(f"{k}: {m}")
    )
    ledger = Ledger(database)
    try:
        start_bar = _start_bar(ledger, config.session_id, feed)
        spec = SessionSpec(
            config.session_id,
            env_config,
            RiskConfig(**config.risk),  # type: ignore[arg-type]  # RiskConfig names its bad field
            start=start_bar,
            live=live is not None,
        )
        result = run_paper_session(
            spec=spec,
            feed=feed,
            policy=policy,
            books=books,
            ledger=ledger,
            executor=live,
            max_bars=config.max_bars,
            on_bar=metrics.observe,
        )
        tracking = track_session(
            feed.market,
            spec,
            read_session(ledger, spec.session_id),
            policy,
            threshold=config.divergence_threshold,
        )
        alert = divergence_alert(tracking)
        if alert is not None and ledger.add_alert(spec.session_id, *alert):
            context.log.warning(f"policy_divergence: {alert[2]}")
    finally:
        ledger.close()
    folder = Path(config.report_dir or Path(database).parent / "reports" / "paper")
    report = _report_metadata(tracking, folder / config.session_id)
    context.log.info(
        f"paper vs backtest: P&L gap {tracking.pnl_gap:+.2%}, tracking error "
        f"{tracking.tracking_error:.2%}/yr, figure {report['tracking_plot_path'].value}"
    )
    return dg.Output(
        None,
        metadata={
            "new_bars": result.new_bars,
            "last_bar": result.last_bar,
            "equity": result.equity,
            "ended": result.ended,
            **report,
        },
    )


@dg.job(
    description="One paper session (simulated feed by default); never a real order.",
    resource_defs={"paper_clock": dg.ResourceDefinition.hardcoded_resource(WallClock())},
)
def paper_trading_job() -> None:
    """The paper session op."""
    paper_session()
