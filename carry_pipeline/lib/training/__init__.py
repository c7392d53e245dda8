"""Dagster-free training core: observations (windows + account state), feature extractors, expert
specs, train/save/load and the registry row. The `models` assets call these functions."""
