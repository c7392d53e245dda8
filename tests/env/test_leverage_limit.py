"""`max_leverage_t` falls as realised volatility rises (README claim), floored at `min_leverage`."""

from __future__ import annotations

import numpy as np
import pytest

from carry_env import kernel as k
from carry_env.config import EnvConfig
from carry_env.derive import build_tensor
from carry_env.market import MarketData

BAR_S = 900.0
REGIMES = (0.0005, 0.004, 0.008, 0.05)
"""Per-bar absolute log return of four 300-bar regimes (alternating sign): calm to wild."""


def _market() -> MarketData:
    rets = np.concatenate([r * (-1.0) ** np.arange(300) for r in REGIMES])
    spot = 100.0 * np.exp(np.cumsum(rets))[:, None]
    t = spot.shape[0]
    nan = np.full((t, 1), np.nan)
    return MarketData(
        symbols=("BTC/USDT:USDT",),
        ts=np.arange(t, dtype=np.int64) * int(BAR_S * 1e9),
        bar_seconds=BAR_S,
        spot=spot,
        perp=spot.copy(),
        funding=nan,
        spot_depth=nan,
        perp_depth=nan,
        spread_bps=nan,
        sentiment=nan,
        stale=np.zeros((t, 1), dtype=bool),
        mark=nan,
        perp_high=nan,
        perp_low=nan,
        spot_high=nan,
        spot_low=nan,
        features=np.zeros((t, 1, 0)),
        feature_names=(),
    )


def test_max_leverage_falls_as_volatility_rises() -> None:
    config = EnvConfig()
    mkt = build_tensor(_market(), config).mkt[:, 0]
    # The last bar of each regime: its 24 h (96-bar) window holds that regime only.
    ends = [300 * (i + 1) - 1 for i in range(len(REGIMES))]
    vol = mkt[ends, k.M_VOL]
    maxlev = mkt[ends, k.M_MAXLEV]
    # Annualised vol of +-r a bar: about r * sqrt(bars a year) (35,040 fifteen-minute bars).
    assert vol == pytest.approx(np.array(REGIMES) * np.sqrt(365.25 * 96), rel=0.02)
    # Calm (vol ~ 9 %): the full cap; then cap x 0.6 / vol; the wildest regime hits the floor.
    assert maxlev[0] == config.leverage_cap
    assert maxlev[1:3] == pytest.approx(config.leverage_cap * 0.6 / vol[1:3], rel=1e-12)
    assert maxlev[1] > maxlev[2] > maxlev[3]
    assert maxlev[3] == config.min_leverage


def test_without_the_limit_max_leverage_is_the_cap() -> None:
    config = EnvConfig(leverage_limit=False)
    mkt = build_tensor(_market(), config).mkt[:, 0]
    assert np.all(mkt[:, k.M_MAXLEV] == config.leverage_cap)
