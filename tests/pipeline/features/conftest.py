"""Fixtures of the feature and dataset tests: seeded raw tables in the raw schemas."""

from __future__ import annotations

import polars as pl
import pytest

from tests.pipeline.features.raw_frames import make_raw


@pytest.fixture(scope="session")
def raw() -> dict[str, pl.DataFrame]:
    """60 days of 15-minute raw data for BTC and ETH, with an order book every 30 minutes."""
    return make_raw()


@pytest.fixture(scope="session")
def raw_long() -> dict[str, pl.DataFrame]:
    """90 days of 15-minute raw data for BTC and ETH: enough for the warm-up and three short
    folds."""
    return make_raw(days=90, seed=11)


@pytest.fixture(scope="session")
def short_config():  # noqa: ANN201 (a FeaturePipelineConfig)
    """The default features with folds short enough for 90 days of data: 3 folds of 7 days."""
    from carry_pipeline.lib.features.folds import WalkForwardConfig
    from carry_pipeline.lib.features.pipeline import FeaturePipelineConfig
    from carry_pipeline.lib.features.windows import TrainingWindowsConfig

    return FeaturePipelineConfig(
        folds=WalkForwardConfig(n_folds=3, train_span="10d", test_span="7d", embargo="1d"),
        windows=TrainingWindowsConfig(lookback=16),
    )


@pytest.fixture(scope="session")
def pipeline_out(raw_long, short_config) -> dict[str, object]:  # noqa: ANN001
    """The whole chain run once on `raw_long`."""
    from carry_pipeline.lib.features.pipeline import run_feature_pipeline

    return run_feature_pipeline(raw_long, short_config)
