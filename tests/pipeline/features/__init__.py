"""Tests of the features and datasets stage (`carry_pipeline/lib/features`, `defs/features`,
`defs/datasets`)."""
