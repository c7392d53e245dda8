"""Market-data sources behind one interface (`ExchangeClient`): simulated, ccxt and file replay."""

from carry_pipeline.lib.exchanges.base import (
    BookSummary,
    ExchangeClient,
    Market,
    Pair,
    PermanentExchangeError,
    TransientExchangeError,
    reduce_order_book,
)
from carry_pipeline.lib.exchanges.ccxt_exchange import CcxtExchange
from carry_pipeline.lib.exchanges.replay import ReplayExchange
from carry_pipeline.lib.exchanges.simulated import SimulatedExchange

__all__ = [
    "BookSummary",
    "CcxtExchange",
    "ExchangeClient",
    "Market",
    "Pair",
    "PermanentExchangeError",
    "ReplayExchange",
    "SimulatedExchange",
    "TransientExchangeError",
    "reduce_order_book",
]
