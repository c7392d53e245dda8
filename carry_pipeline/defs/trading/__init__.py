"""Trading stage: `paper_trading_job` and `champion_model_sensor` (DuckDB schema `paper`)."""
