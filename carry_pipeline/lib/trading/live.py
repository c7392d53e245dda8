"""The live-trading guard: real orders only behind a config flag AND a confirmation variable.

`live_order_client(enabled=..., api_key=..., secret=...)` is the only way this codebase builds a
ccxt client with keys for orders. It refuses unless `enabled` is True (the job's `live_trading`
config, False by default) and the environment holds `CARRY_LIVE_TRADING=I_UNDERSTAND`; keys come
from `dg.EnvVar` in the job, and neither the keys nor the guard's errors ever contain them
(`Credentials.__repr__` redacts). No live executor is wired into `paper_trading_job` yet: the
guard is what a live `Executor` (the same interface as `BookExecutor`) must pass first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CONFIRM_VAR = "CARRY_LIVE_TRADING"
CONFIRM_VALUE = "I_UNDERSTAND"


class LiveTradingRefused(RuntimeError):
    """Live trading was asked for without both the flag and the confirmation variable."""


@dataclass(frozen=True)
class Credentials:
    """API keys for a live venue; never printed."""

    api_key: str
    secret: str

    def __repr__(self) -> str:
        return "Credentials(api_key=<redacted>, secret=<redacted>)"

    __str__ = __repr__


def check_live_allowed(enabled: bool, environ: Mapping[str, str] | None = None) -> None:
    """Raise `LiveTradingRefused` unless `enabled` and `CARRY_LIVE_TRADING=I_UNDERSTAND`."""
    env = os.environ if environ is None else environ
    missing = []
    if enabled is not True:
        missing.append("the job config flag live_trading: true")
    if env.get(CONFIRM_VAR) != CONFIRM_VALUE:
        missing.append(f"the environment variable {CONFIRM_VAR}={CONFIRM_VALUE}")
    if missing:
        raise LiveTradingRefused(
            "live trading refused: it needs " + " and ".join(missing) + "; paper trading "
            "(the default) places no order"
        )


def live_order_client(
    *,
    enabled: bool,
    credentials: Credentials | None,
    exchange_id: str = "binanceusdm",
    environ: Mapping[str, str] | None = None,
) -> Any:
    """A ccxt client able to place orders, after `check_live_allowed`.

    Raises:
        LiveTradingRefused: the guard refused, or no credentials were bound.
    """
    check_live_allowed(enabled, environ)
    if credentials is None or not credentials.api_key or not credentials.secret:
        raise LiveTradingRefused(
            "live trading refused: CARRY_API_KEY and CARRY_API_SECRET are not bound (dg.EnvVar)"
        )
    import ccxt

    client = getattr(ccxt, exchange_id)(
        {"apiKey": credentials.api_key, "secret": credentials.secret, "enableRateLimit": True}
    )
    client.verbose = False  # verbose mode prints request headers, the key among them
    return client
