"""Dagster-free evaluation: the backtest runner, rule baselines, metrics and walk-forward folds.

`backtest.run_backtest` runs any policy with stable-baselines3's `predict` through `CarryTradeEnv`
and records every step; `metrics.summarise` turns a run into one metrics row (definitions in the
`metrics` module docstring); `walk_forward.backtest_fold` / `walk_forward.walk_forward` run named
policies on each fold's test span only and aggregate across folds; `stress` builds and runs stress
scenarios (injected and real crises); `report` renders the plots and the Markdown report;
`promotion` holds the validity check and the champion promotion rule. The `reports` assets are
thin wrappers over these functions.
"""
