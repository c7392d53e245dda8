"""Paper trading, Dagster-free: book-walking fills, the risk manager, the DuckDB ledger and the
session loop that ties them to `CarryTradeEnv.step`."""
