"""Datasets stage: walk-forward folds, normalisation statistics and training windows (schema
`datasets`)."""
