"""Paper vs backtest: a session's equity and actions against `run_backtest` of the same bars.

The backtest runs the same policy (reset on a fresh `CarryTradeEnv`) over the session's bars
`[start, last_bar + 1)` with the session's `EnvConfig` and seed, so it meets the same anomalies;
it fills with the env's own sim executor and has no risk manager. The differences between the two
curves are therefore the paper executor's book-walking fills and the risk manager's vetoes.

Figures (`TrackingResult`):
- `pnl_gap`: `(paper P&L - backtest P&L) / max(|backtest P&L|, 1e-4 * initial equity)` over the
  session; the issue asks for `|pnl_gap| <= 0.15` (`within_tolerance`). The floor keeps a flat
  backtest (P&L near 0) from turning cents into an infinite ratio.
- `max_equity_gap`: the largest `|paper / backtest - 1|` of equity at any bar.
- `tracking_error`: the standard deviation of the per-bar return difference, annualised at 365
  days.
- `max_action_gap`, `divergent_bars`, `first_divergent_bar`: the largest per-asset difference
  between the policy's action in `paper.decisions` and the backtest's at the same bar (feed-fault
  bars, where the paper policy was not asked, are skipped), and the bars where it exceeds the
  divergence threshold: `divergence_alert` turns those into one `policy_divergence` alert.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: Dagster runs and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from carry_env.env import CarryTradeEnv  # noqa: E402
from carry_env.market import MarketData  # noqa: E402
from carry_pipeline.lib.evaluation.backtest import Policy, run_backtest  # noqa: E402
from carry_pipeline.lib.trading.ledger import Ledger  # noqa: E402
from carry_pipeline.lib.trading.session import SessionSpec  # noqa: E402

PNL_TOLERANCE = 0.15
"""The issue's bound on `|pnl_gap|`."""
DIVERGENCE_THRESHOLD = 0.25
"""Default bound on the per-asset action difference (actions are in [-1, 1])."""


@dataclass(frozen=True)
class SessionRecord:
    """What the ledger holds of a session for the comparison.

    Attributes:
        bars: committed bar indices, ascending and contiguous.
        ts_ns: `[n]` the mark time of each bar's equity row (the bar after it).
        equity: `[n]` equity after each bar.
        policy_actions: `[n, N]` the policy's action at each bar (NaN on feed-fault bars).
    """

    bars: np.ndarray
    ts_ns: np.ndarray
    equity: np.ndarray
    policy_actions: np.ndarray


def read_session(ledger: Ledger, session_id: str) -> SessionRecord:
    """The session's committed equity and policy actions.

    Raises:
        ValueError: the session has no committed bar.
    """
    rows = ledger.read(
        "select e.bar, epoch_ns(e.ts), e.equity, d.policy_action from paper.equity e "
        "join paper.decisions d using (session_id, bar) where session_id = ? order by bar",
        [session_id],
    )
    if not rows:
        raise ValueError(f"{ledger.path}: paper session {session_id!r} has no committed bar")
    actions = [[math.nan if x is None else x for x in json.loads(r[3])] for r in rows]
    return SessionRecord(
        np.array([r[0] for r in rows], dtype=np.int64),
        np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=np.float64),
        np.array(actions, dtype=np.float64),
    )


@dataclass(frozen=True)
class TrackingResult:
    """The paper curve, the backtest curve of the same bars, and the figures (module docstring)."""

    session_id: str
    bars: np.ndarray
    ts_ns: np.ndarray
    """`[n + 1]`: the first bar and each bar's mark time."""
    paper_equity: np.ndarray
    """`[n + 1]`: initial cash, then equity after each bar."""
    backtest_equity: np.ndarray
    pnl_gap: float
    max_equity_gap: float
    tracking_error: float
    max_action_gap: float
    divergent_bars: list[int]
    threshold: float

    @property
    def within_tolerance(self) -> bool:
        """`|pnl_gap| <= PNL_TOLERANCE`."""
        return abs(self.pnl_gap) <= PNL_TOLERANCE

    @property
    def first_divergent_bar(self) -> int | None:
        """The first bar whose action gap exceeds the threshold, or None."""
        return self.divergent_bars[0] if self.divergent_bars else None

    def metadata(self) -> dict[str, float | int | bool]:
        """The figures as plain values (Dagster metadata)."""
        return {
            "bars": int(self.bars.size),
            "paper_pnl": float(self.paper_equity[-1] - self.paper_equity[0]),
            "backtest_pnl": float(self.backtest_equity[-1] - self.backtest_equity[0]),
            "pnl_gap": self.pnl_gap,
            "within_tolerance": self.within_tolerance,
            "max_equity_gap": self.max_equity_gap,
            "tracking_error": self.tracking_error,
            "max_action_gap": self.max_action_gap,
            "divergent_bars": len(self.divergent_bars),
        }


def track_session(
    market: MarketData,
    spec: SessionSpec,
    record: SessionRecord,
    policy: Policy,
    *,
    threshold: float = DIVERGENCE_THRESHOLD,
) -> TrackingResult:
    """Backtest `policy` over the session's bars and compare (module docstring).

    Raises:
        ValueError: the session's bars do not start at `spec.start` or are not contiguous, or the
            backtest ended (terminated) before the session's last bar.
    """
    n = int(record.bars.size)
    if record.bars[0] != spec.start or not (np.diff(record.bars) == 1).all():
        raise ValueError(
            f"paper session {spec.session_id!r}: bars {record.bars[0]}..{record.bars[-1]} are not "
            f"contiguous from the spec's start {spec.start}"
        )
    env = CarryTradeEnv(market, spec.env_config)
    bt = run_backtest(
        env, policy, name="paper-backtest", start=spec.start, end=spec.start + n, seed=spec.seed
    )
    if bt.n_steps != n:
        raise ValueError(
            f"paper session {spec.session_id!r}: the backtest of the same policy ended after "
            f"{bt.n_steps} of {n} bars (terminated: {bt.terminated})"
        )
    e0 = float(bt.equity[0])
    paper = np.concatenate([[e0], record.equity])
    back = np.asarray(bt.equity, dtype=np.float64)
    gaps = action_gaps(record.policy_actions, np.asarray(bt.actions, dtype=np.float64))
    divergent = [int(b) for b, g in zip(record.bars, gaps, strict=True) if g > threshold]
    return TrackingResult(
        session_id=spec.session_id,
        bars=record.bars,
        ts_ns=np.concatenate([[int(market.ts[spec.start])], record.ts_ns]),
        paper_equity=paper,
        backtest_equity=back,
        pnl_gap=pnl_gap(paper, back),
        max_equity_gap=float(np.max(np.abs(paper / back - 1.0))),
        tracking_error=tracking_error(paper, back, market.bar_seconds),
        max_action_gap=float(np.nanmax(gaps)) if np.isfinite(gaps).any() else 0.0,
        divergent_bars=divergent,
        threshold=threshold,
    )


def pnl_gap(paper: np.ndarray, backtest: np.ndarray) -> float:
    """`(paper P&L - backtest P&L) / max(|backtest P&L|, 1e-4 * initial equity)`."""
    p, b = paper[-1] - paper[0], backtest[-1] - backtest[0]
    return float((p - b) / max(abs(b), 1e-4 * abs(backtest[0])))


def tracking_error(paper: np.ndarray, backtest: np.ndarray, bar_seconds: float) -> float:
    """Annualised (365 days) standard deviation of the per-bar return difference (0 for < 2
    returns)."""
    diff = np.diff(paper) / paper[:-1] - np.diff(backtest) / backtest[:-1]
    if diff.size < 2:
        return 0.0
    return float(np.std(diff, ddof=1) * math.sqrt(365.0 * 86_400.0 / bar_seconds))


def action_gaps(paper_actions: np.ndarray, backtest_actions: np.ndarray) -> np.ndarray:
    """Per bar, the largest per-asset `|paper - backtest|` action; NaN where the paper policy was
    not asked (a feed-fault bar)."""
    gap = np.abs(paper_actions - backtest_actions)
    out = np.full(gap.shape[0], np.nan)
    asked = np.isfinite(gap).all(axis=1)
    out[asked] = gap[asked].max(axis=1)
    return out


def divergence_alert(result: TrackingResult) -> tuple[int, str, str, dict[str, Any]] | None:
    """`(bar, kind, message, figures)` of the `policy_divergence` alert, at the first divergent
    bar, or None when no bar's action gap exceeds the threshold."""
    bar = result.first_divergent_bar
    if bar is None:
        return None
    n = len(result.divergent_bars)
    message = (
        f"live policy actions differ from the backtest of the same bars by more than "
        f"{result.threshold} on {n} of {result.bars.size} bars (max {result.max_action_gap:.3f}), "
        f"first at bar {bar}"
    )
    figures = {
        "threshold": result.threshold,
        "max_action_gap": result.max_action_gap,
        "divergent_bars": n,
        "bars": int(result.bars.size),
    }
    return bar, "policy_divergence", message, figures


def tracking_figure(result: TrackingResult, size: tuple[float, float] = (9.0, 5.5)) -> Figure:
    """Paper and backtest equity over the session (top) and the paper / backtest equity gap in
    percent with the ±15 % band of the P&L tolerance marked as a title figure (bottom)."""
    ts = result.ts_ns.astype("datetime64[ns]")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=size, sharex=True, height_ratios=(2, 1))
    top.plot(ts, result.paper_equity, label="paper", lw=1.4)
    top.plot(ts, result.backtest_equity, label="backtest (same bars)", lw=1.0, ls="--")
    top.set_ylabel("equity (USDT)")
    top.legend(loc="best")
    verdict = "within" if result.within_tolerance else "OUTSIDE"
    top.set_title(
        f"{result.session_id}: P&L gap {result.pnl_gap:+.1%} ({verdict} ±{PNL_TOLERANCE:.0%}), "
        f"tracking error {result.tracking_error:.2%}/yr"
    )
    bottom.plot(ts, (result.paper_equity / result.backtest_equity - 1.0) * 100.0, color="C3")
    bottom.axhline(0.0, color="grey", lw=0.6)
    bottom.set_ylabel("equity gap (%)")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def figure_png(fig: Figure, dpi: int) -> bytes:
    """The figure as PNG bytes (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    return buf.getvalue()
