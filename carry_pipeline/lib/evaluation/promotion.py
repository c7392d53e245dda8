"""Champion promotion: the validity check of the evidence and the promotion rule, as pure functions.

Two separate questions, so that a week without a promotion never reads as a failed run:

- `validity_failures` asks whether the out-of-sample evidence can be judged at all: every fold has a
  model, every metric of the candidate and the baseline on every fold is finite where it must be
  (a Sharpe may be NaN on a fold where the policy never traded: the `sharpe` condition then fails),
  the candidate's backtest covers the fold's test span (its first recorded bar is the span's first
  bar, its last is the span's last bar unless the env ended the episode by liquidation, bankruptcy
  or the drawdown limit, which the rule then judges), and no fold carries a look-ahead flag. It
  returns one `ValidityFailure` per problem (fold and cause); the blocking asset check fails on any.
- `decide` applies the rule to valid evidence: the candidate (the meta-controller of the latest
  window, judged by its walk-forward folds) becomes champion only if, across the folds,
  1. `sharpe`: its mean fold Sharpe is above always-long-carry's (strictly);
  2. `drawdown`: its worst fold max drawdown is at most `max_drawdown`;
  3. `liquidation`: it has no liquidation in any fold;
  4. `cost_ratio`: its pooled cost ratio, `sum(fees + slippage + borrow) / sum(funding)` over the
     folds (`metrics.cost_ratio`), is below `max_cost_ratio`.
  The `PromotionDecision` names each condition with pass/fail, the candidate's figure, the bound and
  a sentence; `promote` is True only when all pass.

Inputs are the `aggregate = "fold"` rows of `reports.backtest_metrics`
(`walk_forward.METRICS_SCHEMA`) and, for coverage, the candidate's `reports.equity_curves` rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import polars as pl

from carry_pipeline.lib.evaluation.metrics import cost_ratio
from carry_pipeline.lib.evaluation.walk_forward import FoldSpan


@dataclass(frozen=True)
class PromotionRule:
    """Bounds of the promotion rule.

    Attributes:
        candidate: policy name of the candidate in the metrics (the meta-controller).
        baseline: policy name it must beat on Sharpe (always-long-carry).
        max_drawdown: largest allowed max drawdown in any fold (a fraction).
        max_cost_ratio: pooled cost ratio must be below this.
    """

    candidate: str = "meta_controller"
    baseline: str = "long_carry"
    max_drawdown: float = 0.10
    max_cost_ratio: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.max_drawdown <= 1.0:
            raise ValueError(f"max_drawdown={self.max_drawdown} must be in (0, 1]")
        if not self.max_cost_ratio > 0.0:
            raise ValueError(f"max_cost_ratio={self.max_cost_ratio} must be > 0")
        if self.candidate == self.baseline:
            raise ValueError(f"candidate and baseline are both {self.candidate!r}")


@dataclass(frozen=True)
class Condition:
    """One condition of the rule: its name, whether it passed, the figure and the bound."""

    name: str
    passed: bool
    value: float
    bound: float
    detail: str


@dataclass(frozen=True)
class PromotionDecision:
    """The rule's verdict: promote only when every condition passed."""

    candidate: str
    baseline: str
    folds: tuple[int, ...]
    conditions: tuple[Condition, ...]

    @property
    def promote(self) -> bool:
        """True when every condition passed."""
        return all(c.passed for c in self.conditions)

    @property
    def failed(self) -> tuple[str, ...]:
        """Names of the conditions that failed."""
        return tuple(c.name for c in self.conditions if not c.passed)

    def to_frame(self) -> pl.DataFrame:
        """One row per condition (name, passed, value, bound, detail)."""
        return pl.DataFrame(
            [vars(c) for c in self.conditions],
            schema={"name": pl.String, "passed": pl.Boolean, "value": pl.Float64,
                    "bound": pl.Float64, "detail": pl.String},
        )  # fmt: skip

    def markdown(self) -> str:
        """The decision as a Markdown table for the report and the asset's metadata."""
        head = "promoted" if self.promote else f"not promoted (failed: {', '.join(self.failed)})"
        lines = [
            f"**{self.candidate}**: {head}; folds {list(self.folds)}",
            "",
            "| condition | pass | value | bound | detail |",
            "|---|---|---|---|---|",
        ]
        for c in self.conditions:
            mark = "yes" if c.passed else "**no**"
            lines.append(f"| {c.name} | {mark} | {c.value:.4g} | {c.bound:.4g} | {c.detail} |")
        return "\n".join(lines)


@dataclass(frozen=True)
class ValidityFailure:
    """One reason the evidence cannot be judged: the fold (None: all of them) and the cause."""

    fold: int | None
    cause: str

    def __str__(self) -> str:
        where = "all folds" if self.fold is None else f"fold {self.fold}"
        return f"{where}: {self.cause}"


REQUIRED_FINITE = ("sharpe", "max_drawdown", "total_return", "funding", "fees", "slippage",
                   "borrow", "liquidations")  # fmt: skip
"""Metrics the rule reads that must be finite in every fold row of the candidate and baseline
(`cost_ratio` may be inf or NaN by definition and is pooled instead)."""


def _fold_rows(metrics: pl.DataFrame, policy: str) -> pl.DataFrame:
    return metrics.filter((pl.col("aggregate") == "fold") & (pl.col("policy") == policy)).sort(
        "fold"
    )


def validity_failures(
    spans: Sequence[FoldSpan],
    models: Mapping[int, str | None],
    metrics: pl.DataFrame,
    candidate_curves: pl.DataFrame,
    *,
    bar: timedelta,
    rule: PromotionRule | None = None,
    lookahead: Mapping[int, bool] | None = None,
) -> list[ValidityFailure]:
    """Every reason the evidence of `spans` cannot be judged (module docstring); empty if valid.

    Args:
        spans: the walk-forward folds' test spans.
        models: per fold, the candidate model's path (None or missing: no model).
        metrics: `reports.backtest_metrics` rows.
        candidate_curves: the candidate's `reports.equity_curves` rows (`fold`, `ts` and flags).
        bar: the bar length of the market (a backtest's last bar is within one bar of the end).
        lookahead: per fold, True where a look-ahead was detected upstream.
    """
    rule = rule or PromotionRule()
    lookahead = lookahead or {}
    out: list[ValidityFailure] = []
    if not spans:
        return [ValidityFailure(None, "no walk-forward folds")]
    for span in spans:
        f = span.fold
        if not models.get(f):
            out.append(ValidityFailure(f, f"no trained model for {rule.candidate!r}"))
        if lookahead.get(f, False):
            out.append(ValidityFailure(f, "look-ahead flag set"))
        for policy in (rule.candidate, rule.baseline):
            out += _metric_failures(metrics, policy, f)
        out += _coverage_failures(candidate_curves, span, bar, rule.candidate)
    return out


def _metric_failures(metrics: pl.DataFrame, policy: str, fold: int) -> list[ValidityFailure]:
    rows = _fold_rows(metrics, policy).filter(pl.col("fold") == fold)
    if rows.height != 1:
        return [ValidityFailure(fold, f"{rows.height} metrics rows for {policy!r}, expected 1")]
    row = rows.row(0, named=True)
    bad = [c for c in REQUIRED_FINITE if row[c] is None or not math.isfinite(row[c])]
    if row.get("fills") == 0 and row["total_return"] == 0.0:
        # A book that never traded in the fold has returns of zero std and so no Sharpe: that is
        # evidence (the Sharpe condition fails on it), not a broken backtest.
        bad = [c for c in bad if c != "sharpe"]
    if bad:
        values = ", ".join(f"{c}={row[c]}" for c in bad)
        return [ValidityFailure(fold, f"non-finite metrics for {policy!r}: {values}")]
    return []


_ENDS_EPISODE = ("liquidated", "bankrupt", "drawdown_breach")


def _coverage_failures(
    curves: pl.DataFrame, span: FoldSpan, bar: timedelta, candidate: str
) -> list[ValidityFailure]:
    rows = curves.filter(pl.col("fold") == span.fold).sort("ts")
    if rows.height == 0:
        return [ValidityFailure(span.fold, f"no backtest of {candidate!r} on the test span")]
    first, last = rows.get_column("ts")[0], rows.get_column("ts")[-1]
    start, end = span.test_start, span.test_end
    out = []
    if not start <= first < start + bar:
        out.append(ValidityFailure(span.fold, f"{candidate!r} backtest starts at {first}, the "
                                              f"test span at {start}"))  # fmt: skip
    ended = bool(rows.select(pl.any_horizontal(_ENDS_EPISODE)).to_series()[-1])
    if last >= end or (not ended and last < end - bar):
        out.append(ValidityFailure(span.fold, f"{candidate!r} backtest ends at {last}, the test "
                                              f"span's last bar is before {end}"))  # fmt: skip
    return out


def decide(metrics: pl.DataFrame, rule: PromotionRule | None = None) -> PromotionDecision:
    """Apply the promotion rule to the fold rows of `metrics` (module docstring).

    Raises:
        ValueError: the candidate or baseline has no fold rows, or they cover different folds
            (run `validity_failures` first).
    """
    rule = rule or PromotionRule()
    cand, base = _fold_rows(metrics, rule.candidate), _fold_rows(metrics, rule.baseline)
    if cand.height == 0 or base.height == 0:
        missing = [p for p, r in ((rule.candidate, cand), (rule.baseline, base)) if r.height == 0]
        raise ValueError(f"decide: no fold rows for {missing}")
    folds = tuple(cand.get_column("fold").to_list())
    if folds != tuple(base.get_column("fold").to_list()):
        raise ValueError(
            f"decide: {rule.candidate!r} has folds {list(folds)}, {rule.baseline!r} has "
            f"{base.get_column('fold').to_list()}"
        )
    return PromotionDecision(
        rule.candidate,
        rule.baseline,
        folds,
        (
            _sharpe_condition(cand, base, rule),
            _drawdown_condition(cand, rule),
            _liquidation_condition(cand),
            _cost_condition(cand, rule),
        ),
    )


def _sharpe_condition(cand: pl.DataFrame, base: pl.DataFrame, rule: PromotionRule) -> Condition:
    c, b = float(cand["sharpe"].mean()), float(base["sharpe"].mean())  # type: ignore[arg-type]
    return Condition("sharpe", c > b, c, b,
                     f"mean fold Sharpe {c:.3f} vs {rule.baseline} {b:.3f}")  # fmt: skip


def _drawdown_condition(cand: pl.DataFrame, rule: PromotionRule) -> Condition:
    worst = int(cand["max_drawdown"].arg_max())  # type: ignore[arg-type]
    dd, fold = float(cand["max_drawdown"][worst]), int(cand["fold"][worst])
    return Condition("drawdown", dd <= rule.max_drawdown, dd, rule.max_drawdown,
                     f"worst fold max drawdown {dd:.2%} (fold {fold}), limit "
                     f"{rule.max_drawdown:.2%}")  # fmt: skip


def _liquidation_condition(cand: pl.DataFrame) -> Condition:
    n = float(cand["liquidations"].sum())
    folds = cand.filter(pl.col("liquidations") > 0).get_column("fold").to_list()
    detail = f"{n:.0f} liquidations" + (f" (folds {folds})" if folds else "")
    return Condition("liquidation", n == 0, n, 0.0, detail)


def _cost_condition(cand: pl.DataFrame, rule: PromotionRule) -> Condition:
    costs = float((cand["fees"] + cand["slippage"] + cand["borrow"]).sum())
    funding = float(cand["funding"].sum())
    ratio = cost_ratio(costs, funding)
    ok = math.isfinite(ratio) and ratio < rule.max_cost_ratio
    return Condition("cost_ratio", ok, ratio, rule.max_cost_ratio,
                     f"costs {costs:,.2f} / funding {funding:,.2f} over the folds")  # fmt: skip
