"""Dagster-free feature and dataset functions: aligned bars, carry features, sentiment windows,
walk-forward folds, normalisation statistics, training windows and the point-in-time check.

The assets in `carry_pipeline/defs/features/` and `carry_pipeline/defs/datasets/` are thin wrappers
over these functions; tests call them directly.
"""
