"""Per-bar market quantities the kernel reads, computed once per (market, config) with numpy.

Everything at bar t uses only bars at or before t (rolling windows are trailing and expanding at the
start); the one exception is the funding schedule (hours to the next settlement), which exchanges
publish in advance (`nextFundingTime`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carry_env import kernel as k
from carry_env.config import EnvConfig
from carry_env.market import MarketData

_SECONDS_PER_YEAR = 365.0 * 86_400.0


@dataclass(frozen=True, eq=False)
class MarketTensor:
    """The kernel's view of a market: `mkt[T, N, M_*]`, time encodings `tfeat[T, 4]`, features `[T,
    N,
    F]`."""

    mkt: np.ndarray
    tfeat: np.ndarray
    feats: np.ndarray


def trailing_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` rows at each row along axis 0 (fewer at the start)."""
    c = np.cumsum(x, axis=0)
    out = c.copy()
    out[window:] = c[window:] - c[:-window]
    counts = np.minimum(np.arange(1, x.shape[0] + 1), window).reshape((-1,) + (1,) * (x.ndim - 1))
    return out / counts


def lag_log_return(x: np.ndarray, lag: int) -> np.ndarray:
    """log(x[t] / x[t - lag]), against the first row while t < lag."""
    out = np.empty_like(x)
    out[lag:] = np.log(x[lag:] / x[:-lag])
    out[:lag] = np.log(x[:lag] / x[:1])
    return out


def realised_vol(spot: np.ndarray, window: int, bars_per_year: float, prior: float) -> np.ndarray:
    """Annualised std of 1-bar log returns over the trailing `window`; `prior` until two returns
    exist.
    """
    r = np.zeros_like(spot)
    r[1:] = np.log(spot[1:] / spot[:-1])
    m1 = trailing_mean(r[1:], window)
    m2 = trailing_mean(r[1:] ** 2, window)
    var = np.maximum(m2 - m1**2, 0.0)
    vol = np.empty_like(spot)
    vol[0] = prior
    vol[1:] = np.sqrt(var * bars_per_year)
    vol[1] = prior  # a single return has no dispersion
    return np.maximum(vol, 1e-6)


def hours_to_next_funding(ts: np.ndarray, funding: np.ndarray) -> np.ndarray:
    """Hours from each bar to the next settlement after it; past the last one, the last interval
    repeats."""
    t, n = funding.shape
    out = np.full((t, n), 8.0)
    for j in range(n):
        settle = ts[~np.isnan(funding[:, j])]
        if settle.shape[0] == 0:
            continue
        step = settle[-1] - settle[-2] if settle.shape[0] > 1 else np.int64(8 * 3_600 * 10**9)
        idx = np.searchsorted(settle, ts, side="right")
        known = idx < settle.shape[0]
        target = np.empty(t, dtype=np.int64)
        target[known] = settle[idx[known]]
        past = ts[~known] - settle[-1]
        target[~known] = settle[-1] + (past // step + 1) * step
        out[:, j] = (target - ts) / 3.6e12
    return out


def last_rates(funding: np.ndarray, depth: int = 3) -> np.ndarray:
    """`[T, N, depth]`: the last `depth` settled rates as of each bar (0 before enough
    settlements)."""
    t, n = funding.shape
    out = np.zeros((t, n, depth))
    for j in range(n):
        settled = ~np.isnan(funding[:, j])
        rates = funding[settled, j]
        count = np.cumsum(settled)
        for d in range(depth):
            pos = count - 1 - d
            ok = pos >= 0
            out[ok, j, d] = rates[pos[ok]]
    return out


def time_encodings(ts: np.ndarray) -> np.ndarray:
    """`[T, 4]`: sin/cos of the hour of day and of the day of week (UTC)."""
    sec = ts // 10**9
    hour = (sec % 86_400) / 3_600.0
    dow = ((sec // 86_400) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    two_pi = 2.0 * np.pi
    return np.stack(
        [
            np.sin(two_pi * hour / 24),
            np.cos(two_pi * hour / 24),
            np.sin(two_pi * dow / 7),
            np.cos(two_pi * dow / 7),
        ],
        axis=1,
    )


def build_tensor(market: MarketData, config: EnvConfig) -> MarketTensor:
    """All per-bar inputs of the kernel for `market` under `config` (depth/spread defaults, leverage
    limit)."""
    t, n = market.n_bars, market.n_symbols
    bar = market.bar_seconds
    bars_per_day = max(1, round(86_400.0 / bar))
    lag1 = max(1, round(3_600.0 / bar))
    lag4 = max(1, round(4 * 3_600.0 / bar))
    vol_window = max(2, round(config.vol_window_hours * 3_600.0 / bar))
    m = np.zeros((t, n, k.N_MKT))
    m[:, :, k.M_SPOT] = market.spot
    m[:, :, k.M_PERP] = market.perp
    m[:, :, k.M_FUND] = market.funding
    m[:, :, k.M_SDEPTH] = np.where(
        np.isnan(market.spot_depth), config.default_depth_usd, market.spot_depth
    )
    m[:, :, k.M_PDEPTH] = np.where(
        np.isnan(market.perp_depth), config.default_depth_usd, market.perp_depth
    )
    m[:, :, k.M_SPREAD] = np.where(
        np.isnan(market.spread_bps), config.default_spread_bps, market.spread_bps
    )
    m[:, :, k.M_SENT] = np.nan_to_num(market.sentiment)
    m[:, :, k.M_STALE] = market.stale
    m[:, :, k.M_SPOT_SMA] = np.log(market.spot / trailing_mean(market.spot, bars_per_day))
    m[:, :, k.M_PERP_SMA] = np.log(market.perp / trailing_mean(market.perp, bars_per_day))
    m[:, :, k.M_RET1H] = lag_log_return(market.spot, lag1)
    m[:, :, k.M_RET4H] = lag_log_return(market.spot, lag4)
    bars_per_year = _SECONDS_PER_YEAR / bar
    vol = realised_vol(market.spot, vol_window, bars_per_year, prior=config.target_vol_annual)
    m[:, :, k.M_VOL] = vol
    m[:, :, k.M_BARVOL] = vol / np.sqrt(bars_per_year)
    if config.leverage_limit:
        maxlev = config.leverage_cap * config.target_vol_annual / vol
        m[:, :, k.M_MAXLEV] = np.clip(maxlev, config.min_leverage, config.leverage_cap)
    else:
        m[:, :, k.M_MAXLEV] = config.leverage_cap
    m[:, :, k.M_HRS_TO_FUND] = hours_to_next_funding(market.ts, market.funding)
    m[:, :, k.M_LAST1 : k.M_LAST3 + 1] = last_rates(market.funding)
    m[1:, :, k.M_RET1] = np.log(market.spot[1:] / market.spot[:-1])
    m[:, :, k.M_LOG_DEPTH] = (
        np.log10(np.maximum(np.minimum(m[:, :, k.M_SDEPTH], m[:, :, k.M_PDEPTH]), 1.0)) - 6.0
    )
    m[:, :, k.M_MARK] = np.where(np.isnan(market.mark), market.perp, market.mark)
    m[:, :, k.M_HIGH_R] = np.where(np.isnan(market.perp_high), 1.0, market.perp_high / market.perp)
    m[:, :, k.M_LOW_R] = np.where(np.isnan(market.perp_low), 1.0, market.perp_low / market.perp)
    m[:, :, k.M_SPOT_HIGH_R] = np.where(
        np.isnan(market.spot_high), 1.0, market.spot_high / market.spot
    )
    m[:, :, k.M_SPOT_LOW_R] = np.where(
        np.isnan(market.spot_low), 1.0, market.spot_low / market.spot
    )
    m[:, :, k.M_LAG1H] = lag1
    m[:, :, k.M_LAG4H] = lag4
    return MarketTensor(
        mkt=m, tfeat=time_encodings(market.ts), feats=np.ascontiguousarray(market.features)
    )
