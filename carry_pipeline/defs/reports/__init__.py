"""The reports stage: walk-forward backtests, stress tests, the report and champion promotion."""
