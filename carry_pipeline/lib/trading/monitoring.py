"""Prometheus metrics of a paper session, on the session's own `CollectorRegistry`.

`SessionMetrics.observe` is the session's `on_bar` hook: after each committed bar it sets every
gauge from the bar's ledger record and the env's info. `serve(port)` exposes the registry over
HTTP for Prometheus to scrape; `text()` is the exposition a scrape returns. Alerts (`drawdown`,
`risk_state`, `feed_down`, `sentiment_stale`) are written by the session into `paper.alerts` in
the bar's own transaction; `SessionMetrics` counts them per kind and hands them to `on_alert` (the
Dagster job logs them).

Metrics (label `session`; per asset also `symbol`, per leg `leg`):
`carry_paper_equity_usd`, `carry_paper_pnl_usd` (equity less initial cash),
`carry_paper_funding_captured_usd` (cumulative funding paid to the account),
`carry_paper_exposure_usd{symbol,leg}` (signed notional at the bar's marks),
`carry_paper_leverage{symbol}` (gross notional of the asset / equity), `carry_paper_drawdown_ratio`,
`carry_paper_risk_state{state}` (1 for the current state, 0 for the others),
`carry_paper_last_bar_latency_seconds`, `carry_paper_feed_errors_total`,
`carry_paper_alerts_total{kind}`, `carry_paper_bars_total`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server

from carry_pipeline.lib.trading.ledger import BarRecord
from carry_pipeline.lib.trading.risk import RiskState

_EQUITY, _FUNDING = 1, 3  # positions in BarRecord.equity: (mark_ts, equity, cash, funding_pnl, ...)
_FEED_FAULT = 7  # position in BarRecord.decision


class SessionMetrics:
    """The gauges and counters of one session.

    Args:
        session_id: the `session` label.
        initial_cash: equity at the start (P&L is measured from it).
        on_alert: called with `(kind, message)` for every alert of a committed bar.
    """

    def __init__(
        self,
        session_id: str,
        initial_cash: float,
        on_alert: Callable[[str, str], None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.initial_cash = initial_cash
        self.on_alert = on_alert
        self.registry = CollectorRegistry()
        self.funding = 0.0
        r, s = self.registry, ["session"]
        self.equity = Gauge("carry_paper_equity_usd", "Account equity (USDT)", s, registry=r)
        self.pnl = Gauge("carry_paper_pnl_usd", "Equity less initial cash (USDT)", s, registry=r)
        self.funding_g = Gauge(
            "carry_paper_funding_captured_usd", "Cumulative funding paid (USDT)", s, registry=r
        )
        self.exposure = Gauge(
            "carry_paper_exposure_usd",
            "Signed leg notional (USDT)",
            [*s, "symbol", "leg"],
            registry=r,
        )
        self.leverage = Gauge(
            "carry_paper_leverage", "Gross asset notional / equity", [*s, "symbol"], registry=r
        )
        self.drawdown = Gauge(
            "carry_paper_drawdown_ratio", "Drawdown from the session peak", s, registry=r
        )
        self.state = Gauge(
            "carry_paper_risk_state", "1 for the current risk state", [*s, "state"], registry=r
        )
        self.latency = Gauge(
            "carry_paper_last_bar_latency_seconds",
            "Wall seconds from the last bar's poll to its commit",
            s,
            registry=r,
        )
        self.feed_errors = Counter(
            "carry_paper_feed_errors", "Bars held on a feed fault", s, registry=r
        )
        self.alerts = Counter(
            "carry_paper_alerts", "Alerts written to paper.alerts", [*s, "kind"], registry=r
        )
        self.bars = Counter("carry_paper_bars", "Bars committed", s, registry=r)

    def observe(self, rec: BarRecord, info: dict[str, Any]) -> None:
        """Update every metric from one committed bar (the session's `on_bar`)."""
        sid = self.session_id
        equity = float(rec.equity[_EQUITY])
        self.funding += float(rec.equity[_FUNDING])
        self.equity.labels(sid).set(equity)
        self.pnl.labels(sid).set(equity - self.initial_cash)
        self.funding_g.labels(sid).set(self.funding)
        self.drawdown.labels(sid).set(float(info["drawdown"]))
        marks = info.get("marks", {})
        for symbol, spot_qty, perp_qty, _ in rec.positions:
            spot_px, perp_px = marks.get(symbol, (0.0, 0.0))
            self.exposure.labels(sid, symbol, "spot").set(spot_qty * spot_px)
            self.exposure.labels(sid, symbol, "perp").set(perp_qty * perp_px)
            gross = abs(spot_qty) * spot_px + abs(perp_qty) * perp_px
            self.leverage.labels(sid, symbol).set(gross / equity if equity > 0 else 0.0)
        current = str(rec.decision[6])
        for state in RiskState:
            self.state.labels(sid, str(state)).set(1.0 if str(state) == current else 0.0)
        self.latency.labels(sid).set(float(info.get("bar_latency_s", 0.0)))
        if rec.decision[_FEED_FAULT]:
            self.feed_errors.labels(sid).inc()
        for _, kind, message, _ in rec.alerts:
            self.alerts.labels(sid, kind).inc()
            if self.on_alert is not None:
                self.on_alert(kind, message)
        self.bars.labels(sid).inc()

    def text(self) -> str:
        """The Prometheus exposition of the registry (what a scrape returns)."""
        return generate_latest(self.registry).decode()

    def serve(self, port: int) -> None:
        """Serve the registry on `port` (`/metrics`) from a daemon thread."""
        start_http_server(port, registry=self.registry)
