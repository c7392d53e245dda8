"""The risk manager in front of every paper (later live) order.

Two entry points a session calls each bar:

- `RiskManager.assess(bar)` before the policy's action is applied: rolls the UTC day, and moves the
  state machine NORMAL / REDUCING / HALTED on the emergency-flatten file flag, the max-drawdown
  stop, the daily-loss kill switch (HALTED until the next UTC day or `manual_reset`), and the
  circuit breaker (N consecutive losing bars or a sharp one-bar move: REDUCING for
  `breaker_cooldown_bars`). In HALTED, `action_override` turns every action into 0: flatten.
- `RiskManager.check_orders(...)` on the env's planned orders (through `RiskGate`, an `Executor`
  wrapper): per asset a scale in [0, 1] applied to both legs of the hedged pair. Orders that do
  not add gross notional always pass (closing is never blocked); adding ones are denied outside
  NORMAL, on a halted, stale or faulty feed, or below the minimum margin buffer, and scaled to fit
  the per-asset and total notional caps, the leverage cap and the share of book depth.

Every decision, denial and state change is returned as a `RiskRecord` with its rule, reason and the
figures behind it; the ledger stores them in `paper.risk_events`. The manager's state round-trips
through `snapshot` / `restore`, so a resumed session continues the same latches.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

import numpy as np

from carry_env.feeds import Executor, Fills, Orders


class RiskState(StrEnum):
    """Trading state: NORMAL trades, REDUCING only reduces exposure, HALTED flattens."""

    NORMAL = "NORMAL"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


SENTIMENT_ALERT_HOURS = 48.0
"""Default `RiskConfig.sentiment_alert_hours`: `SentimentWindowsConfig.max_age` (2 days)."""
SENTIMENT_AGE = "f_sent_age_hours"
"""The market feature holding the sentiment's age in hours (market-wide: every asset's is the
same)."""


@dataclass(frozen=True)
class RiskConfig:
    """Limits of the risk manager. Notional is USDT, fractions are of equity."""

    max_notional_per_asset_usd: float = 150_000.0
    """Largest absolute notional of either leg of one asset after a trade."""
    max_total_notional_usd: float = 400_000.0
    """Largest gross notional (both legs, every asset) after a trade."""
    max_leverage: float = 3.0
    """Largest gross notional / equity after a trade."""
    min_margin_buffer: float = 0.2
    """No new exposure while the account's margin buffer (`1 - 1 / margin_ratio`) is below this."""
    max_depth_fraction: float = 0.25
    """An order leg may take at most this share of the leg's visible depth (10 bp, USDT)."""
    daily_loss_limit: float = 0.02
    """Kill switch: a loss of this fraction of the UTC day's opening equity halts until the next UTC
    day (or a manual reset)."""
    max_losing_bars: int = 6
    """Circuit breaker: this many consecutive bars of falling equity switch to REDUCING."""
    sharp_move: float = 0.05
    """Circuit breaker: an absolute one-bar log return of any spot price at least this large."""
    breaker_cooldown_bars: int = 4
    """Bars the circuit breaker keeps REDUCING after its last trigger."""
    max_drawdown: float = 0.10
    """Drawdown from the session's peak equity that halts until a manual reset."""
    flatten_flag_path: str | None = None
    """A file whose existence halts and flattens at the next bar (until removed and reset)."""
    feed_down_alert_bars: int = 3
    """Consecutive faulty feed bars after which the session raises a `feed_down` alert."""
    drawdown_alert: float = 0.05
    """Drawdown from the session peak whose crossing (from below) raises a `drawdown` alert."""
    sentiment_alert_hours: float = SENTIMENT_ALERT_HOURS
    """Age (hours since publication) of the sentiment score in force past which the session
    books a `sentiment_stale` risk event and alert (`sentiment_records`); informational, it blocks
    no order. The default is `sentiment_windows`' `max_age`, where `f_sent_stale` turns 1."""

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "flatten_flag_path":
                if value is not None and not isinstance(value, str | os.PathLike):
                    problems.append(f"{f.name}={value!r} must be a path or None")
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(f"{f.name}={value!r} must be a number")
            elif not math.isfinite(value) or value <= 0:
                problems.append(f"{f.name}={value!r} must be finite and > 0")
            elif f.type in ("int",) and not isinstance(value, int):
                problems.append(f"{f.name}={value!r} must be an integer")
        for name in (
            "min_margin_buffer",
            "max_depth_fraction",
            "daily_loss_limit",
            "max_drawdown",
            "drawdown_alert",
        ):
            value = getattr(self, name)
            if isinstance(value, int | float) and not value < 1.0:
                problems.append(f"{name}={value!r} must be < 1 (a fraction)")
        if problems:
            raise ValueError("invalid RiskConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class RiskRecord:
    """One decision, denial, state change or fault.

    Attributes:
        bar: the env bar index it concerns.
        kind: "state_change", "order_allowed", "order_scaled", "order_denied", "flatten",
            "feed_fault", "reset", "sentiment_stale", "sentiment_fresh".
        rule: the rule behind it ("daily_loss", "circuit_breaker", "max_notional_per_asset", ...).
        reason: a sentence a person can read.
        state: the state after the record.
        figures: the numbers the rule compared.
        symbol: the asset, for order records.
    """

    bar: int
    kind: str
    rule: str
    reason: str
    state: RiskState
    figures: dict[str, Any] = field(default_factory=dict)
    symbol: str | None = None


@dataclass(frozen=True)
class BarView:
    """What the risk manager sees of a bar before trading it.

    Attributes:
        bar: env bar index.
        ts_ns: bar time, UTC nanoseconds since the epoch.
        equity: account equity (marked at this bar).
        margin_ratio: the binding margin ratio (inf when flat).
        spot_price: spot mid per asset at this bar.
        stale: per asset, whether the feed shows a forward-filled or outaged price.
        halted: whether the venue is halted.
        feed_fault: why the session's feed failed this bar ("" when it did not).
    """

    bar: int
    ts_ns: int
    equity: float
    margin_ratio: float
    spot_price: np.ndarray
    stale: np.ndarray
    halted: bool
    feed_fault: str = ""


@dataclass
class _Latches:
    state: RiskState = RiskState.NORMAL
    halt_rule: str = ""
    day: int = -1
    day_open_equity: float = math.nan
    peak_equity: float = math.nan
    prev_equity: float = math.nan
    prev_spot: list[float] = field(default_factory=list)
    losing_bars: int = 0
    cooldown_left: int = 0


class RiskManager:
    """State machine and pre-trade checks (see the module docstring).

    Args:
        config: the limits.
        symbols: the env's symbols in asset order.
        flag_exists: tests whether the flatten flag exists (default `os.path.exists`).
    """

    def __init__(
        self,
        config: RiskConfig,
        symbols: tuple[str, ...],
        flag_exists: Callable[[str], bool] = os.path.exists,
    ) -> None:
        self.config = config
        self.symbols = tuple(symbols)
        self._flag_exists = flag_exists
        self._s = _Latches()
        self._bar: BarView | None = None

    @property
    def state(self) -> RiskState:
        """The current state."""
        return self._s.state

    @property
    def halt_rule(self) -> str:
        """The rule that halted trading ("" unless HALTED)."""
        return self._s.halt_rule

    # ---- state machine ----
    def assess(self, view: BarView) -> list[RiskRecord]:
        """Update the state from this bar's figures; returns the state changes and faults."""
        s = self._s
        self._bar = view
        out: list[RiskRecord] = []
        day = int(view.ts_ns // 86_400_000_000_000)
        if day != s.day:
            if s.state is RiskState.HALTED and s.halt_rule == "daily_loss":
                out += self._move(
                    view.bar, RiskState.NORMAL, "daily_loss", "a new UTC day began", {"day": day}
                )
            s.day, s.day_open_equity = day, view.equity
        s.peak_equity = (
            view.equity if math.isnan(s.peak_equity) else max(s.peak_equity, view.equity)
        )
        if view.feed_fault:
            out.append(RiskRecord(view.bar, "feed_fault", "feed", view.feed_fault, s.state))
        out += self._halts(view)
        out += self._breaker(view)
        s.prev_equity = view.equity
        s.prev_spot = [float(x) for x in view.spot_price]
        return out

    def _halts(self, v: BarView) -> list[RiskRecord]:
        c, s = self.config, self._s
        if c.flatten_flag_path is not None and self._flag_exists(str(c.flatten_flag_path)):
            if not (s.state is RiskState.HALTED and s.halt_rule == "emergency_flatten"):
                return self._halt(
                    v.bar,
                    "emergency_flatten",
                    f"flag file {c.flatten_flag_path} exists",
                    {"path": str(c.flatten_flag_path)},
                )
            return []
        drawdown = 1.0 - v.equity / s.peak_equity if s.peak_equity > 0 else 0.0
        if drawdown >= c.max_drawdown and s.halt_rule not in ("max_drawdown", "emergency_flatten"):
            return self._halt(
                v.bar,
                "max_drawdown",
                "drawdown from the session peak reached the stop",
                {
                    "drawdown": drawdown,
                    "limit": c.max_drawdown,
                    "peak": s.peak_equity,
                    "equity": v.equity,
                },
            )
        loss = 1.0 - v.equity / s.day_open_equity if s.day_open_equity > 0 else 0.0
        if loss >= c.daily_loss_limit and s.state is not RiskState.HALTED:
            return self._halt(
                v.bar,
                "daily_loss",
                "loss since the UTC day's open reached the limit",
                {
                    "loss": loss,
                    "limit": c.daily_loss_limit,
                    "day_open_equity": s.day_open_equity,
                    "equity": v.equity,
                },
            )
        return []

    def _breaker(self, v: BarView) -> list[RiskRecord]:
        c, s = self.config, self._s
        losing = not math.isnan(s.prev_equity) and v.equity < s.prev_equity
        s.losing_bars = s.losing_bars + 1 if losing else 0
        move = 0.0
        if s.prev_spot:
            move = float(np.max(np.abs(np.log(np.asarray(v.spot_price) / np.asarray(s.prev_spot)))))
        trigger = ""
        if s.losing_bars >= c.max_losing_bars:
            trigger = f"{s.losing_bars} consecutive losing bars"
        elif move >= c.sharp_move:
            trigger = f"a one-bar spot move of {move:.4f} (log return)"
        if trigger:
            s.cooldown_left = c.breaker_cooldown_bars
            if s.state is RiskState.NORMAL:
                return self._move(
                    v.bar,
                    RiskState.REDUCING,
                    "circuit_breaker",
                    trigger,
                    {
                        "losing_bars": s.losing_bars,
                        "move": move,
                        "max_losing_bars": c.max_losing_bars,
                        "sharp_move": c.sharp_move,
                    },
                )
            return []
        if s.state is RiskState.REDUCING:
            s.cooldown_left -= 1
            if s.cooldown_left <= 0:
                return self._move(
                    v.bar,
                    RiskState.NORMAL,
                    "circuit_breaker",
                    "cooldown over",
                    {"cooldown_bars": c.breaker_cooldown_bars},
                )
        return []

    def _halt(self, bar: int, rule: str, reason: str, figures: dict[str, Any]) -> list[RiskRecord]:
        self._s.halt_rule = rule
        return self._move(bar, RiskState.HALTED, rule, reason, figures)

    def _move(
        self, bar: int, to: RiskState, rule: str, reason: str, figures: dict[str, Any]
    ) -> list[RiskRecord]:
        s = self._s
        if to is not RiskState.HALTED:
            s.halt_rule = ""
        frm, s.state = s.state, to
        return [RiskRecord(bar, "state_change", rule, f"{frm} -> {to}: {reason}", to, figures)]

    def manual_reset(self, bar: int, reason: str) -> list[RiskRecord]:
        """A person's reset: back to NORMAL, the day's opening and peak equity re-based to the last
        bar's (so the same loss does not trip again at once)."""
        s = self._s
        if not math.isnan(s.prev_equity):
            s.day_open_equity = s.peak_equity = s.prev_equity
        s.losing_bars = s.cooldown_left = 0
        return self._move(bar, RiskState.NORMAL, "manual_reset", reason, {})

    def action_override(self, action: np.ndarray) -> np.ndarray:
        """The action to trade: 0 for every asset in HALTED (flatten), else `action` unchanged."""
        if self._s.state is RiskState.HALTED:
            return np.zeros_like(np.asarray(action, dtype=np.float64))
        return action

    # ---- pre-trade checks ----
    def check_orders(
        self, orders: Orders, equity: float, spot_pos: np.ndarray, perp_pos: np.ndarray
    ) -> tuple[np.ndarray, list[RiskRecord]]:
        """Scale per asset (applied to both legs) for env 0's planned orders, with one record per
        asset that has an order.

        Args:
            orders: the env's planned orders (env 0 is checked).
            equity: account equity before the trade.
            spot_pos: spot coins held per asset before the trade.
            perp_pos: perp coins held per asset before the trade.
        """
        v = self._bar
        if v is None:
            raise RuntimeError("RiskManager.check_orders called before assess() for the bar")
        c = self.config
        dq_s, dq_p = orders.spot_qty[0], orders.perp_qty[0]
        s, p = orders.spot_price[0], orders.perp_price[0]

        def gross(i: int, f: float) -> float:
            # Gross notional of asset i after a share f of its order.
            return abs(spot_pos[i] + f * dq_s[i]) * s[i] + abs(perp_pos[i] + f * dq_p[i]) * p[i]

        n = len(self.symbols)
        active = [i for i in range(n) if dq_s[i] != 0.0 or dq_p[i] != 0.0]
        adds = [i for i in active if gross(i, 1.0) > gross(i, 0.0) * (1 + 1e-12)]
        scale = np.ones(n)
        why: dict[int, tuple[str, str, dict[str, Any]]] = {}

        def cut(i: int, f: float, rule: str, reason: str, figures: dict[str, Any]) -> None:
            if f < scale[i]:
                scale[i] = max(0.0, f)
                why[i] = (rule, reason, figures)

        margin_buffer = 1.0 - 1.0 / v.margin_ratio if v.margin_ratio > 0 else -math.inf
        for i in adds:
            block = self._blocker(i, v, margin_buffer)
            if block is not None:
                cut(i, 0.0, *block)
                continue
            for leg, pos, dq, px, depth in (
                ("spot", spot_pos, dq_s, s, orders.spot_depth_usd[0]),
                ("perp", perp_pos, dq_p, p, orders.perp_depth_usd[0]),
            ):
                f = _fit_abs(pos[i], dq[i], c.max_notional_per_asset_usd / px[i])
                cut(
                    i,
                    f,
                    "max_notional_per_asset",
                    f"{leg} notional after the trade over the cap",
                    {
                        "leg": leg,
                        "notional_after": abs(pos[i] + dq[i]) * px[i],
                        "cap": c.max_notional_per_asset_usd,
                    },
                )
                if dq[i] != 0.0:
                    cap = c.max_depth_fraction * depth[i]
                    cut(
                        i,
                        cap / (abs(dq[i]) * px[i]),
                        "max_depth_fraction",
                        f"{leg} order larger than its share of book depth",
                        {
                            "leg": leg,
                            "order_usd": abs(dq[i]) * px[i],
                            "depth_usd": float(depth[i]),
                            "max_fraction": c.max_depth_fraction,
                        },
                    )
        limit = min(c.max_total_notional_usd, c.max_leverage * equity)
        total = lambda k: sum(gross(i, k * scale[i] if i in adds else 1.0) for i in range(n))  # noqa: E731
        if adds and total(1.0) > limit:
            k = _largest_feasible(lambda k: total(k) <= limit)
            rule = (
                "max_total_notional"
                if c.max_total_notional_usd <= c.max_leverage * equity
                else "max_leverage"
            )
            for i in adds:
                cut(
                    i,
                    k * scale[i],
                    rule,
                    "gross notional after the trade over the limit",
                    {
                        "gross_after": total(1.0),
                        "limit": limit,
                        "equity": equity,
                        "max_total_notional_usd": c.max_total_notional_usd,
                        "max_leverage": c.max_leverage,
                    },
                )
        return scale, self._order_records(v.bar, active, adds, scale, why, dq_s, dq_p, s, p)

    def _blocker(
        self, i: int, v: BarView, margin_buffer: float
    ) -> tuple[str, str, dict[str, Any]] | None:
        if self._s.state is not RiskState.NORMAL:
            return (
                "risk_state",
                f"no new exposure while {self._s.state}",
                {"rule": self._s.halt_rule},
            )
        if v.feed_fault:
            return ("feed_fault", f"no new exposure on a faulty feed: {v.feed_fault}", {})
        if v.halted:
            return ("feed_halted", "no new exposure while the venue is halted", {})
        if bool(v.stale[i]):
            return ("feed_stale", "no new exposure on a stale or outaged price", {})
        if margin_buffer < self.config.min_margin_buffer:
            return (
                "min_margin_buffer",
                "margin buffer below the minimum",
                {"margin_buffer": margin_buffer, "min": self.config.min_margin_buffer},
            )
        return None

    def _order_records(
        self,
        bar: int,
        active: list[int],
        adds: list[int],
        scale: np.ndarray,
        why: dict[int, tuple[str, str, dict[str, Any]]],
        dq_s: np.ndarray,
        dq_p: np.ndarray,
        s: np.ndarray,
        p: np.ndarray,
    ) -> list[RiskRecord]:
        out = []
        for i in active:
            base = {
                "spot_qty": float(dq_s[i]),
                "perp_qty": float(dq_p[i]),
                "scale": float(scale[i]),
                "spot_usd": float(abs(dq_s[i]) * s[i]),
                "perp_usd": float(abs(dq_p[i]) * p[i]),
            }
            if i in why:
                rule, reason, figures = why[i]
                kind = "order_denied" if scale[i] == 0.0 else "order_scaled"
                out.append(
                    RiskRecord(
                        bar, kind, rule, reason, self.state, {**base, **figures}, self.symbols[i]
                    )
                )
            else:
                reason = "adds exposure within limits" if i in adds else "reduces exposure"
                out.append(
                    RiskRecord(
                        bar, "order_allowed", "pre_trade", reason, self.state, base, self.symbols[i]
                    )
                )
        return out

    # ---- persistence ----
    def snapshot(self) -> dict[str, Any]:
        """The latches as plain values (for the ledger)."""
        d = dict(vars(self._s))
        d["state"] = str(self._s.state)
        return d

    def restore(self, snap: dict[str, Any]) -> None:
        """Continue from `snapshot()`'s values."""
        d: dict[str, Any] = {k: (math.nan if v is None else v) for k, v in snap.items()}  # null=NaN
        d["state"] = RiskState(d["state"])
        self._s = _Latches(**d)


def sentiment_age_hours(features: np.ndarray, feature_names: tuple[str, ...], t: int) -> float:
    """The sentiment's age at bar t (`SENTIMENT_AGE` of the first asset), NaN when the market
    has no sentiment features."""
    if SENTIMENT_AGE not in feature_names:
        return math.nan
    return float(features[t, 0, feature_names.index(SENTIMENT_AGE)])


def sentiment_records(
    t: int,
    features: np.ndarray,
    feature_names: tuple[str, ...],
    threshold_hours: float,
    state: RiskState,
    *,
    first: bool,
) -> list[RiskRecord]:
    """A `sentiment_stale` record at the bar where the sentiment's age rises past
    `threshold_hours` (at the session's `first` bar when it is already past), and a
    `sentiment_fresh` record where a newer score brings it back within. Computed from bars t - 1
    and t only, so a resumed session repeats neither; none without sentiment features."""
    age = sentiment_age_hours(features, feature_names, t)
    if math.isnan(age):
        return []
    before = math.nan if first or t == 0 else sentiment_age_hours(features, feature_names, t - 1)
    stale, was_stale = age > threshold_hours, before > threshold_hours
    figures = {"age_hours": age, "threshold_hours": threshold_hours}
    if stale and not was_stale:
        reason = (
            f"sentiment is {age:.1f} h old (over {threshold_hours:g} h): the sentiment expert "
            "sees the last stored score carried forward; ingest newer scores"
        )
        return [RiskRecord(t, "sentiment_stale", "sentiment_age", reason, state, figures)]
    if was_stale and not stale:
        reason = f"sentiment is {age:.1f} h old again (within {threshold_hours:g} h)"
        return [RiskRecord(t, "sentiment_fresh", "sentiment_age", reason, state, figures)]
    return []


def _fit_abs(pos: float, dq: float, cap: float) -> float:
    # Largest f in [0, 1] with |pos + f dq| <= cap (0 when already over and the order adds).
    if abs(pos + dq) <= cap:
        return 1.0
    target = math.copysign(cap, pos + dq)
    return min(1.0, max(0.0, (target - pos) / dq)) if dq != 0.0 else 1.0


def _largest_feasible(ok: Callable[[float], bool]) -> float:
    # Bisection for the largest k in [0, 1] with ok(k), ok monotone on the adding orders.
    if not ok(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


class RiskGate:
    """An `Executor` that puts the risk manager in front of another executor.

    The session sets `account` before each `env.step`; the gate scales both legs of each asset's
    order by the manager's scale, fills the result with `inner`, and keeps the planned orders,
    scales and records of the step for the ledger.
    """

    def __init__(self, inner: Executor, manager: RiskManager) -> None:
        self.inner = inner
        self.manager = manager
        self.account: tuple[float, np.ndarray, np.ndarray] | None = None
        self.planned: Orders | None = None
        self.scale: np.ndarray | None = None
        self.records: list[RiskRecord] = []

    def execute(self, orders: Orders) -> Fills:
        """Check, scale, fill."""
        if self.account is None:
            raise RuntimeError("RiskGate.execute called without the account of the bar")
        equity, spot, perp = self.account
        scale, self.records = self.manager.check_orders(orders, equity, spot, perp)
        self.planned, self.scale = orders, scale
        allowed = Orders(
            orders.spot_qty * scale[None, :],
            orders.perp_qty * scale[None, :],
            orders.spot_price,
            orders.perp_price,
            orders.spot_depth_usd,
            orders.perp_depth_usd,
            orders.spread_bps,
        )
        return self.inner.execute(allowed)
