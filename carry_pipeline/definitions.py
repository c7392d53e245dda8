"""The Dagster code location: every stage's definitions, loaded from `carry_pipeline/defs/`.

Each stage is one sub-folder of `defs/` (`ingestion/`, `features/`, `datasets/`, ...) whose modules
define assets, checks, jobs, schedules, sensors and `@dg.definitions` resources; adding a stage
means adding a folder, never editing this file. Shared resources (`io_manager`, `duckdb`) live in
`defs/resources.py`.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
