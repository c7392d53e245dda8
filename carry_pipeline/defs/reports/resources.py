"""The `report_settings` resource: seed, report folder and the promotion rule's bounds shared by
the `reports` assets. Change them in the run config under `resources.report_settings.config`."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from carry_pipeline.lib.evaluation.promotion import PromotionRule

REPO_ROOT = Path(__file__).resolve().parents[3]


class ReportSettings(dg.ConfigurableResource):
    """Settings of `walk_forward_backtest`, `stress_test_report`, `backtest_report` and
    `champion_model`."""

    seed: int = Field(
        default=0, description="Seed of every backtest (all policies meet the same anomalies)."
    )
    reports_root: str = Field(
        default=str(REPO_ROOT / "data" / "reports"),
        description="Reports land in <reports_root>/<run_id>/.",
    )
    baseline: str = Field(
        default="long_carry", description="Policy the candidate must beat on mean fold Sharpe."
    )
    max_drawdown: float = Field(
        default=0.10, description="Largest max drawdown allowed in any fold (a fraction)."
    )
    max_cost_ratio: float = Field(
        default=0.5, description="Pooled (fees + slippage + borrow) / funding must be below this."
    )
    stress_at: float = Field(
        default=0.25,
        description="Where the injected shocks start, as a fraction of the stress base frame's "
        "bars (the last fold's test span).",
    )
    real_crises: bool = Field(
        default=True, description="Also run the rebuilt real crises (2020-03, 2021-05, 2022-11)."
    )

    def rule(self) -> PromotionRule:
        """The promotion rule (candidate `meta_controller`)."""
        return PromotionRule(
            baseline=self.baseline,
            max_drawdown=self.max_drawdown,
            max_cost_ratio=self.max_cost_ratio,
        )


@dg.definitions
def resources() -> dg.Definitions:
    """The `report_settings` resource at its defaults."""
    return dg.Definitions(resources={"report_settings": ReportSettings()})
