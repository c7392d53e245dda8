"""Mutations of the observation's time alignment (carry_env/kernel.py `write_obs`): a field that
reads the next bar's market data. Each shows only at the last bar of the data the env holds, so
the look-ahead test catches it by cutting the frame right after the compared bar (extra 0)."""

from __future__ import annotations

from tests.mutation.spec import Mutation

_KERNEL = "carry_env/kernel.py"
_NEXT = "min(t + 1, mkt.shape[0] - 1)"
_LOOK_AHEAD = (
    "tests/env/test_anomalies.py::test_observation_is_unchanged_when_the_data_is_cut_after_t",
)

MUTATIONS: list[Mutation] = [
    Mutation(
        id="obs-funding-print-of-next-bar",
        path=_KERNEL,
        old="obs[b, o + 8] = as_[b, i, A_R1] * 1e4",
        new=f"obs[b, o + 8] = mkt[{_NEXT}, i, M_LAST1] * 1e4",
        tests=_LOOK_AHEAD,
        note="the last-funding field shows the print of the settlement at the next bar",
    ),
    Mutation(
        id="obs-vol-of-next-bar",
        path=_KERNEL,
        old="obs[b, o + 5] = mkt[t, i, M_VOL]",
        new=f"obs[b, o + 5] = mkt[{_NEXT}, i, M_VOL]",
        tests=_LOOK_AHEAD,
        note="realised volatility includes the next bar's return",
    ),
    Mutation(
        id="obs-depth-of-next-bar",
        path=_KERNEL,
        old="log_depth = mkt[t, i, M_LOG_DEPTH]",
        new=f"log_depth = mkt[{_NEXT}, i, M_LOG_DEPTH]",
        tests=_LOOK_AHEAD,
        note="the book depth field reads the next bar's snapshot",
    ),
    Mutation(
        id="obs-spot-level-of-next-bar",
        path=_KERNEL,
        old="obs[b, o + 0] = (mkt[t, i, M_SPOT_SMA] + ls) * 100.0",
        new=f"obs[b, o + 0] = (mkt[{_NEXT}, i, M_SPOT_SMA] + ls) * 100.0",
        tests=_LOOK_AHEAD,
        note="the spot-over-SMA field reads the next bar's price",
    ),
]
