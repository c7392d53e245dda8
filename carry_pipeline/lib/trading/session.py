"""`run_paper_session`: feed -> observation -> policy.predict -> risk manager -> executor -> env
step -> ledger, one bar at a time, resumable after a crash.

The env is the training and backtest env (`CarryTradeEnv`); only its feed (`PaperFeed`) and
executor (`RiskGate` around `BookExecutor`, or around the live `CcxtOrderExecutor` when live
trading is enabled, behind `_ResumingExecutor`) differ. On start the session calls the policy's
`reset(env)` when it has one (the trained-model adapters build their observation gathers there),
replays the ledger's committed bars through the env with their stored actions and stored fills (no
book is walked, no order sent; the env must plan the same orders, else the ledger and the market
disagree and the session stops), restores the risk manager's latches, and continues live from the
first bar not committed.

Policy state: the session threads SB3's recurrent `state` and `episode_start` through `predict`
(a RecurrentPPO model keeps its LSTM state there), and a policy with `get_state()` /
`set_state(state)` (the trained-model adapters: the experts' LSTM states, the meta-controller's
running statistics) keeps the rest inside. When either exists, both are packed
(`policy_state.pack_state`) into `paper.policy_state` in the bar's transaction; a resume restores
them from the last committed bar and does not ask the policy again. A ledger without stored states
(a stateless policy, or a session written before states were stored) is resumed by asking the
policy again at each committed non-fault bar, which rebuilds a deterministic policy's state.

Feed faults (the feed's `poll` raising, or returning a reason: no data, malformed bar) never crash
the loop: the bar is held (action NaN: no orders, positions carried and marked), a `feed_fault`
risk event is booked, a `feed_down` alert after `RiskConfig.feed_down_alert_bars` faulty bars in a
row, and trading resumes on the next good bar. A `drawdown` alert is written at the bar whose
drawdown crosses `RiskConfig.drawdown_alert` from below; risk state changes are alerts too.

Sentiment: when the market has `f_sent_` features, the bar whose sentiment age
(`f_sent_age_hours`) rises past `RiskConfig.sentiment_alert_hours` (or the session's first bar,
when it starts past it) books a `sentiment_stale` risk event and alert; the bar where a newer
score brings it back books `sentiment_fresh` (`risk.sentiment_records`). Neither blocks an order.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import numpy as np

from carry_env.config import EnvConfig
from carry_env.env import CarryTradeEnv
from carry_env.feeds import Fills, MarketFeed, Orders
from carry_env.kernel import I_T
from carry_env.market import MarketData
from carry_pipeline.lib.trading.books import BookSource
from carry_pipeline.lib.trading.executor import BookExecutor, FeeBasis, LegExecutor, TakerFees
from carry_pipeline.lib.trading.ledger import BarRecord, Ledger, ReplayBar, to_json
from carry_pipeline.lib.trading.policy_state import pack_state, unpack_state
from carry_pipeline.lib.trading.risk import (
    SENTIMENT_ALERT_HOURS,
    BarView,
    RiskConfig,
    RiskGate,
    RiskManager,
    RiskRecord,
    RiskState,
    sentiment_records,
)


@runtime_checkable
class PaperFeed(MarketFeed, Protocol):
    """A `MarketFeed` the session polls once per bar before trading it."""

    def poll(self, t: int) -> str:
        """Wait for bar `t` and check it: "" when it is good, else why not ("no data", "malformed
        ..."); may raise (network and exchange errors), which the session books as a fault."""
        ...


class ReplayFeed:
    """A stored `MarketData` streamed bar by bar on an accelerated clock.

    Args:
        data: the bars.
        seconds_per_bar: wall seconds `poll` sleeps per bar (0: as fast as possible).
    """

    def __init__(self, data: MarketData, seconds_per_bar: float = 0.0) -> None:
        self.data = data
        self.seconds_per_bar = seconds_per_bar

    @property
    def market(self) -> MarketData:
        """All bars of the replay."""
        return self.data

    def bar_ready(self, t: int) -> bool:
        """True for every bar inside the data."""
        return 0 <= t < self.data.n_bars

    def poll(self, t: int) -> str:
        """Sleep `seconds_per_bar`, then "" if bar t has positive finite prices, else why not."""
        if self.seconds_per_bar > 0.0:
            time.sleep(self.seconds_per_bar)
        if not self.bar_ready(t):
            return f"no data for bar {t}"
        for name in ("spot", "perp"):
            row = getattr(self.data, name)[t]
            if not (np.isfinite(row).all() and (row > 0).all()):
                return f"malformed bar {t}: {name} prices {row.tolist()}"
        return ""


@runtime_checkable
class Policy(Protocol):
    """SB3's `predict` signature. A policy may also have `explain(obs) -> dict` with
    `expert_outputs` and `gating_weights` (the meta-controller's), which the ledger stores, and
    `get_state()` / `set_state(state)` for what it keeps between bars besides SB3's `state` (a
    nest `pack_state` can store), which the ledger persists with every bar."""

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """The action for `observation` and the next recurrent state."""
        ...


@dataclass(frozen=True)
class SessionSpec:
    """What a paper session is: replaying it with the same spec gives the same bars.

    Attributes:
        session_id: the ledger key.
        env_config: the env's config (fees, spread, anomalies...).
        risk_config: the risk manager's limits.
        seed: `env.reset(seed=...)` (anomaly draws).
        start: first bar index.
        fee_basis: the executor's fee basis ("fill" is the exchange's rule).
        live: real orders (the live executor); part of the session's identity, so a paper
            session is never resumed live, nor a live one on paper.
    """

    session_id: str
    env_config: EnvConfig
    risk_config: RiskConfig
    seed: int = 0
    start: int = 0
    fee_basis: FeeBasis = "fill"
    live: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain values (hashed into `paper.sessions`)."""
        risk = {k: getattr(self.risk_config, k) for k in vars(self.risk_config)}
        if risk["sentiment_alert_hours"] == SENTIMENT_ALERT_HOURS:
            del risk["sentiment_alert_hours"]  # added later: absent at its default, old hashes hold
        return {
            "env_config": self.env_config.to_dict(),
            "risk_config": risk,
            "fee_basis": self.fee_basis,
            **({"live": True} if self.live else {}),  # absent on paper: old sessions' hashes hold
        }


@dataclass(frozen=True)
class SessionResult:
    """How a call of `run_paper_session` ended.

    Attributes:
        resumed_bars: committed bars replayed from the ledger.
        new_bars: bars traded and committed by this call.
        last_bar: the last committed bar (-1 when none).
        equity: equity after the last committed bar.
        ended: the env's episode ended (data exhausted or terminated).
    """

    resumed_bars: int
    new_bars: int
    last_bar: int
    equity: float
    ended: bool


class _ResumingExecutor:
    # Serves the ledger's fills while replaying committed bars, then the risk-gated live executor.
    def __init__(self, live: RiskGate, symbols: tuple[str, ...]) -> None:
        self.live = live
        self.symbols = symbols
        self.replay: ReplayBar | None = None

    def execute(self, orders: Orders) -> Fills:
        if self.replay is None:
            return self.live.execute(orders)
        return _stored_fills(self.replay, orders, self.symbols)


def _stored_fills(rb: ReplayBar, orders: Orders, symbols: tuple[str, ...]) -> Fills:
    # The fills booked for bar rb.bar, after checking that the env planned the orders stored then.
    idx = {s: i for i, s in enumerate(symbols)}
    planned = {"spot": orders.spot_qty[0], "perp": orders.perp_qty[0]}
    stored = {(s, leg): q for s, leg, q in rb.planned}
    for i, s in enumerate(symbols):
        for leg in ("spot", "perp"):
            q = stored.get((s, leg), 0.0)
            if not math.isclose(planned[leg][i], q, rel_tol=1e-9, abs_tol=1e-12):
                raise RuntimeError(
                    f"resume of bar {rb.bar}: the env plans {planned[leg][i]!r} {s} {leg}, the "
                    f"ledger has {q!r}; market data or code changed under a running session"
                )
    shape = orders.spot_qty.shape
    out = {n: np.zeros(shape) for n in ("spot", "perp", "fees", "spread", "impact")}
    for s, leg, qty, fee, spread, impact in rb.fills:
        i = idx[s]
        out[leg][0, i] = qty
        out["fees"][0, i] += fee
        out["spread"][0, i] += spread
        out["impact"][0, i] += impact
    return Fills(out["spot"], out["perp"], out["fees"], out["spread"], out["impact"])


def _utc(ts_ns: int) -> datetime:
    return datetime.fromtimestamp(ts_ns / 1e9, tz=UTC)


def run_paper_session(
    *,
    spec: SessionSpec,
    feed: PaperFeed,
    policy: Policy,
    books: BookSource,
    ledger: Ledger,
    max_bars: int | None = None,
    on_commit: Callable[[int], None] | None = None,
    on_bar: Callable[[BarRecord, dict[str, Any]], None] | None = None,
    executor: LegExecutor | None = None,
) -> SessionResult:
    """Trade `feed` with `policy` until the data ends or `max_bars` bars are committed in all.

    Args:
        spec: the session (id, configs, seed, start bar).
        feed: the market feed; `feed.market` holds the bars the env is built on.
        policy: anything with SB3's `predict`.
        books: where the executor gets order books.
        ledger: the DuckDB ledger.
        max_bars: total committed bars (resumed ones included) at which to stop; None: to the end.
        on_commit: called with each newly committed bar index (tests use it to be killed mid-run).
        on_bar: called with each newly committed bar's record and the env's info, plus
            `bar_latency_s` (wall seconds from the bar's poll to its commit) and `marks`
            (symbol -> spot and perp price the bar is marked at); for monitoring.
        executor: what fills the risk-gated orders (`last_legs` after each call, and
            `last_errors`: venue rejections and network errors, booked as `order_error` risk
            events); default a `BookExecutor` walking `books` with the env's taker fees.
    """
    market = feed.market
    symbols = market.symbols
    cfg = spec.env_config
    ledger.open_session(
        spec.session_id, spec.seed, spec.start, symbols, spec.to_dict(), datetime.now(UTC)
    )
    manager = RiskManager(spec.risk_config, symbols)
    book_ex: LegExecutor = executor or BookExecutor(
        symbols, books, TakerFees.from_env_config(cfg), spec.fee_basis
    )
    gate = RiskGate(book_ex, manager)
    resuming = _ResumingExecutor(gate, symbols)
    env = CarryTradeEnv(market, cfg, feed=feed, executor=resuming)
    # A live feed (`live = True`) appends bars as they close: the episode has no end in the data.
    options: dict[str, Any] = {"start": spec.start}
    if getattr(feed, "live", False):
        options["open_end"] = True
    obs, info = env.reset(seed=spec.seed, options=options)
    reset = getattr(policy, "reset", None)
    if callable(reset):
        reset(env)  # trained-model adapters build their observation gathers over this env
    ended = False
    replay = ledger.replay_bars(spec.session_id)
    if replay and replay[0].bar != spec.start:
        raise RuntimeError(
            f"ledger of {spec.session_id!r} starts at bar {replay[0].bar}, not {spec.start}"
        )
    carried = _PolicyCarry(policy)
    stored = ledger.policy_state(spec.session_id, replay[-1].bar) if replay else None
    if stored is not None:
        carried.restore(stored)
    for rb in replay:
        resuming.replay = rb
        if stored is None and not rb.feed_fault:
            # No stored state: the policy sees every bar it saw before the restart, which
            # rebuilds a deterministic policy's state; its action is the stored one.
            carried.predict(obs)
        obs, _, term, trunc, info = env.step(np.asarray(rb.action))
        ended = term or trunc
    resuming.replay = None
    if replay:
        manager.restore(replay[-1].risk_snapshot)
    names = {n: j for j, n in enumerate(env.observation_names)}
    stale_idx = [names[f"{s}:stale"] for s in symbols]
    faults = _trailing_faults(replay)  # a feed_down alert counts bars across a restart
    drawdown = float(info["drawdown"])  # after the last committed bar: a crossing is not repeated
    new = 0
    while not ended and (max_bars is None or len(replay) + new < max_bars):
        t = int(env.engine.is_[0, I_T])
        started = time.monotonic()
        reason = _poll(feed, t)
        market = env.engine.market  # a live feed's market grows by a bar per step
        faults = faults + 1 if reason else 0
        view = BarView(
            t,
            int(market.ts[t]),
            float(info["equity"]),
            float(info["margin_ratio"]),
            market.spot[t].copy(),
            obs[stale_idx] > 0.5,
            bool(obs[names["halted"]] > 0.5),
            reason,
        )
        state_before = manager.state
        records = manager.assess(view)
        records += sentiment_records(
            t, market.features, tuple(market.feature_names),
            spec.risk_config.sentiment_alert_hours, manager.state, first=t == spec.start,
        )  # fmt: skip
        explain: dict[str, Any] = {}
        if reason:
            policy_action = np.full(len(symbols), np.nan)
        else:
            policy_action = carried.predict(obs).reshape(len(symbols))
            if hasattr(policy, "explain"):
                explain = dict(policy.explain(obs))
        action = manager.action_override(policy_action) if not reason else policy_action
        if not reason and manager.state is RiskState.HALTED:
            records.append(
                RiskRecord(
                    t,
                    "flatten",
                    manager.halt_rule or "risk_state",
                    "HALTED: every target set to 0 (flatten)",
                    manager.state,
                    {"policy_action": policy_action.tolist()},
                )
            )
        gate.account = (float(info["equity"]), info["spot_qty"].copy(), info["perp_qty"].copy())
        gate.records, gate.planned, gate.scale = [], None, None
        book_ex.last_legs = []
        book_ex.last_errors = []
        obs_digest = hashlib.sha256(obs.tobytes()).hexdigest()
        obs, _, term, trunc, info = env.step(action)
        ended = term or trunc
        records += gate.records
        records += [
            RiskRecord(t, "order_error", "venue", e.reason, manager.state, e.figures, e.symbol)
            for e in book_ex.last_errors
        ]
        alerts = _alerts(t, state_before, manager, records, faults, spec.risk_config)
        limit = spec.risk_config.drawdown_alert
        if drawdown < limit <= info["drawdown"]:
            figures = {"drawdown": info["drawdown"], "threshold": limit, "equity": info["equity"]}
            message = f"drawdown {info['drawdown']:.4f} crossed the alert threshold {limit}"
            alerts.append((len(alerts), "drawdown", message, to_json(figures)))
        drawdown = float(info["drawdown"])
        rec = _bar_record(
            t,
            env.engine.market,
            view,
            obs_digest,
            explain,
            policy_action,
            action,
            manager,
            records,
            alerts,
            gate,
            book_ex,
            info,
            symbols,
        )
        rec.policy_state = carried.pack()
        ledger.commit_bar(spec.session_id, rec)
        new += 1
        if on_bar is not None:
            m = env.engine.market
            nxt = min(t + 1, m.n_bars - 1)
            marks = {
                s: (float(m.spot[nxt, i]), float(m.perp[nxt, i])) for i, s in enumerate(symbols)
            }
            on_bar(rec, {**info, "bar_latency_s": time.monotonic() - started, "marks": marks})
        if on_commit is not None:
            on_commit(t)
    last = spec.start + len(replay) + new - 1
    return SessionResult(len(replay), new, last, float(info["equity"]), bool(ended))


class _PolicyCarry:
    # What the policy carries between bars: SB3's recurrent `state` and `episode_start`, and the
    # adapter's own `get_state()`; packed for the ledger, restored on resume.
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.state: Any = None
        self.starting = True
        self.has_inner = callable(getattr(policy, "get_state", None)) and callable(
            getattr(policy, "set_state", None)
        )

    def predict(self, obs: np.ndarray) -> np.ndarray:
        action, self.state = self.policy.predict(
            obs, state=self.state, episode_start=np.array([self.starting]), deterministic=True
        )
        self.starting = False
        return np.asarray(action, dtype=np.float64)

    def pack(self) -> bytes | None:
        # None when there is nothing to carry (a stateless policy before or after any bar).
        inner = self.policy.get_state() if self.has_inner else None  # type: ignore[attr-defined]
        if self.state is None and inner is None:
            return None
        return pack_state({"sb3": self.state, "starting": self.starting, "policy": inner})

    def restore(self, data: bytes) -> None:
        carried = unpack_state(data)
        self.state, self.starting = carried["sb3"], bool(carried["starting"])
        if carried["policy"] is not None:
            if not self.has_inner:
                raise RuntimeError(
                    "the ledger holds a policy state from get_state(), but this session's policy "
                    f"{type(self.policy).__name__} has no set_state(); resume it with the policy "
                    "it was started with"
                )
            self.policy.set_state(carried["policy"])  # type: ignore[attr-defined]


def _trailing_faults(replay: list[ReplayBar]) -> int:
    # Consecutive faulty feed bars at the end of the committed bars.
    n = 0
    for rb in reversed(replay):
        if not rb.feed_fault:
            break
        n += 1
    return n


def _poll(feed: PaperFeed, t: int) -> str:
    # The feed's verdict on bar t; an exception is a fault like any other (named, not raised).
    try:
        reason = feed.poll(t)
    except Exception as e:  # noqa: BLE001 - every feed failure is held and booked, never fatal
        return f"{type(e).__name__}: {e}"
    if not isinstance(reason, str):
        return f"malformed poll result {reason!r}"
    return reason


def _alerts(
    bar: int,
    before: Any,
    manager: RiskManager,
    records: list[RiskRecord],
    faults: int,
    config: RiskConfig,
) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for r in records:
        if r.kind == "state_change":
            out.append(("risk_state", r.reason, to_json({"rule": r.rule, **r.figures})))
        elif r.kind == "sentiment_stale":
            out.append(("sentiment_stale", r.reason, to_json(r.figures)))
    if faults == config.feed_down_alert_bars:
        out.append(
            ("feed_down", f"feed faulty for {faults} bars in a row", to_json({"bars": faults}))
        )
    return [(j, *a) for j, a in enumerate(out)]


def _bar_record(
    t: int,
    market: MarketData,
    view: BarView,
    obs_digest: str,
    explain: dict[str, Any],
    policy_action: np.ndarray,
    action: np.ndarray,
    manager: RiskManager,
    records: list[RiskRecord],
    alerts: list[tuple[Any, ...]],
    gate: RiskGate,
    book_ex: LegExecutor,
    info: dict[str, Any],
    symbols: tuple[str, ...],
) -> BarRecord:
    ts = _utc(int(market.ts[t]))
    decision = (
        ts,
        obs_digest,
        to_json(explain.get("expert_outputs")),
        to_json(explain.get("gating_weights")),
        to_json(policy_action),
        to_json(action),
        str(manager.state),
        view.feed_fault,
    )
    mark_ts = _utc(int(market.ts[min(t + 1, market.n_bars - 1)]))
    equity = (
        mark_ts,
        info["equity"],
        info["cash"],
        info["funding_pnl"],
        info["price_pnl"],
        info["fees"],
        info["slippage"],
        info["borrow_cost"],
        info["liquidation_loss"],
        info["insurance_fund"],
        info["margin_ratio"] if math.isfinite(info["margin_ratio"]) else None,
        info["drawdown"],
        info["leverage"],
        str(manager.state),
        to_json(manager.snapshot()),
        info["margin_added"],
    )
    orders = []
    if gate.planned is not None and gate.scale is not None:
        for i, s in enumerate(symbols):
            for leg, q, mid in (
                ("spot", gate.planned.spot_qty, gate.planned.spot_price),
                ("perp", gate.planned.perp_qty, gate.planned.perp_price),
            ):
                if q[0, i] != 0.0:
                    sc = float(gate.scale[i])
                    orders.append(
                        (s, leg, float(q[0, i]), sc, float(q[0, i]) * sc, float(mid[0, i]))
                    )
    fills = [
        (
            f.symbol,
            f.leg,
            f.filled_qty,
            f.unfilled_qty,
            f.vwap if f.filled_qty else None,
            f.mid,
            f.fee,
            f.spread_cost,
            f.impact_cost,
            f.levels_used,
            to_json(f.book.to_record()),
        )
        for f in book_ex.last_legs
    ]
    positions = [
        (s, float(info["spot_qty"][i]), float(info["perp_qty"][i]), float(info["collateral"][i]))
        for i, s in enumerate(symbols)
    ]
    risk = [
        (j, r.kind, r.rule, r.symbol, str(r.state), r.reason, to_json(r.figures))
        for j, r in enumerate(records)
    ]
    return BarRecord(t, decision, equity, orders, fills, positions, risk, alerts)
