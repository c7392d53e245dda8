"""`lib/trading/tracking.py`: a paper session against the backtest of the same bars, the divergence
alert, the figure."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from carry_env.config import EnvConfig
from carry_pipeline.lib.trading.books import ModelBookSource
from carry_pipeline.lib.trading.ledger import Ledger
from carry_pipeline.lib.trading.session import ReplayFeed, SessionSpec, run_paper_session
from carry_pipeline.lib.trading.tracking import (
    action_gaps,
    divergence_alert,
    figure_png,
    pnl_gap,
    read_session,
    track_session,
    tracking_error,
    tracking_figure,
)
from tests.pipeline.trading.session_setup import (
    ENV_CONFIG,
    WIDE_RISK,
    FundingPolicy,
    make_market,
    observation_names,
    run_session,
)


@pytest.mark.parametrize(
    ("paper", "backtest", "expected"),
    [
        ([100.0, 110.0], [100.0, 110.0], 0.0),  # same P&L
        ([100.0, 109.0], [100.0, 110.0], -0.1),  # paper earned 9 of the backtest's 10
        ([100.0, 112.0], [100.0, 110.0], 0.2),  # 12 against 10
        ([100.0, 100.02], [100.0, 100.0], 2.0),  # flat backtest: the floor is 1e-4 * 100 = 0.01
    ],
)
def test_pnl_gap(paper: list[float], backtest: list[float], expected: float) -> None:
    assert pnl_gap(np.array(paper), np.array(backtest)) == pytest.approx(expected)


def test_action_gaps_skip_bars_the_policy_was_not_asked() -> None:
    paper = np.array([[0.5, 0.0], [math.nan, math.nan], [1.0, -1.0]])
    back = np.array([[0.5, 0.1], [0.3, 0.3], [0.2, -1.0]])
    np.testing.assert_allclose(action_gaps(paper, back), [0.1, math.nan, 0.8])


def test_tracking_error_of_equal_curves_is_zero_and_of_a_wobble_is_not() -> None:
    curve = np.array([100.0, 101.0, 100.5, 102.0])
    assert tracking_error(curve, curve, 3600.0) == 0.0
    wobble = curve * np.array([1.0, 1.001, 0.999, 1.0])
    assert tracking_error(wobble, curve, 3600.0) > 0.0


def _spec(session_id: str, cfg: EnvConfig = ENV_CONFIG, fee_basis: Any = "fill") -> SessionSpec:
    return SessionSpec(session_id, cfg, WIDE_RISK, seed=7, start=0, fee_basis=fee_basis)


def test_paper_configured_like_the_sim_executor_tracks_the_backtest_exactly(
    tmp_path: Path,
) -> None:
    # The parity set-up of test_session (one book level at the half-spread, no impact, fee on
    # mid): the P&L gap and every equity gap are float noise, and no action diverges.
    cfg = EnvConfig(slippage_k=0.0)
    market = make_market()
    policy = FundingPolicy(observation_names(market))
    ledger = Ledger(tmp_path / "p.duckdb")
    try:
        run_paper_session(spec=_spec("parity", cfg, "mid"), feed=ReplayFeed(market),
                          policy=policy, books=ModelBookSource(cfg), ledger=ledger,
                          max_bars=48)  # fmt: skip
        result = track_session(market, _spec("parity", cfg, "mid"),
                               read_session(ledger, "parity"), policy)  # fmt: skip
    finally:
        ledger.close()
    assert result.bars.size == 48 and result.paper_equity.size == 49
    assert abs(result.pnl_gap) < 1e-8 and result.max_equity_gap < 1e-10
    assert result.divergent_bars == [] and divergence_alert(result) is None


def test_book_walking_paper_session_is_within_15_percent_and_plots(tmp_path: Path) -> None:
    # The default book-walking executor (50 levels, impact on): not equal, but within the issue's
    # tolerance, and the figure renders.
    market = make_market()
    run_session(tmp_path / "p.duckdb", max_bars=60, session_id="walk")
    ledger = Ledger(tmp_path / "p.duckdb")
    try:
        result = track_session(market, _spec("walk"), read_session(ledger, "walk"),
                               FundingPolicy(observation_names(market)))  # fmt: skip
    finally:
        ledger.close()
    assert 0.0 < abs(result.pnl_gap) <= 0.15 and result.within_tolerance
    assert result.backtest_equity[-1] != result.paper_equity[-1]
    png = figure_png(tracking_figure(result), dpi=60)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000


class ReverseOf(FundingPolicy):
    """The funding rule's opposite: what a live policy that changed under the session looks like
    to the backtest."""

    def predict(self, observation: np.ndarray, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        a, state = super().predict(observation)
        return -a, state


def test_diverging_actions_raise_one_alert_in_the_ledger(tmp_path: Path) -> None:
    market = make_market()
    run_session(tmp_path / "p.duckdb", max_bars=24, session_id="div")
    ledger = Ledger(tmp_path / "p.duckdb")
    try:
        record = read_session(ledger, "div")
        same = track_session(market, _spec("div"), record,
                             FundingPolicy(observation_names(market)))  # fmt: skip
        assert divergence_alert(same) is None
        other = track_session(market, _spec("div"), record,
                              ReverseOf(observation_names(market)))  # fmt: skip
        alert = divergence_alert(other)
        assert alert is not None and other.first_divergent_bar == 0
        assert other.max_action_gap == pytest.approx(1.6)  # 0.8 against -0.8
        assert ledger.add_alert("div", *alert) is True
        assert ledger.add_alert("div", *alert) is False  # never doubled
        rows = ledger.read(
            "select bar, kind, message from paper.alerts where session_id = 'div' "
            "and kind = 'policy_divergence'"
        )
    finally:
        ledger.close()
    assert len(rows) == 1 and rows[0][0] == 0 and "differ from the backtest" in rows[0][2]
