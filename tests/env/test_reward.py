"""The reward's risk terms are rates of time (or of notional traded), so they mean the same at every
bar length, and their default weights rank policies the way their P&L and risk do.

v0 charged the per-step return std every step: its yearly sum grew with sqrt(bars per year), and on
real BTC 1 h bars always-long-carry scored below flat. Each test here fails on that reward.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from carry_env import CarryTradeEnv, EnvConfig
from carry_env.synthetic import simulate_market

from .test_real_data import RAW, _closes

BASE = EnvConfig(anomalies=False, drawdown_limit=0.0)
ONE_X = 1.0 / BASE.leverage_cap  # the action that holds 1x gross (0.5x per leg)
Policy = Callable[[int, datetime], float]


def _long_carry(t: int, ts: datetime) -> float:
    return ONE_X


def _flat(t: int, ts: datetime) -> float:
    return 0.0


def _daily_flip(t: int, ts: datetime) -> float:
    # Long carry on even days, flat on odd days: the same trades at every bar length.
    return ONE_X if ts.toordinal() % 2 == 0 else 0.0


def _roll(frame: pl.DataFrame, config: EnvConfig, policy: Policy) -> dict[str, float]:
    # Summed reward and risk term, and the final return, of one episode over the whole frame.
    env = CarryTradeEnv(frame, config)
    env.reset(seed=0)
    ts = frame["ts"].to_list()
    total = risk = 0.0
    t = 0
    while True:
        _, reward, terminated, truncated, info = env.step(np.array([policy(t, ts[t])]))
        total += reward
        risk += info["risk_penalty"]
        t += 1
        if terminated or truncated:
            break
    return {"reward": total, "risk": risk, "return": info["equity"] / config.initial_cash - 1.0}


def _every(frame: pl.DataFrame, hours: int) -> pl.DataFrame:
    # The same market on coarser bars: the rows at whole multiples of `hours` (each settlement
    # lands on one of them, so funding is unchanged).
    ts = pl.col("ts")
    return frame.filter((ts.dt.minute() == 0) & (ts.dt.hour() % hours == 0))


@pytest.fixture(scope="module")
def real_1h() -> pl.DataFrame:
    """Real Binance BTCUSDT 2023-06..2025-03, 1 h closes and the 8 h prints."""
    if not RAW.exists():
        pytest.skip("../shared/data is not beside the repo")
    funding = pl.read_csv(RAW / "BTCUSDT_8h_funding_rates.csv", try_parse_dates=True).select(
        ts=pl.col("Timestamp").dt.replace_time_zone("UTC"), funding_rate=pl.col("Rate")
    )
    bars = _closes("BTCUSDT_1h_spot.csv", "spot_price").join(
        _closes("BTCUSDT_1h_perps.csv", "perp_price"), on="ts", how="inner"
    )
    bars = bars.head(bars.height - 1)
    return bars.join(funding, on="ts", how="left").with_columns(symbol=pl.lit("BTC/USDT:USDT"))


@pytest.fixture(scope="module")
def synthetic_15m() -> pl.DataFrame:
    """Half a year of the simulated BTC market on 15 m bars."""
    return simulate_market(("BTC/USDT:USDT",), "2024-01-01", "2024-07-01", "15m", seed=3)


# Each risk term alone, with a weight that makes it bite for the policy under test.
TERMS = {
    "volatility": dict(drawdown_penalty=0.0, turnover_penalty=0.0, volatility_penalty=5.0),
    "drawdown": dict(volatility_penalty=0.0, turnover_penalty=0.0, drawdown_threshold=0.0),
    "turnover": dict(volatility_penalty=0.0, drawdown_penalty=0.0, turnover_penalty=1e-3),
}


@pytest.mark.slow
@pytest.mark.parametrize("term", sorted(TERMS))
def test_each_risk_term_sums_alike_on_15m_1h_and_8h_bars(
    synthetic_15m: pl.DataFrame, term: str
) -> None:
    config = dataclasses.replace(BASE, **TERMS[term])  # type: ignore[arg-type]
    sums = {
        hours: _roll(frame, config, _daily_flip)["risk"]
        for hours, frame in (
            (0, synthetic_15m),
            (1, _every(synthetic_15m, 1)),
            (8, _every(synthetic_15m, 8)),
        )
    }
    assert min(sums.values()) > 0.0, sums  # the term bites at every bar length
    assert max(sums.values()) / min(sums.values()) < 1.2, sums


@pytest.mark.slow
def test_real_btc_volatility_term_agrees_on_1h_and_8h(real_1h: pl.DataFrame) -> None:
    config = dataclasses.replace(BASE, **TERMS["volatility"])  # type: ignore[arg-type]
    hourly = _roll(real_1h, config, _long_carry)["risk"]
    eight = _roll(_every(real_1h, 8), config, _long_carry)["risk"]
    assert hourly > 0.0 and 1 / 1.2 < hourly / eight < 1.2, (hourly, eight)


@pytest.mark.slow
def test_real_btc_defaults_rank_carry_above_flat_and_churn(real_1h: pl.DataFrame) -> None:
    config = EnvConfig(anomalies=False)  # the defaults, drawdown limit included
    carry = _roll(real_1h, config, _long_carry)
    flat = _roll(real_1h, config, _flat)
    churn = _roll(real_1h.head(24 * 120), config, lambda t, ts: ONE_X if t % 2 == 0 else 0.0)
    assert carry["return"] > 0.0 and carry["reward"] > 0.0  # v0: +4 % of equity, reward < 0
    assert flat["reward"] == 0.0 and carry["reward"] > flat["reward"]
    assert churn["reward"] < carry["reward"] and churn["reward"] < 0.0
    # The penalties are a fraction of the carry earned, not a multiple of it.
    assert carry["risk"] < 0.25 * carry["reward"]


def _funding_market(rates: list[float]) -> pl.DataFrame:
    # Flat prices, one settlement every 8 h at the given rates, 1 h bars.
    start = datetime(2024, 1, 1, tzinfo=UTC)
    n = 8 * len(rates) + 1
    ts = [start + timedelta(hours=h) for h in range(n)]
    funding = [rates[h // 8 - 1] if h % 8 == 0 and h > 0 else None for h in range(n)]
    return pl.DataFrame(
        {
            "ts": ts,
            "symbol": "BTC/USDT:USDT",
            "spot_price": 100.0,
            "perp_price": 100.0,
            "funding_rate": funding,
        }
    )


def test_a_20pct_drawdown_on_the_way_scores_below_a_smooth_path_with_less_pnl() -> None:
    # Path A earns 0.5 bp per settlement for 180 settlements (60 days). Path B pays 1 % per
    # settlement for 45 settlements (the 0.5x short perp loses ~20 % of equity), then earns it back
    # and more over 135 settlements: it ends richer than A, yet sat ~45 days in a >= 5 % drawdown.
    smooth = _funding_market([0.00005] * 180)
    deep = _funding_market([-0.01] * 45 + [0.0037] * 135)
    config = EnvConfig(anomalies=False, leverage_limit=False)
    a = _roll(smooth, config, _long_carry)
    b = _roll(deep, config, _long_carry)
    assert b["return"] > a["return"] > 0.0
    assert b["reward"] < a["reward"]
