"""Dagster definitions, one sub-folder per pipeline stage (loaded by `dg.load_from_defs_folder`)."""
