"""Flash-event paths and the liquidity that goes with them (v1), for the accounting kernel.

An event is drawn on one bar (`start_flash`) and from then on is a pure function of its age and of
parameters drawn at its start, so the observation can rebuild the level `lag` bars ago for its
lagged returns and the whole path is reproducible from the episode key:

- deepening: the spot level ramps `(age + 1) / D` up to 1 (the trough) over `D` bars, `D` drawn in
  `1..flash_deepen_bars_max`; the basis level ramps over `D + W` bars, `W` drawn in
  `0..flash_basis_widen_bars_max`, so the basis can keep widening after it first blows out;
- recovery: after the trough the level is `r * slow^k + (1 - r) * fast^k` (k bars after the trough):
  the part `1 - r` recovers with `flash_halflife_bars`, the residual `r` (drawn from
  `1 - flash_recovery_max .. 1 - flash_recovery_min`, independently for the spot and the basis)
  lingers with `flash_residual_halflife_bars`; `r > 0` is a partial recovery, `r < 0` an overshoot
  (the price, or the basis, ends past where it started).

Prices: `spot = data * (1 + g_s * ls)`, `perp = data * (1 + g_s * ls + (g_p - g_s) * lb)` with the
spot and perp gaps `g_s`, `g_p` drawn at the start (`A_FL_S`, `A_FL_P`). Liquidity follows the
moment: with `m = min(max(|ls|, |lb|), 1)`, depth is `data * (1 - flash_depth_thinning * m)` and
the spread `data * (1 + (flash_spread_mult - 1) * m) + flash_spread_basis * |basis gap| in bp`, so
crossing the book mid-event costs about as much as the dislocation it would trade.

The kernel inlines these functions, and numba's on-disk cache only tracks the file of the function
it compiles: after editing this module, delete `carry_env/__pycache__/*.nbi` and `*.nbc` (or set
`NUMBA_CACHE_DIR` to a fresh folder) so the kernel recompiles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba as nb
import numpy as np

from carry_env import kernel as k  # circular: kernel imports this module; names resolve at compile
from carry_env.config import (
    C_FLASH_BASIS,
    C_FLASH_DECAY,
    C_FLASH_DEEPEN_MAX,
    C_FLASH_DEPTH,
    C_FLASH_RECOVERY_MAX,
    C_FLASH_RECOVERY_MIN,
    C_FLASH_RESID_DECAY,
    C_FLASH_SIZE,
    C_FLASH_SPREAD_BASIS,
    C_FLASH_SPREAD_MULT,
    C_FLASH_WIDEN_MAX,
)


def _jit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """numba.njit with the kernel's options (see `carry_env.kernel._jit`)."""
    jit = nb.njit(cache=True, error_model="numpy", _nrt=False, **options)  # type: ignore[call-overload]
    return jit  # type: ignore[no-any-return]


FLASH_END = 1e-3
"""An event ends once it is past both troughs and both levels are below this."""

# Streams of the flash draws (per env): 2 start and 3 direction are the kernel's; these follow.
_S_DEEPEN = 4
_S_WIDEN = 5
_S_RESID_S = 6
_S_RESID_B = 7


@_jit(inline="always")
def path_level(age: int, deepen: float, resid: float, fast: float, slow: float) -> float:
    """Level of a flash path at `age` bars after its start: 0 before it, a ramp to 1 over `deepen`
    bars, then `resid * slow^k + (1 - resid) * fast^k` at k bars past the trough."""
    if age < 0:
        return 0.0
    d = int(deepen)
    if age < d:
        return (age + 1.0) / d
    kk = age - d + 1
    return resid * slow**kk + (1.0 - resid) * fast**kk


@_jit(inline="always")
def _draw_int(u: float, hi: float) -> float:
    # Uniform integer in 1..hi (hi >= 1) from a uniform in [0, 1).
    return float(min(int(u * hi) + 1, int(hi)))


@_jit()  # out of line: runs at an event's first bar only (see `kernel._jit`)
def start_flash(
    b: int, t1: int, key: int, cfg: np.ndarray, fs: np.ndarray, as_: np.ndarray
) -> None:
    """Draw a new flash event starting at bar t1 into env b's state (age 0 is bar t1)."""
    fs[b, k.F_FLASH_ON] = 1.0
    deepen = _draw_int(k.uniform(key, t1, _S_DEEPEN), max(cfg[C_FLASH_DEEPEN_MAX], 1.0))
    widen = _draw_int(k.uniform(key, t1, _S_WIDEN), cfg[C_FLASH_WIDEN_MAX] + 1.0) - 1.0
    lo = 1.0 - cfg[C_FLASH_RECOVERY_MAX]
    hi = 1.0 - cfg[C_FLASH_RECOVERY_MIN]
    fs[b, k.F_FL_DEEPEN] = deepen
    fs[b, k.F_FL_WIDEN] = deepen + widen
    fs[b, k.F_FL_RESID_S] = lo + (hi - lo) * k.uniform(key, t1, _S_RESID_S)
    fs[b, k.F_FL_RESID_B] = lo + (hi - lo) * k.uniform(key, t1, _S_RESID_B)
    direction = -1.0 if k.uniform(key, t1, 3) < 0.7 else 1.0
    for i in range(as_.shape[1]):
        size = cfg[C_FLASH_SIZE] * (0.5 + k.uniform(key, t1, k._S_FLASH + 2 * i))
        overshoot = 1.0 + cfg[C_FLASH_BASIS] * k.uniform(key, t1, k._S_FLASH + 2 * i + 1)
        as_[b, i, k.A_FL_S] = direction * min(size, 0.9)
        as_[b, i, k.A_FL_P] = direction * min(size * overshoot, 0.95)
    set_levels(b, 0, cfg, fs)


@_jit(inline="always")
def set_levels(b: int, age: int, cfg: np.ndarray, fs: np.ndarray) -> None:
    """Write env b's spot and basis levels at `age` into its state."""
    fast = cfg[C_FLASH_DECAY]
    slow = cfg[C_FLASH_RESID_DECAY]
    fs[b, k.F_FLASH_LEVEL] = path_level(
        age, fs[b, k.F_FL_DEEPEN], fs[b, k.F_FL_RESID_S], fast, slow
    )
    fs[b, k.F_FL_BLEVEL] = path_level(age, fs[b, k.F_FL_WIDEN], fs[b, k.F_FL_RESID_B], fast, slow)


@_jit(inline="always")
def age_flash(b: int, cfg: np.ndarray, fs: np.ndarray, is_: np.ndarray) -> None:
    """Move env b's running flash event one bar on; end it once it has faded."""
    if fs[b, k.F_FLASH_ON] == 0.0:
        return
    is_[b, k.I_FLASH_AGE] += 1
    age = is_[b, k.I_FLASH_AGE]
    set_levels(b, age, cfg, fs)
    past = age >= fs[b, k.F_FL_WIDEN]
    if past and abs(fs[b, k.F_FLASH_LEVEL]) < FLASH_END and abs(fs[b, k.F_FL_BLEVEL]) < FLASH_END:
        fs[b, k.F_FLASH_ON] = 0.0
        fs[b, k.F_FLASH_LEVEL] = 0.0
        fs[b, k.F_FL_BLEVEL] = 0.0
        is_[b, k.I_FLASH_AGE] = 0


@_jit(inline="always")
def lagged_spot_level(b: int, age: int, lag: int, cfg: np.ndarray, fs: np.ndarray) -> float:
    """Env b's spot level `lag` bars before its current bar (0 before the event started)."""
    return path_level(
        age - lag, fs[b, k.F_FL_DEEPEN], fs[b, k.F_FL_RESID_S], cfg[C_FLASH_DECAY],
        cfg[C_FLASH_RESID_DECAY],
    )  # fmt: skip


@_jit(inline="always")
def moment(fs: np.ndarray, b: int) -> float:
    """How deep env b is in its event, in [0, 1]: drives depth thinning and spread widening."""
    return min(max(abs(fs[b, k.F_FLASH_LEVEL]), abs(fs[b, k.F_FL_BLEVEL])), 1.0)


@_jit(inline="always")
def flash_spread(
    b: int, i: int, spread_bps: float, cfg: np.ndarray, fs: np.ndarray, as_: np.ndarray
) -> float:
    """Spread (bp) of asset i in env b during its event: the data's spread widened by the moment,
    plus `flash_spread_basis` times the basis gap in bp."""
    m = moment(fs, b)
    gap_bp = abs((as_[b, i, k.A_FL_P] - as_[b, i, k.A_FL_S]) * fs[b, k.F_FL_BLEVEL]) * 1e4
    return (
        spread_bps * (1.0 + (cfg[C_FLASH_SPREAD_MULT] - 1.0) * m)
        + cfg[C_FLASH_SPREAD_BASIS] * gap_bp
    )


@_jit(inline="always")
def flash_prices(
    b: int,
    i: int,
    s: float,
    p: float,
    sd: float,
    pd: float,
    cfg: np.ndarray,
    fs: np.ndarray,
    as_: np.ndarray,
) -> tuple[float, float, float, float]:
    """(spot, perp, spot depth, perp depth) of asset i in env b during its event, from the data's
    values."""
    ls = fs[b, k.F_FLASH_LEVEL]
    gs = as_[b, i, k.A_FL_S]
    thin = 1.0 - cfg[C_FLASH_DEPTH] * moment(fs, b)
    s2 = s * (1.0 + gs * ls)
    p2 = p * (1.0 + gs * ls + (as_[b, i, k.A_FL_P] - gs) * fs[b, k.F_FL_BLEVEL])
    return s2, p2, sd * thin, pd * thin


@_jit(inline="always")
def flash_mark(b: int, i: int, mark: float, fs: np.ndarray, as_: np.ndarray) -> float:
    """Mark price of asset i in env b during its event, from the data's mark: moved by the spot
    gap only (the index), not by the perp's extra gap (the basis blow-out of the last price)."""
    return mark * (1.0 + as_[b, i, k.A_FL_S] * fs[b, k.F_FLASH_LEVEL])
