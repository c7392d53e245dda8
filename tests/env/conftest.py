"""Small market frames with hand-chosen prices, so cash flows in the tests can be computed on
paper."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from carry_env import EnvConfig

T0 = datetime(2024, 1, 1, tzinfo=UTC)
BAR = timedelta(minutes=15)
BAR_YEARS = 900.0 / (365.0 * 86_400.0)


def booked_flows(info: dict) -> float:
    """The right side of the accounting identity: what `equity[t+1] - equity[t]` must equal."""
    return (
        info["funding_pnl"]
        + info["price_pnl"]
        - info["fees"]
        - info["slippage"]
        - info["borrow_cost"]
        - info["liquidation_loss"]
        + info["insurance_fund"]
    )


def make_frame(
    spot: Sequence[float],
    perp: Sequence[float] | None = None,
    funding: Sequence[float | None] | None = None,
    *,
    symbol: str = "BTC/USDT:USDT",
    depth: float | None = None,
    spread_bps: float | None = None,
    mark: Sequence[float | None] | None = None,
    perp_high: Sequence[float | None] | None = None,
    perp_low: Sequence[float | None] | None = None,
    spot_high: Sequence[float | None] | None = None,
    spot_low: Sequence[float | None] | None = None,
) -> pl.DataFrame:
    """One symbol on a 15-minute grid from 2024-01-01 00:00 UTC; funding None where nothing
    settles; `mark`, `perp_high`, `perp_low`, `spot_high`, `spot_low` become the optional
    price-detail columns (None where unknown)."""
    n = len(spot)
    cols: dict[str, object] = {
        "ts": [T0 + i * BAR for i in range(n)],
        "symbol": [symbol] * n,
        "spot_price": [float(x) for x in spot],
        "perp_price": [float(x) for x in (perp if perp is not None else spot)],
        "funding_rate": list(funding) if funding is not None else [None] * n,
    }
    if depth is not None:
        cols["spot_depth_usd"] = [depth] * n
        cols["perp_depth_usd"] = [depth] * n
    if spread_bps is not None:
        cols["spread_bps"] = [spread_bps] * n
    detail = {
        "mark_price": mark,
        "perp_high": perp_high,
        "perp_low": perp_low,
        "spot_high": spot_high,
        "spot_low": spot_low,
    }
    cols.update({name: list(x) for name, x in detail.items() if x is not None})
    floats = {name: pl.Float64 for name in ("funding_rate", *detail) if name in cols}
    return pl.DataFrame(cols, schema_overrides=floats)


def random_frame(
    seed: int, n_bars: int = 400, symbols: Sequence[str] = ("BTC", "ETH")
) -> pl.DataFrame:
    """Random-walk spot, a noisy basis, funding every 8 h (32 bars) with both signs, depth and
    spread.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for j, s in enumerate(symbols):
        spot = 20_000.0 * (j + 1) * np.exp(np.cumsum(rng.normal(0, 0.004, n_bars)))
        perp = spot * (1.0 + rng.normal(0, 5e-4, n_bars))
        funding = np.full(n_bars, np.nan)
        funding[::32] = rng.normal(1e-4, 3e-4, funding[::32].shape[0])
        parts.append(
            pl.DataFrame(
                {
                    "ts": [T0 + i * BAR for i in range(n_bars)],
                    "symbol": [s] * n_bars,
                    "spot_price": spot,
                    "perp_price": perp,
                    "funding_rate": funding,
                    "spot_depth_usd": rng.uniform(5e5, 5e6, n_bars),
                    "perp_depth_usd": rng.uniform(5e5, 5e6, n_bars),
                    "spread_bps": rng.uniform(0.5, 4.0, n_bars),
                    "f_signal": rng.normal(0, 1, n_bars),
                }
            ).with_columns(pl.col("funding_rate").fill_nan(None))
        )
    return pl.concat(parts)


def with_price_detail(frame: pl.DataFrame, seed: int) -> pl.DataFrame:
    """`frame` with a mark within a few bp of the perp on about half the bars (null elsewhere) and
    both legs' intrabar extremes up to a few % beyond the close, so marks, intrabar liquidations
    (isolated and unified) and auto-add top-ups all occur."""
    rng = np.random.default_rng(seed)
    n = frame.height
    perp = frame.get_column("perp_price").to_numpy()
    spot = frame.get_column("spot_price").to_numpy()
    mark = np.where(rng.random(n) < 0.5, perp * (1.0 + rng.normal(0.0, 5e-4, n)), np.nan)

    def beyond(close: np.ndarray, sign: float) -> pl.Series:
        return pl.Series(close * (1.0 + sign * np.abs(rng.normal(0.0, 0.01, n))))

    return frame.with_columns(
        mark_price=pl.Series(mark).fill_nan(None),
        perp_high=beyond(perp, 1.0),
        perp_low=beyond(perp, -1.0),
        spot_high=beyond(spot, 1.0),
        spot_low=beyond(spot, -1.0),
    )


FRICTIONLESS = EnvConfig(
    fees=False,
    spread=False,
    slippage=False,
    borrow=False,
    anomalies=False,
    leverage_limit=False,
    rebalance_band=0.0,
    min_order_usd=0.0,
    volatility_penalty=0.0,
    drawdown_limit=0.0,
)
"""Every friction off: each test switches on only the cash flow it checks."""


@pytest.fixture
def frictionless() -> EnvConfig:
    """The frictionless config."""
    return FRICTIONLESS


@pytest.fixture
def stress_config() -> EnvConfig:
    """Every mechanism on, anomalies frequent: for invariants."""
    return EnvConfig(
        flash_crash_per_day=2.0,
        halt_per_day=2.0,
        feed_outage_per_day=2.0,
        funding_spike_prob=0.3,
        flash_size=0.25,
        drawdown_limit=0.0,
    )
