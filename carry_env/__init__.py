"""carry_env: a gymnasium environment for the spot-perpetual funding-rate carry trade.

`gymnasium.make("carry_env/CarryTrade-v1", market=frame_or_market_data, config=EnvConfig(...))` for
the continuous env, `carry_env/CarryTradeDiscrete-v1` for the discrete one with action masks.
"""

from gymnasium.envs.registration import register

from carry_env.config import EnvConfig
from carry_env.discrete import CarryTradeDiscreteEnv, CarryTradeDiscreteVectorEnv
from carry_env.env import CarryTradeEnv
from carry_env.feeds import Executor, Fills, HistoricalFeed, MarketFeed, Orders, SimExecutor
from carry_env.market import MarketData

__all__ = [
    "CarryTradeDiscreteEnv",
    "CarryTradeDiscreteVectorEnv",
    "CarryTradeEnv",
    "EnvConfig",
    "Executor",
    "Fills",
    "HistoricalFeed",
    "MarketData",
    "MarketFeed",
    "Orders",
    "SimExecutor",
]

register(
    id="carry_env/CarryTradeDiscrete-v1", entry_point="carry_env.discrete:CarryTradeDiscreteEnv"
)
register(
    id="carry_env/CarryTrade-v1",
    entry_point="carry_env.env:CarryTradeEnv",
    vector_entry_point="carry_env.vector:CarryTradeVectorEnv",
)
