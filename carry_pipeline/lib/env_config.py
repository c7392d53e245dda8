"""The env config every pipeline stage starts from: training, the walk-forward and stress backtests
and paper trading.

`carry_env`'s own defaults (`EnvConfig()`) keep `CarryTrade-v1` as it was registered; the pipeline
runs the env as a carry desk runs its book, so it differs from them where a desk's venue settings
differ. Each stage applies its own changes on top (an expert's reward overrides, random starts,
the stress test's scheduled anomalies).
"""

from __future__ import annotations

from carry_env.config import EnvConfig

PIPELINE_ENV_CONFIG = EnvConfig(isolated_auto_add_margin=True)
"""`EnvConfig()` with isolated auto-add margin on: a hedged pair's perp collateral is topped up from
free cash before a move that its spot leg gains on liquidates it (without it the meta-controller's
hedged BTC pair in `make run` lost its perp, collateral drained from 404 to 71 USDT, while the
account as a whole was sound)."""
