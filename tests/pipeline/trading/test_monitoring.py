"""`SessionMetrics` scraped after a short session, and the drawdown alert in `paper.alerts`."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from prometheus_client.parser import text_string_to_metric_families

from carry_pipeline.lib.trading.monitoring import SessionMetrics
from carry_pipeline.lib.trading.risk import RiskConfig
from tests.pipeline.trading.session_setup import ENV_CONFIG, WIDE_RISK, make_market, run_session


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_scrape_after_a_session_matches_the_ledger(tmp_path: Path) -> None:
    # A drawdown threshold tiny enough to be crossed: the alert lands in paper.alerts and in the
    # counter; the gauges equal the ledger's last equity and position rows.
    alerts: list[tuple[str, str]] = []
    metrics = SessionMetrics(
        "s1", ENV_CONFIG.initial_cash, on_alert=lambda k, m: alerts.append((k, m))
    )
    risk = RiskConfig(**{**vars(WIDE_RISK), "drawdown_alert": 1e-4})
    db = tmp_path / "p.duckdb"
    run_session(db, max_bars=20, risk=risk, on_bar=metrics.observe)
    got = samples(metrics.text())
    con = duckdb.connect(str(db), read_only=True)
    equity, dd = con.execute("select equity, drawdown from paper.equity where bar = 19").fetchone()
    funding = con.execute("select sum(funding_pnl) from paper.equity").fetchone()[0]
    (first_dd_alert,) = con.execute(
        "select min(bar) from paper.alerts where kind = 'drawdown'"
    ).fetchone()
    spot_qty = con.execute(
        "select spot_qty from paper.positions where bar = 19 and symbol = 'BTC/USDT:USDT'"
    ).fetchone()[0]
    con.close()
    s = (("session", "s1"),)
    assert got[("carry_paper_equity_usd", s)] == pytest.approx(equity)
    assert got[("carry_paper_pnl_usd", s)] == pytest.approx(equity - ENV_CONFIG.initial_cash)
    assert got[("carry_paper_funding_captured_usd", s)] == pytest.approx(funding)
    assert got[("carry_paper_drawdown_ratio", s)] == pytest.approx(dd)
    assert got[("carry_paper_bars_total", s)] == 20
    assert got[("carry_paper_risk_state", (("session", "s1"), ("state", "NORMAL")))] == 1.0
    assert got[("carry_paper_risk_state", (("session", "s1"), ("state", "HALTED")))] == 0.0
    assert got[("carry_paper_last_bar_latency_seconds", s)] > 0.0
    btc = make_market().spot[20, 0]
    key = (("leg", "spot"), ("session", "s1"), ("symbol", "BTC/USDT:USDT"))
    assert got[("carry_paper_exposure_usd", key)] == pytest.approx(spot_qty * btc)
    assert spot_qty != 0.0
    assert first_dd_alert is not None
    assert got[("carry_paper_alerts_total", (("kind", "drawdown"), ("session", "s1")))] >= 1
    assert any(k == "drawdown" for k, _ in alerts)


def test_each_session_has_its_own_registry() -> None:
    a, b = SessionMetrics("a", 1.0), SessionMetrics("b", 1.0)  # same names, no collision
    assert "carry_paper_equity_usd" in a.text() and a.registry is not b.registry
