"""The `exchange` resource: which market-data source the raw assets read, and how.

`kind` picks the implementation (`simulated`, the offline default; `ccxt`; `replay`). Credentials
are never plain config: the definitions bind `api_key`/`api_secret`/`api_password` to `dg.EnvVar`s
(`CARRY_API_KEY`, `CARRY_API_SECRET`, `CARRY_API_PASSWORD`) when those are set, and public market
data needs none. A launch config for `exchange` (Launchpad, `-c ingest.yaml`) replaces the whole
resource config, bindings included, so `client()` reads a credential left unset from its variable:
the keys stay bound whatever else is configured. No key reaches a log (see `CcxtExchange`).

Numeric ccxt settings are validated when the resource is configured (`page_limit: 0`, a negative
timeout, retry count or backoff fail at once, naming the field), never retried.

ccxt requests: ccxt's rate limiter is always on (`enableRateLimit`): it spaces requests by the
venue's `rateLimit` (ms per unit of cost) times each endpoint's cost as ccxt declares it, which
keeps one process under the venue's weight limit. Per venue (limit; rows per page; cost of a page):
- Binance spot (`binance`, rateLimit 50 ms = 1200 units/min for 6000 weight/min/IP): klines
  <= 1000 rows, weight 2 (cost 0.4); depth weight 5-50 by limit.
- Binance USD-M (`binanceusdm`, 2400 weight/min/IP): klines <= 1500 rows, weight 1/2/5/10 for
  limit < 100/500/1000/more; fundingRate <= 1000 rows, weight 1 (shares 500 requests/5 min/IP).
- Bybit v5 (`bybit`, rateLimit 20 ms; 600 requests/5 s/IP): kline <= 1000, funding history
  <= 200 rows, cost 1.
- OKX v5 (`okx`, rateLimit 110 ms): candles 40 requests/2 s (<= 300 rows), history-candles
  20/2 s (<= 100), funding history 10/2 s (<= 100 rows, last 3 months).

Retries (`max_retries`, `backoff_s` doubling per retry, capped at 30 s): network errors, timeouts,
corrupt bodies, any HTTP 5xx and the venues' transient codes (Binance -1000, -1001, -1007, -1008;
Bybit 10000/10006/10016; OKX 50001/50004/50011/50013/50026); HTTP 429/418 wait at least the
venue's `Retry-After`, and a `Retry-After` over 300 s (a Binance IP ban) fails at once, naming the
wait. An unknown symbol, a rejected key or parameter (any other 4xx) fails at once, not retried.
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
    timeout_ms: int = Field(
        default=10_000, gt=0, description="ccxt: per-request timeout in milliseconds (> 0)."
    )
    max_retries: int = Field(
        default=5,
        ge=0,
        description="ccxt: retries per request on transient errors (bounded, >= 0).",
    )
    backoff_s: float = Field(
        default=1.0,
        ge=0,
        description="ccxt: first retry delay in seconds (>= 0); doubles per retry.",
    )
    page_limit: int = Field(
        default=1000,
        gt=0,
        description="ccxt: rows per paginated request (> 0; capped at what the venue serves).",
    )
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
                api_key=_bound(self.api_key, "CARRY_API_KEY"),
                secret=_bound(self.api_secret, "CARRY_API_SECRET"),
                password=_bound(self.api_password, "CARRY_API_PASSWORD"),
                timeout_ms=self.timeout_ms,
                max_retries=self.max_retries,
                backoff_s=self.backoff_s,
                page_limit=self.page_limit,
            )
        if not self.replay_path:
            raise PermanentExchangeError("exchange.kind is 'replay' but replay_path is not set")
        return ReplayExchange(self.replay_path, name=self.replay_name)


def _bound(value: str | None, name: str) -> str | None:
    # The configured credential, else the one its environment variable holds (a launch config
    # replaced the dg.EnvVar binding), else none.
    return value if value else (os.environ.get(name) or None)


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
