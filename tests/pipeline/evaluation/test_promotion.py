"""The promotion rule: each condition flips the decision on its own, with its figures; the validity
check names the fold and the cause of every failure."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest

from carry_pipeline.lib.evaluation.metrics import METRIC_COLUMNS
from carry_pipeline.lib.evaluation.promotion import PromotionRule, decide, validity_failures
from carry_pipeline.lib.evaluation.walk_forward import METRICS_SCHEMA, FoldSpan

RULE = PromotionRule(max_drawdown=0.10, max_cost_ratio=0.5)
H = timedelta(hours=1)
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _row(fold: int, policy: str, **values: float) -> dict[str, Any]:
    row: dict[str, Any] = {c: 0.0 for c in METRIC_COLUMNS}
    row.update(fold=fold, aggregate="fold", policy=policy)
    row.update(values)
    return row


def _good(fold: int) -> dict[str, Any]:
    # Sharpe 2, drawdown 5 %, no liquidation, costs 30 of funding 100 per fold.
    return _row(fold, "meta_controller", sharpe=2.0, max_drawdown=0.05, fees=20.0,
                slippage=8.0, borrow=2.0, funding=100.0, total_return=0.01)  # fmt: skip


def _metrics(cand: list[dict[str, Any]], base_sharpe: float = 1.0) -> pl.DataFrame:
    base = [_row(r["fold"], "long_carry", sharpe=base_sharpe, max_drawdown=0.02, funding=90.0,
                 fees=5.0) for r in cand]  # fmt: skip
    return pl.DataFrame(cand + base, schema=METRICS_SCHEMA)


def test_good_evidence_promotes_with_every_condition_and_its_figures() -> None:
    d = decide(_metrics([_good(0), _good(1)]), RULE)
    assert d.promote and d.failed == ()
    by = {c.name: c for c in d.conditions}
    assert list(by) == ["sharpe", "drawdown", "liquidation", "cost_ratio"]
    assert (by["sharpe"].value, by["sharpe"].bound) == (2.0, 1.0)
    assert by["drawdown"].value == 0.05
    assert by["cost_ratio"].value == pytest.approx(60.0 / 200.0)  # pooled over the two folds
    assert "promoted" in d.markdown() and "| sharpe | yes |" in d.markdown()


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        # Mean Sharpe (2 + 0) / 2 = 1.0 equals long carry's 1.0: must beat it strictly.
        ({"sharpe": 0.0}, "sharpe"),
        # One fold at 12 % > 10 % limit.
        ({"max_drawdown": 0.12}, "drawdown"),
        # A single liquidation anywhere.
        ({"liquidations": 1.0}, "liquidation"),
        # Fold 1 costs 80 on funding 100: pooled (30 + 80) / 200 = 0.55 >= 0.5.
        ({"fees": 70.0}, "cost_ratio"),
        # Negative carry in fold 1: pooled funding 100 - 120 < 0 with costs: inf.
        ({"funding": -120.0}, "cost_ratio"),
    ],
)
def test_each_condition_alone_blocks_the_promotion(change: dict[str, float], failed: str) -> None:
    bad = _good(1)
    bad.update(change)
    d = decide(_metrics([_good(0), bad]), RULE)
    assert not d.promote
    assert d.failed == (failed,)
    assert f"failed: {failed}" in d.markdown()


def test_drawdown_at_the_limit_passes_and_cost_ratio_at_the_bound_fails() -> None:
    at_limit = _good(1)
    at_limit.update(max_drawdown=0.10, fees=50.0)  # costs (30 + 60) / 200 = 0.45
    assert decide(_metrics([_good(0), at_limit]), RULE).promote
    at_bound = _good(1)
    at_bound.update(fees=60.0)  # (30 + 70) / 200 = 0.5: "under" the bound means strictly
    assert decide(_metrics([_good(0), at_bound]), RULE).failed == ("cost_ratio",)


def test_drawdown_condition_names_the_worst_fold() -> None:
    bad = _good(1)
    bad["max_drawdown"] = 0.2
    c = decide(_metrics([_good(0), bad]), RULE).conditions[1]
    assert c.value == 0.2 and "fold 1" in c.detail


def test_decide_refuses_missing_policies_and_mismatched_folds() -> None:
    with pytest.raises(ValueError, match=r"no fold rows for \['meta_controller'\]"):
        decide(_metrics([_good(0)]).filter(pl.col("policy") == "long_carry"), RULE)
    m = pl.concat([_metrics([_good(0)]), pl.DataFrame([_good(1)], schema=METRICS_SCHEMA)])
    with pytest.raises(ValueError, match=r"has folds \[0, 1\], 'long_carry' has \[0\]"):
        decide(m, RULE)


# ---- validity ----

SPANS = [FoldSpan(0, T0, T0 + 10 * H), FoldSpan(1, T0 + 10 * H, T0 + 20 * H)]
MODELS = {0: "models/meta/0", 1: "models/meta/1"}


def _curves(
    spans: list[FoldSpan], cut: dict[int, int] | None = None, flag: str = ""
) -> pl.DataFrame:
    # Equity-curve rows of the candidate: every bar of each span, fold f truncated to cut[f] bars
    # (the last of them flagged `flag`, as when the env ended the episode there).
    rows = []
    for s in spans:
        n = (cut or {}).get(s.fold, 10)
        for j in range(n):
            end = flag != "" and j == n - 1
            rows.append(
                {
                    "fold": s.fold,
                    "ts": s.test_start + j * H,
                    "liquidated": end and flag == "liquidated",
                    "bankrupt": False,
                    "drawdown_breach": False,
                }
            )
    return pl.DataFrame(rows)


def _check(**kw: Any) -> list[str]:
    args: dict[str, Any] = {
        "spans": SPANS,
        "models": MODELS,
        "metrics": _metrics([_good(0), _good(1)]),
        "candidate_curves": _curves(SPANS),
    }
    args.update(kw)
    return [str(f) for f in validity_failures(bar=H, rule=RULE, **args)]


def test_valid_evidence_has_no_failures() -> None:
    assert _check() == []


def test_a_fold_without_a_model_is_named() -> None:
    assert _check(models={0: "models/meta/0", 1: None}) == [
        "fold 1: no trained model for 'meta_controller'"
    ]
    assert _check(models={0: "models/meta/0"}) == ["fold 1: no trained model for 'meta_controller'"]


def test_non_finite_and_missing_metrics_are_named_with_their_values() -> None:
    nan = _good(1)
    nan["sharpe"] = math.nan
    assert _check(metrics=_metrics([_good(0), nan])) == [
        "fold 1: non-finite metrics for 'meta_controller': sharpe=nan"
    ]
    only_cand = _metrics([_good(0), _good(1)]).filter(
        ~((pl.col("policy") == "long_carry") & (pl.col("fold") == 0))
    )
    assert _check(metrics=only_cand) == ["fold 0: 0 metrics rows for 'long_carry', expected 1"]


def test_a_candidate_flat_over_a_fold_is_judged_not_invalid() -> None:
    # No fill and no return on fold 1: its Sharpe is NaN (zero std). The evidence is valid and the
    # rule refuses the promotion on Sharpe; a NaN Sharpe on a fold with trades stays invalid.
    flat = _row(1, "meta_controller", sharpe=math.nan, fills=0.0, total_return=0.0)
    metrics = _metrics([_good(0), flat])
    assert _check(metrics=metrics) == []
    decision = decide(metrics, RULE)
    assert not decision.promote and "sharpe" in decision.failed
    traded = {**flat, "fills": 2.0}
    assert _check(metrics=_metrics([_good(0), traded])) == [
        "fold 1: non-finite metrics for 'meta_controller': sharpe=nan"
    ]


def test_a_backtest_that_does_not_cover_its_test_span_is_named() -> None:
    # Fold 1's curve stops after 6 of its 10 bars with no episode end: not covered.
    failures = _check(candidate_curves=_curves(SPANS, cut={1: 6}))
    assert len(failures) == 1 and failures[0].startswith("fold 1: 'meta_controller' backtest ends")
    # The same truncation ended by a liquidation is evidence for the rule, not a validity failure.
    assert _check(candidate_curves=_curves(SPANS, cut={1: 6}, flag="liquidated")) == []
    # A curve that starts late, and a fold with no curve at all.
    late = _curves(SPANS).filter(~((pl.col("fold") == 0) & (pl.col("ts") == T0)))
    assert _check(candidate_curves=late)[0].startswith("fold 0: 'meta_controller' backtest starts")
    assert _check(candidate_curves=_curves(SPANS[:1])) == [
        "fold 1: no backtest of 'meta_controller' on the test span"
    ]


def test_look_ahead_flags_and_no_folds_are_failures() -> None:
    assert _check(lookahead={0: False, 1: True}) == ["fold 1: look-ahead flag set"]
    assert _check(spans=[]) == ["all folds: no walk-forward folds"]


def test_rule_bounds_are_validated() -> None:
    with pytest.raises(ValueError, match="max_drawdown=0 must be in"):
        PromotionRule(max_drawdown=0)
    with pytest.raises(ValueError, match="candidate and baseline are both"):
        PromotionRule(candidate="x", baseline="x")
