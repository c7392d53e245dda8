"""Curated mutations of the anomaly mechanics (flash paths, liquidity, outages, halts); each checked
by hand to fail at least one of its tests."""

from __future__ import annotations

from tests.mutation.spec import Mutation

_AN = "carry_env/anomalies.py"
_K = "carry_env/kernel.py"
_T = "tests/env/test_anomalies.py"

MUTATIONS: list[Mutation] = [
    Mutation(
        id="anomaly-flash-prices",
        path=_AN,
        old="s2 = s * (1.0 + gs * ls)",
        new="s2 = s",
        tests=(_T,),
        note="a flash event no longer moves the spot mark",
    ),
    Mutation(
        id="anomaly-flash-basis",
        path=_AN,
        old="p2 = p * (1.0 + gs * ls + (as_[b, i, k.A_FL_P] - gs) * fs[b, k.F_FL_BLEVEL])",
        new="p2 = p * (1.0 + gs * ls)",
        tests=(_T,),
        note="the perp gaps with spot: the basis never blows out",
    ),
    Mutation(
        id="anomaly-flash-depth",
        path=_AN,
        old="return s2, p2, sd * thin, pd * thin",
        new="return s2, p2, sd, pd",
        tests=(_T,),
        note="books keep their depth through a flash event",
    ),
    Mutation(
        id="anomaly-flash-spread",
        path=_AN,
        old="spread_bps * (1.0 + (cfg[C_FLASH_SPREAD_MULT] - 1.0) * m)",
        new="spread_bps",
        tests=(_T,),
        note="the spread does not widen with the moment of the event",
    ),
    Mutation(
        id="anomaly-flash-spread-basis",
        path=_AN,
        old="+ cfg[C_FLASH_SPREAD_BASIS] * gap_bp",
        new="+ cfg[C_FLASH_SPREAD_BASIS] * 0.0",
        tests=(_T,),
        note="the spread ignores the basis gap: trading the dislocation is cheap again",
    ),
    Mutation(
        id="anomaly-flash-spread-fills",
        path=_K,
        old="spread = effective_spread(b, i, t, mkt, fs, as_, cfg)\n        dq_s",
        new="spread = mkt[t, i, M_SPREAD]\n        dq_s",
        tests=(_T,),
        note="simulated fills pay the data's spread while the observation shows the wide one",
    ),
    Mutation(
        id="anomaly-flash-no-deepening",
        path=_AN,
        old="    if age < d:\n",
        new="    if age < 1:\n",
        tests=(_T,),
        note="the trough is the first bar again (v0): the reversion is visible and certain",
    ),
    Mutation(
        id="anomaly-flash-full-recovery",
        path=_AN,
        old="return resid * slow**kk + (1.0 - resid) * fast**kk",
        new="return fast**kk",
        tests=(_T,),
        note="every event recovers exactly, never partly or past its start",
    ),
    Mutation(
        id="anomaly-flash-duration",
        path=_AN,
        old="    is_[b, k.I_FLASH_AGE] += 1\n",
        new="    is_[b, k.I_FLASH_AGE] += 0\n",
        tests=(_T,),
        note="a flash event never ages: it stays at its first bar's level",
    ),
    Mutation(
        id="anomaly-flash-lagged-level",
        path=_AN,
        old="age - lag, fs[b, k.F_FL_DEEPEN]",
        new="age, fs[b, k.F_FL_DEEPEN]",
        tests=(_T,),
        note="the observation's lagged returns read the current level, not the one lag bars ago",
    ),
    Mutation(
        id="anomaly-outage-freeze",
        path=_K,
        old="outage = is_[b, I_OUTAGE] > 0 and not force_market",
        new="outage = False",
        tests=(_T, "tests/env/test_env.py::test_feed_outage_freezes_market_block"),
        note="a feed outage no longer freezes the market block",
    ),
    Mutation(
        id="anomaly-outage-live-marks",
        path=_K,
        old="vs = as_[b, i, A_SEEN_S]",
        new="vs = s",
        tests=(_T,),
        note="exposures show live spot marks during a feed outage",
    ),
    Mutation(
        id="anomaly-halt-blocks-fills",
        path=_K,
        old="    if is_[b, I_HALT] > 0 or equity <= 0.0:\n        return\n",
        new="    if equity <= 0.0:\n        return\n",
        tests=("tests/env/test_kernel.py::test_halt_blocks_fills",),
        note="orders fill while the venue is halted",
    ),
]
