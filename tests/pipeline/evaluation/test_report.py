"""The report: chained curves and monthly returns by hand, and a report rendered end to end from a
tiny walk-forward run: valid PNGs of the asked size, each referenced by the Markdown, and metadata
Markdown within its size bound."""

from __future__ import annotations

import base64
import re
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from carry_env import CarryTradeEnv, EnvConfig
from carry_pipeline.lib.evaluation.baselines import Flat, FundingSignRule, LongCarry
from carry_pipeline.lib.evaluation.report import (
    chained_equity,
    metadata_markdown,
    monthly_returns,
    render_report,
)
from carry_pipeline.lib.evaluation.walk_forward import FoldSpan, walk_forward

from .conftest import random_frame

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _png_size(data: bytes) -> tuple[int, int]:
    # The first chunk of a PNG is IHDR: length (4), type (4), then width and height (big-endian).
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _curve(fold: int, policy: str, equity: list[float], start: datetime) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "fold": [fold] * len(equity),
            "policy": [policy] * len(equity),
            "step": list(range(len(equity))),
            "ts": [start + timedelta(days=d) for d in range(len(equity))],
            "equity": equity,
        }
    )


def test_chained_equity_compounds_fold_returns_in_fold_order() -> None:
    # Fold 0: 100 -> 110 (+10 %); fold 1 restarts at 100 and ends at 90 (-10 %): the chained
    # curve is 1, 1.1, then 1.1 (fold 1's start), 1.1 * 0.9 = 0.99.
    curves = pl.concat([_curve(1, "p", [100.0, 90.0], T0 + timedelta(days=2)),
                        _curve(0, "p", [100.0, 110.0], T0)])  # fmt: skip
    out = chained_equity(curves)
    np.testing.assert_allclose(out["equity"].to_numpy(), [1.0, 1.1, 1.1, 0.99])


def test_monthly_returns_use_each_month_end_over_the_previous() -> None:
    # 1.0 on 30 Jan, 1.2 on 31 Jan, 0.9 on 1 Feb, 1.08 on 2 Feb: Jan +20 %, Feb 1.08 / 1.2 - 1
    # = -10 %.
    curves = _curve(0, "p", [100.0, 120.0, 90.0, 108.0], datetime(2024, 1, 30, tzinfo=UTC))
    m = monthly_returns(chained_equity(curves), "p")
    assert m.select("year", "month").rows() == [(2024, 1), (2024, 2)]
    np.testing.assert_allclose(m["ret"].to_numpy(), [0.2, -0.1])


@pytest.fixture(scope="module")
def tiny_evaluation():  # noqa: ANN201
    # Two 2-day folds of 15-minute bars, three rule policies, every mechanism on.
    env = CarryTradeEnv(random_frame(3, n_bars=400), EnvConfig())
    spans = [FoldSpan(0, T0, T0 + timedelta(hours=48)),
             FoldSpan(1, T0 + timedelta(hours=48), T0 + timedelta(hours=96))]  # fmt: skip
    pols = {"flat": Flat(), "long_carry": LongCarry(), "funding_rule": FundingSignRule()}
    return walk_forward(env, spans, {0: pols, 1: pols}, seed=7)


def test_report_renders_valid_pngs_of_the_asked_size_all_referenced(
    tiny_evaluation,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    ev = tiny_evaluation
    ts = ev.equity_curves.filter(pl.col("policy") == "funding_rule")["ts"]
    weights = pl.DataFrame({"ts": ts, "anomaly": np.full(ts.len(), 0.2),
                            "short_term": np.linspace(0.1, 0.5, ts.len())}).with_columns(
        long_term=1.0 - pl.col("anomaly") - pl.col("short_term"))  # fmt: skip
    report = render_report(tmp_path / "run1", ev.equity_curves, ev.metrics,
                           candidate="funding_rule", positions=ev.positions,
                           expert_weights=weights, decision_markdown="**kept the champion**",
                           size=(4.0, 2.5), dpi=50)  # fmt: skip
    expected = {"equity", "drawdown", "monthly_returns", "positions", "costs", "expert_weights"}
    assert set(report.images) == expected
    md = report.markdown.read_text()
    for name, path in report.images.items():
        assert _png_size(path.read_bytes()) == (200, 125)  # 4 x 2.5 inches at 50 dpi
        assert f"![{name}]({name}.png)" in md
    linked = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md))
    assert linked == {p.name for p in report.images.values()}  # nothing referenced is missing
    assert "**kept the champion**" in md
    assert "| funding_rule |" in md and "| long_carry |" in md


def test_metadata_markdown_embeds_small_pngs(tiny_evaluation, tmp_path: Path) -> None:  # noqa: ANN001
    ev = tiny_evaluation
    report = render_report(tmp_path, ev.equity_curves, ev.metrics, candidate="funding_rule",
                           size=(8.0, 4.0), thumb_dpi=40)  # fmt: skip
    md = metadata_markdown(report)
    uris = re.findall(r"!\[(\w+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert [n for n, _ in uris] == list(report.images)
    for _, b64 in uris:
        png = base64.b64decode(b64)
        assert _png_size(png) == (320, 160)  # 8 x 4 inches at 40 dpi
        assert len(png) < 40_000  # a few tens of KB each
    assert len(md) < 5 * 40_000 * 4 / 3 + 500
    only = metadata_markdown(report, ["equity"])
    assert only.count("data:image/png") == 1


def test_report_refuses_a_candidate_without_a_curve(tiny_evaluation, tmp_path: Path) -> None:  # noqa: ANN001
    ev = tiny_evaluation
    with pytest.raises(ValueError, match="no equity curve for the candidate 'meta_controller'"):
        render_report(tmp_path, ev.equity_curves, ev.metrics, candidate="meta_controller")
    bad = pl.DataFrame({"ts": [T0]})
    with pytest.raises(ValueError, match="expert_weights: no expert columns"):
        render_report(tmp_path, ev.equity_curves, ev.metrics, candidate="flat", expert_weights=bad)


def test_costs_figure_needs_the_cost_columns(tiny_evaluation, tmp_path: Path) -> None:  # noqa: ANN001
    ev = tiny_evaluation
    with pytest.raises(ValueError, match=r"metrics: missing columns \['borrow'\]"):
        render_report(tmp_path, ev.equity_curves, ev.metrics.drop("borrow"), candidate="flat")
