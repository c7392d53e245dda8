"""Seeded, deterministic simulator of spot/perp market paths for the funding-rate carry trade.

One generator serves the env's demo, benchmarks and tests and the pipeline's `SimulatedExchange`, so
both see the same market. It is calibrated against real Binance statistics
(`../shared/data/README.md`; the comparison is printed by `bench/calibration.py` and its bands are
asserted in `tests/env/test_synthetic.py`).

Model, in two layers:

- **Hourly layer** over a fixed epoch (`EPOCH_START` .. `EPOCH_END`), generated once per seed and
  symbol and cached. A market-wide semi-Markov regime chain (calm, bull, euphoria, bear, crash)
  drives everything: spot drift, volatility, jump intensity, the basis level and stress in
  liquidity. Spot log-prices follow a stochastic-volatility diffusion (log-vol is AR(1)) with
  Poisson jumps and a slow pull towards a growth trend, with shocks that load on a common market
  factor (cross-asset correlation). The basis (perp / spot - 1) is a mean-reverting AR(1) around a
  regime level (calm: a few bp below spot, bull: a few bp above, crash: deeply negative), which
  makes the 8h basis bimodal. Funding follows Binance's formula from the interval's average premium
  `P`: `F = P + clamp(I - P, -5 bp, +5 bp)` with interest `I = 1 bp per 8h`, then the exchange cap
  and rounding to 8 decimals, so the 1 bp floor is the exact modal value, bull regimes print several
  bp, sell-offs print negative streaks and crashes hit the cap.
- **Minute layer** built on demand for the requested window from per-day random blocks: Brownian
  bridges between the hourly log-prices (jumps land on one minute), the basis interpolated between
  hours plus microstructure noise, depth and spread around their hourly levels. Because every random
  number is tied to the epoch's calendar (hour or day) rather than to the requested window, any
  window or bar size of the same seed is a slice of one path: `simulate_market(bar="1h")` equals
  `simulate_market(bar="1m")` sampled at the hour closes, and a day fetched on its own equals the
  same day inside a year-long fetch.

Everything is vectorised numpy; the only Python loops run over regime segments, 512-hour blocks and
days.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

__all__ = [
    "EPOCH_END",
    "EPOCH_START",
    "MarketPaths",
    "SymbolProfile",
    "bar_minutes",
    "minute_paths",
    "simulate_funding",
    "simulate_market",
    "simulate_ohlcv",
    "simulate_order_book",
    "simulate_sentiment",
    "symbol_profile",
    "to_utc",
]

EPOCH_START = datetime(2018, 1, 1, tzinfo=UTC)
"""First instant the simulator covers (inclusive)."""
EPOCH_END = datetime(2032, 1, 1, tzinfo=UTC)
"""Last instant the simulator covers (inclusive)."""

_N_HOURS = int((EPOCH_END - EPOCH_START).total_seconds() // 3600)
_MIN_PER_HOUR = 60
_MIN_PER_DAY = 1440
_US_PER_MIN = 60_000_000
_HOURS_PER_YEAR = 24 * 365.25
_BP = 1e-4

# Regimes of the market-wide chain.
CALM, BULL, EUPHORIA, BEAR, CRASH = range(5)
_REGIME_NAMES = ("calm", "bull", "euphoria", "bear", "crash")
# Mean sojourn (hours) and next-state probabilities of the semi-Markov chain.
_REGIME_MEAN_HOURS = np.array([700.0, 320.0, 72.0, 130.0, 18.0])
_REGIME_NEXT = np.array(
    [
        [0.0, 0.55, 0.0, 0.37, 0.08],  # calm -> bull / bear / (rarely) straight to a crash
        [0.60, 0.0, 0.30, 0.10, 0.0],  # bull -> calm / euphoria / bear
        [0.0, 0.55, 0.0, 0.20, 0.25],  # euphoria -> bull / bear / crash
        [0.70, 0.10, 0.0, 0.0, 0.20],  # bear -> calm / bull / crash
        [0.20, 0.0, 0.0, 0.80, 0.0],  # crash -> calm / bear
    ]
)
# Per-regime drivers: annualised log drift, vol multiplier, hourly jump probability, jump mean and
# sd.
_REGIME_DRIFT = np.array([0.05, 0.9, 2.5, -1.2, -18.0])
_REGIME_VOL = np.array([0.75, 1.0, 1.5, 1.4, 3.0])
_REGIME_JUMP_P = np.array([0.0004, 0.0008, 0.003, 0.003, 0.04])
_REGIME_JUMP_MU = np.array([0.0, 0.0, 0.0, -0.01, -0.04])
_REGIME_JUMP_SD = np.array([0.015, 0.015, 0.025, 0.02, 0.035])
# Basis: regime level (bp), stationary sd of the AR(1) deviation (bp).
_REGIME_BASIS_MU = np.array([-3.6, 6.6, 19.0, -6.5, -24.0])
_REGIME_BASIS_SD = np.array([1.5, 1.8, 7.0, 2.8, 9.0])
# Liquidity: log-depth offset and spread multiplier; sentiment level.
_REGIME_DEPTH = np.array([0.0, 0.05, -0.25, -0.45, -1.4])
_REGIME_SENTIMENT = np.array([0.0, 0.45, 0.85, -0.45, -0.9])

_BASIS_PHI = 0.85  # hourly AR(1) coefficient of the basis deviation (half-life ~4 h)
_BASIS_LEVEL_HALFLIFE_H = 6.0  # regime level changes are smoothed over a few hours
_BASIS_COMMON = 0.7  # loading of basis shocks on the market-wide factor
_LOGVOL_PHI = 0.985
_LOGVOL_SD = 0.35  # stationary sd of log-volatility
_TREND_HALFLIFE_H = _HOURS_PER_YEAR  # pull of log price towards its growth trend
_MICRO_BASIS_SD_BP = 0.4
_INTEREST_8H = 1e-4  # Binance interest component, per 8 h
_PREMIUM_CLAMP = 5e-4


@dataclass(frozen=True)
class SymbolProfile:
    """Static parameters of one simulated asset (spot and its USDT-margined perpetual).

    Attributes:
        base: base asset, e.g. "BTC".
        price_2024: trend price on 2024-01-01 (USDT).
        trend_growth: annual log growth of the trend price.
        vol_annual: baseline annualised volatility of spot log returns.
        market_loading: correlation of the asset's shocks with the market factor (0..1).
        basis_scale: multiplier of the basis deviation (altcoins swing more than BTC).
        funding_cap: absolute cap of one funding print (fraction per interval), as the exchange sets
        it. spot_depth_usd: calm-market USDT depth within 10 bp per side of the spot book.
        perp_depth_usd: calm-market USDT depth within 10 bp per side of the perp book.
        spread_bps: calm-market quoted spread (bp).
        volume_per_min: calm-market spot volume per minute in base currency.
    """

    base: str
    price_2024: float
    trend_growth: float
    vol_annual: float
    market_loading: float
    basis_scale: float
    funding_cap: float
    spot_depth_usd: float
    perp_depth_usd: float
    spread_bps: float
    volume_per_min: float


_PROFILES: dict[str, SymbolProfile] = {
    p.base: p
    for p in (
        SymbolProfile("BTC", 42_000.0, 0.20, 0.55, 1.00, 1.0, 0.0030, 4.0e6, 9.0e6, 0.5, 25.0),
        SymbolProfile("ETH", 2_300.0, 0.15, 0.70, 0.90, 1.05, 0.00375, 2.0e6, 5.0e6, 0.8, 350.0),
        SymbolProfile("SOL", 100.0, 0.40, 0.95, 0.80, 1.4, 0.0050, 6.0e5, 1.5e6, 1.5, 3_000.0),
        SymbolProfile("BNB", 310.0, 0.20, 0.60, 0.75, 1.2, 0.0050, 5.0e5, 1.0e6, 1.5, 500.0),
        SymbolProfile("XRP", 0.62, 0.20, 0.85, 0.75, 1.3, 0.0050, 4.0e5, 1.0e6, 2.0, 2.0e5),
        SymbolProfile("DOGE", 0.09, 0.25, 1.00, 0.70, 1.5, 0.0050, 3.0e5, 8.0e5, 2.5, 1.5e6),
    )
}


def symbol_profile(symbol: str) -> SymbolProfile:
    """The simulation parameters of a symbol's base asset.

    Known bases (BTC, ETH, SOL, BNB, XRP, DOGE) have hand-calibrated profiles; any other base gets a
    deterministic altcoin profile derived from its name, so every symbol can be simulated.

    Args:
        symbol: a ccxt unified symbol (`BTC/USDT`, `BTC/USDT:USDT`) or a bare base (`BTC`).

    Returns:
        The profile of the base asset.
    """
    base = _base(symbol)
    if base in _PROFILES:
        return _PROFILES[base]
    u = (zlib.crc32(base.encode()) % 10_000) / 10_000.0
    return SymbolProfile(
        base=base,
        price_2024=float(round(0.5 + 50.0 * u, 4)),
        trend_growth=0.15,
        vol_annual=0.9 + 0.4 * u,
        market_loading=0.65,
        basis_scale=1.5,
        funding_cap=0.0075,
        spot_depth_usd=2.0e5,
        perp_depth_usd=5.0e5,
        spread_bps=3.0,
        volume_per_min=1.0e4,
    )


def _base(symbol: str) -> str:
    base = symbol.split("/")[0].split(":")[0].strip().upper()
    if not base:
        raise ValueError(
            f"cannot read a base asset from symbol {symbol!r}; expected e.g. 'BTC/USDT:USDT'"
        )
    return base


# --------------------------------------------------------------------------------------------------
# time helpers


def to_utc(value: str | datetime) -> datetime:
    """Parse an ISO date/time or datetime as UTC (naive values are taken to be UTC).

    Args:
        value: e.g. "2024-01-01", "2024-01-01T08:00:00+00:00" or a datetime.

    Returns:
        A timezone-aware UTC datetime.
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(
                f"cannot parse {value!r} as an ISO date/time (e.g. '2024-01-01')"
            ) from exc
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


_BAR_RE = re.compile(r"^\s*(\d+)\s*(m|min|h|d)\s*$", re.IGNORECASE)
_BAR_UNIT_MIN = {"m": 1, "min": 1, "h": 60, "d": 1440}


def bar_minutes(bar: str | timedelta) -> int:
    """Length of a bar in whole minutes.

    Args:
        bar: "1m", "15m", "1h", "4h", "1d" (ccxt timeframe style) or a timedelta.

    Returns:
        The number of minutes in one bar.

    Raises:
        ValueError: the bar is not a positive whole number of minutes.
    """
    if isinstance(bar, timedelta):
        secs = bar.total_seconds()
        if secs <= 0 or secs % 60:
            raise ValueError(f"bar {bar} must be a positive whole number of minutes")
        return int(secs // 60)
    m = _BAR_RE.match(bar)
    if not m:
        raise ValueError(f"cannot parse bar {bar!r}; use e.g. '1m', '15m', '1h', '4h', '1d'")
    n = int(m.group(1)) * _BAR_UNIT_MIN[m.group(2).lower()]
    if n <= 0:
        raise ValueError(f"bar {bar!r} must be positive")
    return n


def _minute_index(t: datetime, what: str) -> int:
    secs = (t - EPOCH_START).total_seconds()
    if secs % 60:
        raise ValueError(f"{what} {t.isoformat()} is not on a whole minute")
    return int(secs // 60)


def _window(start: str | datetime, end: str | datetime, bar_min: int) -> tuple[int, int]:
    # Minute indices [k0, k1] (inclusive) of the window's first bar open and last bar close.
    t0, t1 = to_utc(start), to_utc(end)
    if not EPOCH_START <= t0 < t1 <= EPOCH_END:
        raise ValueError(
            f"window {t0.isoformat()} .. {t1.isoformat()} must satisfy start < end and lie "
            "within the "
            f"simulator's epoch {EPOCH_START.isoformat()} .. {EPOCH_END.isoformat()}"
        )
    k0, k1 = _minute_index(t0, "start"), _minute_index(t1, "end")
    if k0 % bar_min or k1 % bar_min:
        raise ValueError(
            f"start {t0.isoformat()} and end {t1.isoformat()} must be multiples of the "
            f"{bar_min}-minute "
            "bar counted from midnight UTC"
        )
    return k0, k1


def _ts_series(name: str, minutes: np.ndarray) -> pl.Series:
    base_us = int(EPOCH_START.timestamp()) * 1_000_000
    us = base_us + minutes.astype(np.int64) * _US_PER_MIN
    return pl.Series(name, us, dtype=pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


# --------------------------------------------------------------------------------------------------
# numeric helpers


def _ar1(shocks: np.ndarray, phi: float, x0: float = 0.0) -> np.ndarray:
    # Exact x[t] = phi * x[t-1] + shocks[t], vectorised in 512-step blocks (one matmul + a short
    # carry loop).
    n = shocks.shape[0]
    block = 512
    nb = -(-n // block)
    e = np.zeros(nb * block)
    e[:n] = shocks
    e = e.reshape(nb, block)
    i = np.arange(block)
    lags = i[:, None] - i[None, :]
    weights = np.where(
        lags >= 0, phi ** np.maximum(lags, 0), 0.0
    )  # weights[i, j] = phi**(i-j), j <= i
    local = e @ weights.T
    decay = phi ** (i + 1)
    carry = np.empty(nb)
    prev = x0
    for b in range(nb):
        carry[b] = prev
        prev = local[b, -1] + decay[-1] * prev
    return (local + carry[:, None] * decay[None, :]).reshape(-1)[:n]


def _ema(x: np.ndarray, halflife: float, x0: float) -> np.ndarray:
    alpha = 1.0 - 0.5 ** (1.0 / halflife)
    return _ar1(alpha * x, 1.0 - alpha, x0)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]))


def _sym_key(base: str) -> int:
    return zlib.crc32(base.encode())


# --------------------------------------------------------------------------------------------------
# hourly layer


@dataclass(frozen=True)
class _Market:
    regime: np.ndarray  # int8 per hour
    shock: np.ndarray  # market factor N(0,1) per hour
    basis_shock: np.ndarray  # common basis shock N(0,1) per hour
    jump_u: np.ndarray  # U(0,1) per hour (market jump occurs when below the regime's probability)
    jump_z: np.ndarray  # N(0,1) size of a market jump
    jump_minute: np.ndarray  # minute of the hour a jump lands on
    sentiment: np.ndarray  # market-wide index in [-1, 1] per hour (before returns feedback)
    stress: np.ndarray  # smoothed stress in [0, 1] per hour


def _regime_chain(rng: np.random.Generator) -> np.ndarray:
    regime = np.empty(_N_HOURS, dtype=np.int8)
    state, h = CALM, 0
    while h < _N_HOURS:
        # Gamma(2) sojourns: less memoryless than geometric, never shorter than 2 h.
        length = max(2, int(rng.gamma(2.0, _REGIME_MEAN_HOURS[state] / 2.0)))
        regime[h : h + length] = state
        h += length
        state = int(rng.choice(5, p=_REGIME_NEXT[state]))
    return regime


@functools.lru_cache(maxsize=8)
def _market(seed: int) -> _Market:
    rng = _rng(seed, 0x4D4B54)
    regime = _regime_chain(rng)
    shock = rng.standard_normal(_N_HOURS)
    basis_shock = rng.standard_normal(_N_HOURS)
    jump_u = rng.random(_N_HOURS)
    jump_z = rng.standard_normal(_N_HOURS)
    jump_minute = rng.integers(0, _MIN_PER_HOUR, _N_HOURS)
    noise = _ar1(rng.standard_normal(_N_HOURS) * 0.08, 0.97)
    level = _ema(_REGIME_SENTIMENT[regime], 24.0, 0.0)
    sentiment = np.tanh(1.6 * level + noise)
    stress_raw = np.isin(regime, (BEAR, CRASH)).astype(float) + (regime == CRASH)
    stress = np.clip(_ema(stress_raw, 8.0, 0.0) / 2.0, 0.0, 1.0)
    return _Market(regime, shock, basis_shock, jump_u, jump_z, jump_minute, sentiment, stress)


@dataclass(frozen=True)
class _Asset:
    log_price: np.ndarray  # log spot at each hour boundary, length _N_HOURS + 1
    jump: np.ndarray  # log jump inside hour h
    jump_minute: np.ndarray
    vol_hour: np.ndarray  # diffusive sd of the hour's log return
    basis: np.ndarray  # perp/spot - 1 at each hour boundary, length _N_HOURS + 1
    log_depth: np.ndarray  # log of the depth multiplier at each hour boundary, length _N_HOURS + 1


@functools.lru_cache(maxsize=64)
def _asset(seed: int, base: str) -> _Asset:
    prof = symbol_profile(base)
    mkt = _market(seed)
    rng = _rng(seed, 0x415354, _sym_key(base))
    reg = mkt.regime
    rho = prof.market_loading
    z = rho * mkt.shock + np.sqrt(1.0 - rho * rho) * rng.standard_normal(_N_HOURS)
    logvol = _ar1(
        rng.standard_normal(_N_HOURS) * _LOGVOL_SD * np.sqrt(1 - _LOGVOL_PHI**2), _LOGVOL_PHI
    )
    sigma_h = (
        prof.vol_annual
        / np.sqrt(_HOURS_PER_YEAR)
        * _REGIME_VOL[reg]
        * np.exp(logvol - 0.5 * _LOGVOL_SD**2)
    )
    # Jumps: market jumps scaled by the loading, plus rarer idiosyncratic ones.
    jp = _REGIME_JUMP_P[reg]
    mkt_jump = np.where(
        mkt.jump_u < jp, _REGIME_JUMP_MU[reg] + _REGIME_JUMP_SD[reg] * mkt.jump_z, 0.0
    )
    idio_u, idio_z = rng.random(_N_HOURS), rng.standard_normal(_N_HOURS)
    idio_jump = np.where(idio_u < 0.3 * jp, _REGIME_JUMP_SD[reg] * idio_z, 0.0)
    own_minute = rng.integers(0, _MIN_PER_HOUR, _N_HOURS)
    jump = mkt_jump * (0.6 + 0.4 * rho / 1.0) * (prof.vol_annual / 0.55) + idio_jump
    jump_minute = np.where(mkt_jump != 0.0, mkt.jump_minute, own_minute)
    # Log price: deviation from a growth trend, pulled back with a one-year half-life.
    t_years = (np.arange(_N_HOURS + 1) - _hours_to_2024()) / _HOURS_PER_YEAR
    trend = np.log(prof.price_2024) + prof.trend_growth * t_years
    drift = _REGIME_DRIFT[reg] / _HOURS_PER_YEAR - 0.5 * sigma_h**2
    step = drift + sigma_h * z + jump + np.diff(trend)
    phi = 0.5 ** (1.0 / _TREND_HALFLIFE_H)
    dev = _ar1(step - np.diff(trend), phi, 0.0)
    log_price = trend + np.concatenate([[0.0], dev])
    # Basis: AR(1) deviation around a smoothed regime level; shocks partly market-wide.
    bz = _BASIS_COMMON * mkt.basis_shock + np.sqrt(1 - _BASIS_COMMON**2) * rng.standard_normal(
        _N_HOURS
    )
    dev_sd = _REGIME_BASIS_SD[reg] * np.sqrt(1 - _BASIS_PHI**2) * prof.basis_scale
    level = _ema(
        _REGIME_BASIS_MU[reg] * (0.5 + 0.5 * prof.basis_scale), _BASIS_LEVEL_HALFLIFE_H, -3.6
    )
    basis = (level + _ar1(bz * dev_sd, _BASIS_PHI)) * _BP
    basis = np.concatenate([[basis[0]], basis])
    # Depth: thins with stress and high volatility; slow AR(1) noise.
    depth_noise = _ar1(rng.standard_normal(_N_HOURS) * 0.06, 0.97)
    log_depth = (
        _REGIME_DEPTH[reg] * 0.3
        - 1.2 * mkt.stress
        - 0.5 * (logvol / _LOGVOL_SD).clip(-2, 3) * 0.3
        + depth_noise
    )
    log_depth = np.concatenate([[log_depth[0]], log_depth])
    return _Asset(log_price, jump, jump_minute, sigma_h, basis, log_depth)


def _hours_to_2024() -> int:
    return int((datetime(2024, 1, 1, tzinfo=UTC) - EPOCH_START).total_seconds() // 3600)


@functools.lru_cache(maxsize=64)
def _funding_hourly(seed: int, base: str, interval_hours: float) -> np.ndarray:
    # Funding settled at each hour boundary h (index h, length _N_HOURS + 1); NaN where none
    # settles.
    ih = _check_interval(interval_hours)
    prof = symbol_profile(base)
    basis = _asset(seed, base).basis
    csum = np.concatenate([[0.0], np.cumsum(basis[1:])])  # csum[h] = sum of basis[1..h]
    out = np.full(_N_HOURS + 1, np.nan)
    settle = np.arange(ih, _N_HOURS + 1, ih)
    premium = (csum[settle] - csum[settle - ih]) / ih  # mean premium over the interval (h-ih, h]
    interest = _INTEREST_8H * ih / 8.0
    rate = premium + np.clip(interest - premium, -_PREMIUM_CLAMP, _PREMIUM_CLAMP)
    out[settle] = np.round(np.clip(rate, -prof.funding_cap, prof.funding_cap), 8)
    return out


def _check_interval(interval_hours: float) -> int:
    ih = float(interval_hours)
    if ih <= 0 or ih != int(ih) or 24 % int(ih):
        raise ValueError(
            f"funding_interval_hours={interval_hours!r} must be a whole number of hours "
            "dividing 24 "
            "(exchanges use 1, 2, 4 and 8)"
        )
    return int(ih)


# --------------------------------------------------------------------------------------------------
# minute layer


@dataclass(frozen=True)
class MarketPaths:
    """Minute-resolution paths of one asset over a window, the base grid every output is sampled
    from.

    Index i of every array is minute `k0 + i` counted from `EPOCH_START` (`minutes` holds those
    indices); values are observed at that instant. Arrays have `k1 - k0 + 1` entries (both ends
    included).

    Attributes:
        symbol: the symbol the paths were requested for.
        minutes: minute indices from `EPOCH_START`.
        spot: spot price (USDT).
        perp: perpetual price (USDT) = spot * (1 + basis).
        basis: perp / spot - 1.
        funding: funding rate settled at the minute (fraction per interval); NaN where none settles.
        interval_hours: hours between funding settlements.
        spot_depth_usd: USDT depth within 10 bp per side of the spot book.
        perp_depth_usd: USDT depth within 10 bp per side of the perp book.
        spread_bps: quoted spread (bp) of the perp book (the spot book's is `spot_spread_bps`).
        spot_spread_bps: quoted spread (bp) of the spot book.
        sentiment: market-wide sentiment index in [-1, 1] published at or before the minute.
        high_excursion: per-minute log excursion of the high above max(open, close) (>= 0).
        low_excursion: per-minute log excursion of the low below min(open, close) (>= 0).
        volume_noise: per-minute N(0,1) draws for spot volume.
        perp_volume_noise: per-minute N(0,1) draws for perp volume.
        sigma_minute: diffusive sd of the minute's log return.
    """

    symbol: str
    minutes: np.ndarray
    spot: np.ndarray
    perp: np.ndarray
    basis: np.ndarray
    funding: np.ndarray
    interval_hours: int
    spot_depth_usd: np.ndarray
    perp_depth_usd: np.ndarray
    spread_bps: np.ndarray
    spot_spread_bps: np.ndarray
    sentiment: np.ndarray
    high_excursion: np.ndarray
    low_excursion: np.ndarray
    volume_noise: np.ndarray
    perp_volume_noise: np.ndarray
    sigma_minute: np.ndarray


# Per-minute random streams, drawn in this order from one generator per (seed, asset, day). A
# shorter draw is a prefix of the full one, so outputs that need only the first streams skip the
# rest and stay equal.
_S_BASIS, _S_SPOT_DEPTH, _S_PERP_DEPTH, _S_SPREAD, _S_BRIDGE = range(5)
_S_HIGH, _S_LOW, _S_VOLUME, _S_PERP_VOLUME = range(5, 9)
_N_STREAMS = 9


def _day_draws(seed: int, base: str, d0: int, d1: int, n_streams: int) -> np.ndarray:
    # (n_streams, minutes) normal draws for days d0..d1-1.
    key = _sym_key(base)
    out = np.zeros((_N_STREAMS, (d1 - d0) * _MIN_PER_DAY))
    for i, d in enumerate(range(d0, d1)):
        out[:n_streams, i * _MIN_PER_DAY : (i + 1) * _MIN_PER_DAY] = _rng(
            seed, 0x444159, key, d
        ).standard_normal((n_streams, _MIN_PER_DAY))
    return out


def minute_paths(
    symbol: str,
    k0: int,
    k1: int,
    seed: int = 0,
    funding_interval_hours: float = 8.0,
) -> MarketPaths:
    """Minute paths of one asset for minutes `k0..k1` (inclusive) counted from `EPOCH_START`.

    Args:
        symbol: a ccxt unified symbol; the base asset picks the profile and the random streams, so
            `BTC/USDT` and `BTC/USDT:USDT` share one path.
        k0: first minute index.
        k1: last minute index (inclusive).
        seed: the simulation seed.
        funding_interval_hours: hours between funding settlements (dividing 24).

    Returns:
        The minute paths.
    """
    return _minute_paths(symbol, k0, k1, seed, funding_interval_hours, _N_STREAMS)


def _minute_paths(
    symbol: str, k0: int, k1: int, seed: int, funding_interval_hours: float, n_streams: int
) -> MarketPaths:
    # n_streams < _N_STREAMS leaves the later streams at zero: without the bridge (n_streams <=
    # _S_BRIDGE) only whole-hour minutes hold the true path, without excursions/volume those arrays
    # are meaningless.
    n_min = _N_HOURS * _MIN_PER_HOUR
    if not 0 <= k0 <= k1 <= n_min or k0 == n_min:
        raise ValueError(f"minute window {k0}..{k1} outside the simulator's epoch 0..{n_min}")
    base = _base(symbol)
    prof = symbol_profile(base)
    asset = _asset(seed, base)
    mkt = _market(seed)
    ih = _check_interval(funding_interval_hours)
    d0 = k0 // _MIN_PER_DAY
    # Days through the one holding k1, so k1's noise is its day's draw whatever the window.
    d1 = min(k1 // _MIN_PER_DAY + 1, _N_HOURS // 24)
    draws = _day_draws(seed, base, d0, d1, n_streams)
    h0, h1 = d0 * 24, d1 * 24  # hours covered by the drawn days
    n_h = h1 - h0
    # Spot: Brownian bridges between hourly log prices; the hour's jump lands on one minute.
    z = draws[_S_BRIDGE].reshape(n_h, _MIN_PER_HOUR)
    sig = asset.vol_hour[h0:h1]
    jump = asset.jump[h0:h1]
    total = asset.log_price[h0 + 1 : h1 + 1] - asset.log_price[h0:h1]
    incr = (z - z.mean(axis=1, keepdims=True)) * (sig / np.sqrt(_MIN_PER_HOUR))[:, None]
    incr += ((total - jump) / _MIN_PER_HOUR)[:, None]
    incr[np.arange(n_h), asset.jump_minute[h0:h1]] += jump
    # Log price at minute 60h + m is log_price[h] + sum of the hour's first m increments.
    within = np.cumsum(incr, axis=1) - incr
    log_spot = (asset.log_price[h0:h1, None] + within).reshape(-1)
    log_spot = np.append(log_spot, asset.log_price[h1])
    # Hour-level quantities interpolated to minutes (last entry is hour h1 itself).
    frac = np.append(np.tile(np.arange(_MIN_PER_HOUR) / _MIN_PER_HOUR, n_h), 0.0)
    hour_of = np.append(np.repeat(np.arange(h0, h1), _MIN_PER_HOUR), h1)

    def interp(x: np.ndarray) -> np.ndarray:
        nxt = x[np.minimum(hour_of + 1, _N_HOURS)]
        return x[hour_of] * (1.0 - frac) + nxt * frac

    stress = np.append(mkt.stress, mkt.stress[-1])[hour_of]
    micro = np.append(draws[_S_BASIS], 0.0) * _MICRO_BASIS_SD_BP * _BP * (1.0 + 3.0 * stress)
    basis = interp(asset.basis) + micro
    log_depth = interp(asset.log_depth)
    spot_ld = log_depth + 0.08 * np.append(draws[_S_SPOT_DEPTH], 0.0)
    perp_ld = log_depth + 0.08 * np.append(draws[_S_PERP_DEPTH], 0.0)
    spread_mult = np.exp(-0.8 * log_depth + 0.1 * np.append(draws[_S_SPREAD], 0.0))
    funding_h = _funding_hourly(seed, base, float(ih))
    funding = np.full(hour_of.shape[0], np.nan)
    on_hour = frac == 0.0
    funding[on_hour] = funding_h[hour_of[on_hour]]
    sentiment = np.append(mkt.sentiment, mkt.sentiment[-1])[hour_of]
    sig_min = np.append(np.repeat(sig, _MIN_PER_HOUR), sig[-1]) / np.sqrt(_MIN_PER_HOUR)
    lo, hi = k0 - d0 * _MIN_PER_DAY, k1 - d0 * _MIN_PER_DAY + 1
    spot = np.exp(log_spot)
    s = slice(lo, hi)
    return MarketPaths(
        symbol=symbol,
        minutes=np.arange(k0, k1 + 1, dtype=np.int64),
        spot=spot[s],
        perp=(spot * (1.0 + basis))[s],
        basis=basis[s],
        funding=funding[s],
        interval_hours=ih,
        spot_depth_usd=(prof.spot_depth_usd * np.exp(spot_ld))[s],
        perp_depth_usd=(prof.perp_depth_usd * np.exp(perp_ld))[s],
        spread_bps=(prof.spread_bps * 0.8 * spread_mult)[s],
        spot_spread_bps=(prof.spread_bps * spread_mult)[s],
        sentiment=sentiment[s],
        high_excursion=np.abs(np.append(draws[_S_HIGH], 0.0))[s],
        low_excursion=np.abs(np.append(draws[_S_LOW], 0.0))[s],
        volume_noise=np.append(draws[_S_VOLUME], 0.0)[s],
        perp_volume_noise=np.append(draws[_S_PERP_VOLUME], 0.0)[s],
        sigma_minute=sig_min[s],
    )


def _intervals(
    symbols: Sequence[str], funding_interval_hours: float | Sequence[float]
) -> list[float]:
    if isinstance(funding_interval_hours, int | float):
        return [float(funding_interval_hours)] * len(symbols)
    ivs = [float(x) for x in funding_interval_hours]
    if len(ivs) != len(symbols):
        raise ValueError(
            f"funding_interval_hours has {len(ivs)} entries for {len(symbols)} symbols "
            f"{list(symbols)}"
        )
    return ivs


def _check_symbols(symbols: Sequence[str]) -> list[str]:
    if isinstance(symbols, str):
        raise TypeError(f"symbols must be a sequence of symbols, got the string {symbols!r}")
    syms = list(symbols)
    if not syms:
        raise ValueError("symbols is empty; pass at least one symbol, e.g. ['BTC/USDT:USDT']")
    bases = [_base(s) for s in syms]
    dup = sorted({b for b in bases if bases.count(b) > 1})
    if dup:
        raise ValueError(f"symbols {syms} repeat the base asset(s) {dup}; each asset once please")
    return syms


# --------------------------------------------------------------------------------------------------
# public frames


def simulate_market(
    symbols: Sequence[str] = ("BTC/USDT:USDT", "ETH/USDT:USDT"),
    start: str | datetime = "2024-01-01",
    end: str | datetime = "2024-03-01",
    bar: str | timedelta = "15m",
    seed: int = 0,
    funding_interval_hours: float | Sequence[float] = 8.0,
) -> pl.DataFrame:
    """Simulate the env market frame: one row per bar close per symbol.

    Bars cover `[start, end)`; each row is stamped with its bar's close time `ts` and holds the
    values observed at that instant (so the first row is at `start + bar`, the last at `end`).
    Sampling a finer bar of the same seed at these closes gives the same values.

    Args:
        symbols: ccxt unified symbols, one per asset (the perp symbol by convention,
        `BTC/USDT:USDT`). start: window start (UTC), a multiple of `bar` from midnight.
        end: window end (UTC), a multiple of `bar` from midnight.
        bar: bar length ("1m", "15m", "1h", ...); must divide every funding interval so that each
            settlement falls on a bar close.
        seed: the simulation seed; the same seed gives the identical frame.
        funding_interval_hours: hours between funding settlements, one value for all symbols or one
        per
            symbol (each dividing 24).

    Returns:
        Columns `ts` (Datetime us UTC, bar close), `symbol`, `spot_price`, `perp_price`,
        `funding_rate` (fraction per interval settled at `ts`, null where none settles),
        `spot_depth_usd`, `perp_depth_usd` (USDT within 10 bp per side), `spread_bps` (perp book),
        `sentiment` ([-1, 1]), sorted by `ts` then `symbol` in the order given.
    """
    syms = _check_symbols(symbols)
    ivs = _intervals(syms, funding_interval_hours)
    bm = bar_minutes(bar)
    for s, iv in zip(syms, ivs, strict=True):
        if (_check_interval(iv) * 60) % bm:
            raise ValueError(
                f"bar of {bm} minutes does not divide the {iv:g} h funding interval of {s}; "
                "funding "
                "settlements would fall inside bars"
            )
    k0, k1 = _window(start, end, bm)
    frames = []
    for s, iv in zip(syms, ivs, strict=True):
        # Bars of whole hours sample only hour boundaries, where the bridge is zero: skip drawing
        # it.
        n_streams = _S_BRIDGE if bm % _MIN_PER_HOUR == 0 else _S_BRIDGE + 1
        p = _minute_paths(s, k0, k1, seed, iv, n_streams)
        idx = np.arange(bm, k1 - k0 + 1, bm)
        frames.append(
            pl.DataFrame(
                [
                    _ts_series("ts", p.minutes[idx]),
                    pl.Series("symbol", [s] * idx.shape[0], dtype=pl.String),
                    pl.Series("spot_price", p.spot[idx]),
                    pl.Series("perp_price", p.perp[idx]),
                    pl.Series("funding_rate", p.funding[idx], nan_to_null=True),
                    pl.Series("spot_depth_usd", p.spot_depth_usd[idx]),
                    pl.Series("perp_depth_usd", p.perp_depth_usd[idx]),
                    pl.Series("spread_bps", p.spread_bps[idx]),
                    pl.Series("sentiment", p.sentiment[idx]),
                ]
            )
        )
    order = {s: i for i, s in enumerate(syms)}
    out = pl.concat(frames)
    return (
        out.with_columns(pl.col("symbol").replace_strict(order, return_dtype=pl.Int32).alias("_o"))
        .sort("ts", "_o")
        .drop("_o")
    )


def simulate_ohlcv(
    symbols: Sequence[str],
    start: str | datetime,
    end: str | datetime,
    bar: str | timedelta = "15m",
    seed: int = 0,
    market: str = "spot",
) -> pl.DataFrame:
    """Simulate OHLCV bars of the spot or perp market, aggregated from the minute path.

    Args:
        symbols: ccxt unified symbols (returned as given).
        start: window start (UTC), a multiple of `bar` from midnight.
        end: window end (UTC), a multiple of `bar` from midnight.
        bar: bar length.
        seed: the simulation seed.
        market: "spot" or "perp".

    Returns:
        Columns `ts` (bar OPEN time, Datetime us UTC), `symbol`, `open`, `high`, `low`, `close`,
        `volume` (base currency), sorted by `symbol` then `ts`. A bar's close equals the next bar's
        open.
    """
    if market not in ("spot", "perp"):
        raise ValueError(f"market must be 'spot' or 'perp', got {market!r}")
    syms = _check_symbols(symbols)
    bm = bar_minutes(bar)
    k0, k1 = _window(start, end, bm)
    frames = []
    for s in syms:
        p = minute_paths(s, k0, k1, seed)
        prof = symbol_profile(s)
        px = p.spot if market == "spot" else p.perp
        o, c = px[:-1], px[1:]
        sig = p.sigma_minute[:-1]
        hi = np.maximum(o, c) * np.exp(0.6 * sig * p.high_excursion[:-1])
        lo = np.minimum(o, c) * np.exp(-0.6 * sig * p.low_excursion[:-1])
        noise = p.volume_noise if market == "spot" else p.perp_volume_noise
        # Volume rises with volatility (relative to the asset's baseline) and thinner books.
        vol_ratio = sig / (prof.vol_annual / np.sqrt(_HOURS_PER_YEAR * _MIN_PER_HOUR))
        vol = (
            prof.volume_per_min
            * (1.0 if market == "spot" else 3.0)
            * vol_ratio**1.5
            * np.exp(0.5 * noise[:-1] - 0.125)
        )
        nb = (k1 - k0) // bm
        frames.append(
            pl.DataFrame(
                [
                    _ts_series("ts", p.minutes[:-1:bm]),
                    pl.Series("symbol", [s] * nb, dtype=pl.String),
                    pl.Series("open", o[::bm]),
                    pl.Series("high", hi.reshape(nb, bm).max(axis=1)),
                    pl.Series("low", lo.reshape(nb, bm).min(axis=1)),
                    pl.Series("close", c[bm - 1 :: bm]),
                    pl.Series("volume", np.round(vol.reshape(nb, bm).sum(axis=1), 8)),
                ]
            )
        )
    return pl.concat(frames)


def simulate_funding(
    symbols: Sequence[str],
    start: str | datetime,
    end: str | datetime,
    seed: int = 0,
    funding_interval_hours: float | Sequence[float] = 8.0,
) -> pl.DataFrame:
    """Simulate funding settlements in `[start, end)`.

    Args:
        symbols: perp symbols (returned as given).
        start: window start (UTC, whole minute).
        end: window end (UTC, whole minute), exclusive.
        seed: the simulation seed.
        funding_interval_hours: hours between settlements, one for all symbols or one per symbol.

    Returns:
        Columns `funding_time` (Datetime us UTC), `symbol`, `funding_rate` (fraction per interval),
        `interval_hours`, `mark_price` (perp price at settlement), sorted by `symbol` then time.
        Every settlement has `interval_hours` set (the simulator knows the previous one even at the
        window start).
    """
    syms = _check_symbols(symbols)
    ivs = _intervals(syms, funding_interval_hours)
    k0, k1 = _window(start, end, 1)
    frames = []
    for s, iv in zip(syms, ivs, strict=True):
        ih = _check_interval(iv)
        rates = _funding_hourly(seed, _base(s), float(ih))
        h_first = -(-k0 // _MIN_PER_HOUR)
        hours = np.arange(h_first, -(-k1 // _MIN_PER_HOUR))
        hours = hours[~np.isnan(rates[hours])] if hours.size else hours
        perp = np.empty(hours.shape[0])
        if hours.size:
            k_first, k_last = int(hours[0]) * 60, int(hours[-1]) * 60
            p = _minute_paths(s, k_first, k_last, seed, ih, _S_BRIDGE)
            perp = p.perp[(hours - hours[0]) * 60]
        frames.append(
            pl.DataFrame(
                [
                    _ts_series("funding_time", hours * _MIN_PER_HOUR),
                    pl.Series("symbol", [s] * hours.shape[0], dtype=pl.String),
                    pl.Series("funding_rate", rates[hours]),
                    pl.Series("interval_hours", np.full(hours.shape[0], float(ih))),
                    pl.Series("mark_price", np.round(perp, 8)),
                ]
            )
        )
    return pl.concat(frames)


def simulate_order_book(
    symbols: Sequence[str],
    start: str | datetime,
    end: str | datetime,
    interval: str | timedelta = "1h",
    seed: int = 0,
) -> pl.DataFrame:
    """Simulate order-book snapshots (top of book and depth bands) every `interval` in `[start,
    end)`.

    Args:
        symbols: perp symbols; each yields a "spot" and a "perp" row per snapshot (symbol as given).
        start: first snapshot time (UTC), a multiple of `interval` from midnight.
        end: end of the window (exclusive).
        interval: time between snapshots.
        seed: the simulation seed.

    Returns:
        Columns `ts`, `symbol`, `market`, `best_bid`, `best_ask`, `mid`, `spread_bps`,
        `bid_depth_10bps_usd`, `ask_depth_10bps_usd`, `bid_depth_50bps_usd`, `ask_depth_50bps_usd`.
    """
    syms = _check_symbols(symbols)
    im = bar_minutes(interval)
    k0, k1 = _window(start, end, im)
    frames = []
    for s in syms:
        n_streams = _S_BRIDGE if im % _MIN_PER_HOUR == 0 else _S_BRIDGE + 1
        p = _minute_paths(s, k0, k1, seed, 8.0, n_streams)
        idx = np.arange(0, k1 - k0, im)
        for market, mid, depth, spread in (
            ("spot", p.spot, p.spot_depth_usd, p.spot_spread_bps),
            ("perp", p.perp, p.perp_depth_usd, p.spread_bps),
        ):
            half = mid[idx] * spread[idx] * _BP / 2.0
            d10 = depth[idx]
            # Asymmetry: books lean to the bid in rallies and thin on the bid in sell-offs.
            tilt = 0.15 * p.sentiment[idx]
            frames.append(
                pl.DataFrame(
                    [
                        _ts_series("ts", p.minutes[idx]),
                        pl.Series("symbol", [s] * idx.shape[0], dtype=pl.String),
                        pl.Series("market", [market] * idx.shape[0], dtype=pl.String),
                        pl.Series("best_bid", mid[idx] - half),
                        pl.Series("best_ask", mid[idx] + half),
                        pl.Series("mid", mid[idx]),
                        pl.Series("spread_bps", spread[idx]),
                        pl.Series("bid_depth_10bps_usd", d10 * (1.0 + tilt)),
                        pl.Series("ask_depth_10bps_usd", d10 * (1.0 - tilt)),
                        pl.Series("bid_depth_50bps_usd", d10 * 3.6 * (1.0 + tilt)),
                        pl.Series("ask_depth_50bps_usd", d10 * 3.6 * (1.0 - tilt)),
                    ]
                )
            )
    return pl.concat(frames).sort("symbol", "market", "ts")


def simulate_sentiment(start: str | datetime, end: str | datetime, seed: int = 0) -> pl.DataFrame:
    """Simulate the market-wide hourly sentiment index in `[start, end)`.

    The score stamped `ts` is the index computed from information up to `ts` and published at `ts`;
    the market frame's `sentiment` at a bar close is the latest score published at or before it.

    Args:
        start: window start (UTC).
        end: window end (UTC), exclusive.
        seed: the simulation seed.

    Returns:
        Columns `ts`, `published_at` (Datetime us UTC), `score` (in [-1, 1]), hourly.
    """
    k0, k1 = _window(start, end, 1)
    hours = np.arange(-(-k0 // _MIN_PER_HOUR), -(-k1 // _MIN_PER_HOUR))
    score = _market(seed).sentiment[np.minimum(hours, _N_HOURS - 1)]
    ts = _ts_series("ts", hours * _MIN_PER_HOUR)
    return pl.DataFrame([ts, ts.alias("published_at"), pl.Series("score", score)])


def regime_names() -> tuple[str, ...]:
    """Names of the simulator's market regimes, indexed by regime id."""
    return _REGIME_NAMES
