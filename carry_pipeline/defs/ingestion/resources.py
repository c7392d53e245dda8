"""The `exchange` resource: which market-data source the raw assets read, and how.

`kind` picks the implementation (`simulated`, the offline default; `ccxt`; `replay`). Credentials
are never plain config: the definitions bind `api_key`/`api_secret`/`api_password` to `dg.EnvVar`s
(`CARRY_API_KEY`, `CARRY_API_SECRET`, `CARRY_API_PASSWORD`) when those are set, and public market
data needs none.
"""

from __future__ import annotations

import os
from typing import Literal

import dagster as dg
from pydantic import Field

from carry_pipeline.lib.exchanges import (
    CcxtExchange,
    ExchangeClient,
    PermanentExchangeError,
    ReplayExchange,
    SimulatedExchange,
)
from carry_pipeline.lib.exchanges.base import timeframe_delta


class ExchangeResource(dg.ConfigurableResource):
    """Market-data source of the ingestion stage."""

    kind: Literal["simulated", "ccxt", "replay"] = Field(
        default="simulated",
        description="simulated: seeded synthetic market (offline); ccxt: a real exchange; "
        "replay: files in replay_path.",
    )
    timeframe: str = Field(
        default="15m", description="OHLCV bar size (ccxt timeframe: 1m, 5m, 15m, 1h, ...)."
    )
    quote: str = Field(default="USDT", description="Quote and settlement currency of every pair.")
    max_abs_funding_rate: float = Field(
        default=0.03,
        description="Plausible bound of |funding rate| per interval; beyond it the blocking check "
        "funding_rate_within_bounds fails.",
    )
    seed: int = Field(default=0, description="simulated: the simulation seed.")
    funding_interval_hours: float = Field(
        default=8.0, description="simulated: hours between funding settlements (divides 24)."
    )
    order_book_interval: str = Field(
        default="1h", description="simulated: time between synthetic order-book snapshots."
    )
    spot_exchange: str = Field(
        default="binance", description="ccxt: exchange id for spot (binance, bybit, okx)."
    )
    perp_exchange: str = Field(
        default="binanceusdm",
        description="ccxt: exchange id for linear perps (binanceusdm, bybit, okx).",
    )
    api_url: str | None = Field(
        default=None,
        description="ccxt: replaces scheme://host of every REST endpoint (proxy, testnet, stub).",
    )
    api_key: str | None = Field(default=None, description="ccxt: API key (bind via dg.EnvVar).")
    api_secret: str | None = Field(default=None, description="ccxt: API secret (dg.EnvVar).")
    api_password: str | None = Field(default=None, description="ccxt: passphrase (dg.EnvVar).")
    timeout_ms: int = Field(default=10_000, description="ccxt: per-request timeout.")
    max_retries: int = Field(
        default=5, description="ccxt: retries per request on network errors (bounded)."
    )
    backoff_s: float = Field(
        default=1.0, description="ccxt: first retry delay in seconds; doubles per retry."
    )
    page_limit: int = Field(default=1000, description="ccxt: rows per paginated request.")
    replay_path: str | None = Field(
        default=None, description="replay: folder with spot_ohlcv/perp_ohlcv/funding_rates files."
    )
    replay_name: str = Field(default="replay", description="replay: value of the exchange column.")

    def client(self) -> ExchangeClient:
        """Build the configured exchange client.

        Raises:
            PermanentExchangeError: inconsistent configuration (no replay_path, bad timeframe).
        """
        try:
            timeframe_delta(self.timeframe)
        except ValueError as exc:
            raise PermanentExchangeError(f"exchange.timeframe: {exc}") from exc
        if self.kind == "simulated":
            return SimulatedExchange(
                seed=self.seed,
                funding_interval_hours=self.funding_interval_hours,
                order_book_interval=self.order_book_interval,
            )
        if self.kind == "ccxt":
            return CcxtExchange(
                self.spot_exchange,
                self.perp_exchange,
                api_url=self.api_url,
                api_key=self.api_key,
                secret=self.api_secret,
                password=self.api_password,
                timeout_ms=self.timeout_ms,
                max_retries=self.max_retries,
                backoff_s=self.backoff_s,
                page_limit=self.page_limit,
            )
        if not self.replay_path:
            raise PermanentExchangeError("exchange.kind is 'replay' but replay_path is not set")
        return ReplayExchange(self.replay_path, name=self.replay_name)


def _secret(name: str) -> dg.EnvVar | None:
    # Bind a credential only when its environment variable exists, so offline runs need none.
    return dg.EnvVar(name) if os.environ.get(name) else None


@dg.definitions
def resources() -> dg.Definitions:
    """The `exchange` resource with its offline defaults and env-bound credentials."""
    return dg.Definitions(
        resources={
            "exchange": ExchangeResource(
                api_key=_secret("CARRY_API_KEY"),
                api_secret=_secret("CARRY_API_SECRET"),
                api_password=_secret("CARRY_API_PASSWORD"),
            )
        }
    )
