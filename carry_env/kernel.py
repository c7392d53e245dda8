"""The accounting kernel: one numba implementation of every cash flow, serving the single and the
batched env.

A step of env `b` is three phases, each a function over one env so the fused sim kernel and the
split path (an injected executor between planning and applying) run the same code:

1. `plan_env`: target positions from the action (leverage clamp, reverse-carry flag, halts,
   rebalance band) -> signed order quantities per leg.
2. `sim_fill_env`: the simulated executor: full fills at mid, charged fees, half-spread, depth
   impact and tick.
3. `apply_env`: book fills, move the clock one bar, mark to market, settle funding, accrue borrow,
   check margin (at the close and the bar's adverse extremes: each isolated perp and the isolated
   spot margin account, or the unified account), top up isolated collateral from free cash
   (auto-add margin, when on) and liquidate, close a bankrupt account, compute the reward, write
   info and the next observation.

Accounting (all in quote currency): `equity = cash + sum(spot_qty * spot_price) + sum(collateral)`.
Perp variation margin and funding are booked to the isolated collateral (unified mode: to cash), so
every step `equity[t+1] - equity[t] == funding + price_pnl - fees - slippage - borrow -
liquidation_loss + insurance_fund` holds exactly (`insurance_fund` >= 0: the part of a gap through
the bankruptcy price that the venue's insurance fund absorbs, and a bankrupt account's shortfall;
auto-add margin moves cash into collateral, which changes neither equity nor any term).
Funding and margin use the mark price (`mark_price`); the books and `price_pnl` use the last price.

State and outputs are arrays indexed by the constants below; the `CarryTradeEnv` docstring documents
them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic

from carry_env import anomalies as an
from carry_env.config import (
    C_ALLOW_REVERSE,
    C_ANOMALIES,
    C_AUTO_ADD,
    C_AUTO_ADD_TARGET,
    C_AUTO_ADD_TRIGGER,
    C_BAND,
    C_BAR_YEARS,
    C_BORROW,
    C_DD_LIMIT,
    C_DD_PENALTY,
    C_DD_THRESHOLD,
    C_FEES,
    C_FUNDING,
    C_HALT_STEPS,
    C_INITIAL_CASH,
    C_LEVERAGE_CAP,
    C_LIQ_ENDS,
    C_LIQ_FEE,
    C_LIQ_HAIRCUT,
    C_LIQ_PENALTY,
    C_MAKER_FRACTION,
    C_MARGIN,
    C_MIN_ORDER,
    C_MMR,
    C_OUTAGE_STEPS,
    C_P_FLASH,
    C_P_HALT,
    C_P_OUTAGE,
    C_P_SPIKE,
    C_PERP_LEVERAGE,
    C_PERP_MAKER,
    C_PERP_TAKER,
    C_REWARD_SCALE,
    C_SLIP_K,
    C_SLIP_MODEL,
    C_SLIPPAGE,
    C_SPIKE_BPS,
    C_SPOT_BORROW,
    C_SPOT_HAIRCUT,
    C_SPOT_MAKER,
    C_SPOT_MMR,
    C_SPOT_TAKER,
    C_SPREAD,
    C_TICK_BPS,
    C_TURNOVER_PENALTY,
    C_UNIFIED,
    C_USDT_BORROW,
    C_VOL_BARS,
    C_VOL_DECAY,
    C_VOL_PENALTY,
)

# Parallel batches run on numba's OpenMP layer with bounded spinning: GNU OpenMP's default spin
# (300k iterations) starves the Python thread on a busy 2-core machine (0.8M env-steps/s at B=1024),
# while 10k spins keep the idle-machine speed (9.4M) and hold 4.5M under load; the workqueue layer
# gives 3.2M idle. Set before libgomp loads; a user's own settings win.
if "NUMBA_THREADING_LAYER" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")


def _jit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """numba.njit as every kernel function is compiled.

    - `_nrt=False` (a private numba switch) turns reference counting off: nothing is allocated, and
      the atomic increments on the shared state arrays cost 3x the step time serially and serialise
      threads.
    - `error_model="numpy"`: divisions are not checked for zero (the inputs are validated instead).
    - `cache=True`: compiled once per machine, then loaded from `__pycache__`.

    Functions on every step's path are `inline="always"` (numba-IR inlining: a call passes each
    array as a struct of its fields, and out of line the fused step ran at half its speed). Every
    inlined copy is type-inferred and optimised again, though, which made the fused step the
    whole cold compile (154 s here): what only a liquidation, a bankruptcy, an auto-add or a
    flash event's start runs is compiled out of line (`@_jit()`), once, at the same speed for the
    steps that do not take it (the fused step now compiles in 44 s; README, carry_env section).
    """
    jit = nb.njit(cache=True, error_model="numpy", _nrt=False, **options)  # type: ignore[call-overload]
    return jit  # type: ignore[no-any-return]


def _prefetch_typer(typingctx: Any, arr: Any, index: Any) -> Any:
    # Typing and code of `_prefetch`: `prefetcht0` of the cache line holding arr[index] (`index`: a
    # tuple of arr.ndim ints), a hint that reads nothing into the program and changes no value.
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        aryty, indty = sig.args
        ary = context.make_array(aryty)(context, builder, args[0])
        indices = cgutils.unpack_tuple(builder, args[1], count=len(indty))
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, indices, wraparound=False)
        i32 = ir.IntType(32)
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # read, keep in every cache level, data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return nb.types.void(arr, index), codegen


_prefetch: Callable[[np.ndarray, tuple[int, ...]], None] = intrinsic(_prefetch_typer)  # type: ignore[assignment]
"""Prefetch the cache line of `arr[index]` (inside jitted code only)."""


PREFETCH_AHEAD = 8
"""The batched step prefetches the market rows of the env this many places ahead (see
`_prefetch_rows`)."""


# ---- market tensor channels: mkt[T, N, M_*] (built by carry_env.derive) ----
M_SPOT = 0
M_PERP = 1
M_FUND = 2  # rate settled at this bar, NaN where none
M_SDEPTH = 3
M_PDEPTH = 4
M_SPREAD = 5
M_SENT = 6
M_STALE = 7
M_SPOT_SMA = 8  # log(spot / 1-day SMA)
M_PERP_SMA = 9
M_RET1H = 10  # log return over ~1 h
M_RET4H = 11
M_VOL = 12  # realised vol, annualised
M_BARVOL = 13  # realised vol per bar
M_MAXLEV = 14
M_HRS_TO_FUND = 15
M_LAST1 = 16  # last three settled rates as of this bar (0 before the first)
M_LAST2 = 17
M_LAST3 = 18
M_LAG1H = 19  # bars in the 1 h / 4 h returns (constant per tensor; stored for the kernel)
M_LAG4H = 20
M_RET1 = 21  # 1-bar log return of spot (0 at the first bar)
M_LOG_DEPTH = 22  # log10(min(spot depth, perp depth) / 1e6)
M_MARK = 23  # mark price of the perp: the frame's mark_price, else the perp price (no anomalies)
M_HIGH_R = 24  # perp high / perp close of the bar (1 where the frame has no high)
M_LOW_R = 25  # perp low / perp close of the bar (1 where the frame has no low)
M_SPOT_HIGH_R = 26  # spot high / spot close of the bar (1 where the frame has no high)
M_SPOT_LOW_R = 27  # spot low / spot close of the bar (1 where the frame has no low)
N_MKT = 28

# ---- per-env float state fs[B, F_*] ----
F_CASH = 0
F_EQUITY = 1
F_PEAK = 2
F_RET_VAR = 3  # exponentially weighted sum of squared horizon returns
F_FLASH_LEVEL = 4  # spot level of the running flash event (1 at its trough); 0 when none
F_MARGIN_RATIO = 5
F_FLASH_ON = 6  # 1.0 while a flash event runs
F_FL_BLEVEL = 7  # basis level of the running flash event
F_FL_DEEPEN = 8  # parameters drawn at its start: bars to the spot trough, to the basis trough,
F_FL_WIDEN = 9
F_FL_RESID_S = 10  # and the unrecovered residuals of spot and basis (carry_env.anomalies)
F_FL_RESID_B = 11
F_VOL_ANCHOR = 12  # equity at the last volatility-horizon boundary
F_VOL_W = 13  # exponentially weighted count of horizon returns (bias correction of F_RET_VAR)
N_FS = 14

# ---- per-env, per-asset float state as_[B, N, A_*] ----
A_SPOT = 0
A_PERP = 1
A_COLL = 2
A_SPOT_AVG = 3
A_PERP_AVG = 4
A_FL_S = 5  # flash gap of spot (signed fraction) at the event's trough
A_FL_P = 6
A_R1 = 7  # last three settled funding rates as the env saw them (spikes included)
A_R2 = 8
A_R3 = 9
A_DQ_S = 10  # planned order quantities of this step
A_DQ_P = 11
A_FQ_S = 12  # filled quantities (executor output)
A_FQ_P = 13
A_FEE = 14  # executor costs for this asset this step
A_SPREAD_COST = 15
A_IMPACT = 16
A_PX_S = 17  # effective prices at the start of the step (after trading, before the clock moves)
A_PX_P = 18
A_MR = 19  # isolated margin ratio of the perp leg (inf when flat; unified: the account's ratio)
A_SEEN_S = 20  # last prices the observation saw (they stand in for the marks during an outage)
A_SEEN_P = 21
A_MR_BAR = 22  # margin ratio at the bar's adverse extreme (inf when flat; unified: the account's)
N_AS = 23

# ---- per-env int state is_[B, I_*] ----
I_T = 0
I_END = 1
I_HALT = 2  # bars of halt left, including the current one
I_OUTAGE = 3
I_FLASH_AGE = 4
I_KEY = 5  # per-episode key of the counter-based anomaly RNG
I_CLAMPED = 6  # planning clamped the action this step
N_IS = 7

# ---- info[B, K_*] (env-major: a [K, B] layout puts one env's writes 4 KiB apart and stalls on
# aliasing) ----
K_EQUITY = 0
K_CASH = 1
K_FUNDING = 2
K_PRICE = 3
K_FEES = 4
K_SLIPPAGE = 5
K_SPREAD_COST = 6
K_IMPACT = 7
K_BORROW = 8
K_LIQ_LOSS = 9
K_MARGIN_RATIO = 10
K_DRAWDOWN = 11
K_LEVERAGE = 12
K_TURNOVER = 13
K_UPNL = 14
K_R_CARRY = 15
K_R_BASIS = 16
K_R_COSTS = 17
K_R_RISK = 18
K_MAX_LEVERAGE = 19
K_INSURANCE = (
    20  # loss beyond the liquidated collateral (or, unified, the equity), paid by the venue
)
K_MARGIN_ADDED = 21  # cash moved into isolated collateral by auto-add margin (a transfer)
N_INFO = 22
INFO_NAMES = (
    "equity",
    "cash",
    "funding_pnl",
    "price_pnl",
    "fees",
    "slippage",
    "spread_cost",
    "impact_cost",
    "borrow_cost",
    "liquidation_loss",
    "margin_ratio",
    "drawdown",
    "leverage",
    "turnover",
    "unrealised_pnl",
    "reward_carry",
    "reward_basis",
    "reward_costs",
    "risk_penalty",
    "max_leverage",
    "insurance_fund",
    "margin_added",
)

# ---- flags[B, G_*] (bool; a separate contiguous array, so batched infos copy it in one piece) ----
G_LIQUIDATED = 0
G_HALTED = 1
G_STALE = 2
G_FLASH = 3
G_SPIKE = 4
G_CLAMPED = 5
G_BANKRUPT = 6
G_DD_BREACH = 7
N_FLAGS = 8
FLAG_NAMES = (
    "liquidated",
    "halted",
    "stale",
    "flash_event",
    "funding_spike",
    "clamped",
    "bankrupt",
    "drawdown_breach",
)

# ---- legs[B, L_*, N]: positions after the step (spot qty, perp qty, isolated collateral) ----
L_SPOT = 0
L_PERP = 1
L_COLL = 2
N_LEGS = 3

# ---- observation layout ----
OBS_ASSET_MARKET = 15
OBS_ASSET_PORTFOLIO = 4
OBS_GLOBAL = 11
MARGIN_RATIO_CAP = 1.0e6
SPOT_TRANSFER_LEVEL = 2.0
"""Auto-add margin moves cash out of the spot margin account only while that account stays at this
multiple of its maintenance (margin venues allow transfers out only well above the liquidation
level: Binance cross margin at a margin level of 2)."""
OBS_LIMIT = 1.0e6
"""Observations are clipped to +-OBS_LIMIT (user features or near-zero equity could exceed it)."""

# Stream numbers of the anomaly RNG: 0 halt, 1 outage, 2 flash start, 3 flash direction, then per
# asset.
_S_FLASH = 1_000
_S_SPIKE = 100_000

_U64_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_U64_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_U64_MIX2 = np.uint64(0x94D049BB133111EB)
_U64_STREAM = np.uint64(0xD1B54A32D192ED03)


@_jit(inline="always")
def uniform(key: int, t: int, stream: int) -> float:
    """Counter-based uniform in [0, 1): splitmix64 of (episode key, bar, stream); stateless and
    reproducible."""
    z = np.uint64(key) + np.uint64(t + 1) * _U64_GOLDEN + np.uint64(stream + 1) * _U64_STREAM
    z = (z ^ (z >> np.uint64(30))) * _U64_MIX1
    z = (z ^ (z >> np.uint64(27))) * _U64_MIX2
    z = z ^ (z >> np.uint64(31))
    return float(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@_jit(inline="always")
def leg_costs(
    notional: float,
    depth: float,
    spread_bps: float,
    maker_fee: float,
    taker_fee: float,
    cfg: np.ndarray,
) -> tuple[float, float, float]:
    """(fee, half-spread cost, impact + tick cost) of trading `notional` on one leg.

    The maker share pays the maker fee and no spread or impact; the taker share pays the taker fee,
    half the spread, impact `k * x / depth` (linear) or `k * sqrt(x / depth)` (sqrt) as a fraction
    of x, and the tick.
    """
    if notional <= 0.0:
        return 0.0, 0.0, 0.0
    mf = cfg[C_MAKER_FRACTION]
    taker = (1.0 - mf) * notional
    fee = 0.0
    if cfg[C_FEES] > 0.0:
        fee = mf * notional * maker_fee + taker * taker_fee
    spread_cost = 0.0
    if cfg[C_SPREAD] > 0.0:
        spread_cost = taker * spread_bps * 0.5e-4
    impact = 0.0
    if cfg[C_SLIPPAGE] > 0.0 and taker > 0.0:
        if cfg[C_SLIP_MODEL] == 0.0:
            frac = cfg[C_SLIP_K] * taker / depth
        else:
            frac = cfg[C_SLIP_K] * math.sqrt(taker / depth)
        impact = taker * (frac + cfg[C_TICK_BPS])
    return fee, spread_cost, impact


@_jit(inline="always")
def _funding_anomaly(rate: float, key: int, t: int, stream: int, spike: float) -> float:
    # Half the anomalies print a spike of either sign (magnitude in [0.5, 1] x spike), half flip the
    # sign of the scheduled print (a zero print becomes -1 bp).
    u = uniform(key, t, stream)
    if u < 0.5:
        sign = -1.0 if u < 0.25 else 1.0
        return sign * spike * (0.5 + 0.5 * uniform(key, t, stream + 1))
    return -rate if rate != 0.0 else -1e-4


@_jit(inline="always")
def _bounded(x: float) -> float:
    # Keeps the entries that are not bounded by construction (ratios to equity, user features) in
    # the space.
    return min(max(x, -OBS_LIMIT), OBS_LIMIT)


@_jit(inline="always")
def margin_buffer(ratio: float) -> float:
    """`1 - 1 / margin_ratio` clipped to [-1, 1]: 0 on the liquidation line, near 1 when safe, 1
    when
    flat.

    A division instead of a logarithm keeps the observation cheap; it is steepest near liquidation,
    where it matters.
    """
    if ratio <= 0.5:
        return -1.0
    return min(1.0 - 1.0 / ratio, 1.0)


@_jit(inline="always")
def _avg_entry(q: float, avg: float, dq: float, px: float) -> float:
    # Average entry price after trading dq at px: adds average in, reductions keep it, flips restart
    # it.
    nq = q + dq
    if nq == 0.0:
        return 0.0
    if q == 0.0 or q * dq > 0.0:
        return (q * avg + dq * px) / nq
    if q * nq > 0.0:
        return avg
    return px


@_jit(inline="always")
def effective_prices(
    b: int, i: int, t: int, mkt: np.ndarray, fs: np.ndarray, as_: np.ndarray, cfg: np.ndarray
) -> tuple[float, float, float, float]:
    """(spot, perp, spot depth, perp depth) of asset i at bar t as env b sees them, flash events
    included."""
    s = mkt[t, i, M_SPOT]
    p = mkt[t, i, M_PERP]
    sd = mkt[t, i, M_SDEPTH]
    pd = mkt[t, i, M_PDEPTH]
    if fs[b, F_FLASH_ON] > 0.0:
        return an.flash_prices(b, i, s, p, sd, pd, cfg, fs, as_)
    return s, p, sd, pd


@_jit(inline="always")
def effective_spread(
    b: int, i: int, t: int, mkt: np.ndarray, fs: np.ndarray, as_: np.ndarray, cfg: np.ndarray
) -> float:
    """Quoted spread (bp) of asset i at bar t as env b sees it, widened during a flash event."""
    spread = mkt[t, i, M_SPREAD]
    if fs[b, F_FLASH_ON] > 0.0:
        return an.flash_spread(b, i, spread, cfg, fs, as_)
    return spread


@_jit(inline="always")
def mark_price(
    b: int, i: int, t: int, mkt: np.ndarray, fs: np.ndarray, as_: np.ndarray, cfg: np.ndarray
) -> float:
    """Mark price of asset i's perp at bar t as env b sees it: what funding and margin use.

    The frame's `mark_price` where it has one for the bar, else the perp price of the data (the
    last price before anomalies). During a flash event the mark moves with the event's spot gap
    (the index follows spot) but not with the perp's extra gap, the basis blow-out: Binance's
    mark is the index plus a clamped moving average of the basis, which a few bars of dislocation
    of the last price barely move.
    """
    m = mkt[t, i, M_MARK]
    if fs[b, F_FLASH_ON] > 0.0:
        return an.flash_mark(b, i, m, fs, as_)
    return m


@_jit(inline="always")
def equity_of(
    b: int, t: int, mkt: np.ndarray, fs: np.ndarray, as_: np.ndarray, cfg: np.ndarray
) -> float:
    """Mark-to-market equity of env b at bar t: cash + spot holdings + perp collateral."""
    e = fs[b, F_CASH]
    for i in range(as_.shape[1]):
        s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
        e += as_[b, i, A_SPOT] * s + as_[b, i, A_COLL]
    return e


@_jit(inline="always")
def _target_weight(a: float, cfg: np.ndarray) -> float:
    # The action as planned: NaN (hold) passes through; otherwise clipped to [-1, 1], and negative
    # values become 0 when reverse carry is disabled.
    if math.isnan(a):
        return a
    a = min(max(a, -1.0), 1.0)
    if a < 0.0 and cfg[C_ALLOW_REVERSE] == 0.0:
        return 0.0
    return a


@_jit(inline="always")
def _pair_trades(
    dn_s: float, dn_p: float, closing: bool, spot: float, perp: float, threshold: float
) -> bool:
    """Whether a hedged pair is rebalanced: both legs trade or neither (no legging).

    The pair trades when either leg's notional change `dn_s` / `dn_p` reaches `threshold` (the
    larger of `min_order_usd` and `rebalance_band * equity`), or when it is being closed while
    either leg is still open. A basis move that shifts one leg past the band takes the other leg
    with it, so the book never ends a step hedged on one side only.
    """
    if closing:
        return spot != 0.0 or perp != 0.0
    return max(abs(dn_s), abs(dn_p)) >= threshold


@_jit(inline="always")
def plan_env(
    b: int,
    act: np.ndarray,
    mkt: np.ndarray,
    cfg: np.ndarray,
    fs: np.ndarray,
    as_: np.ndarray,
    is_: np.ndarray,
) -> None:
    """Turn env b's action into signed order quantities `as_[b, :, A_DQ_S / A_DQ_P]`.

    `act[b, i]` in [-1, 1] sets the hedged notional `size = a * equity * leverage_cap` (spot
    `+size/2`, perp `-size/2`); NaN means hold. The leverage budget `sum |size_i| / max_leverage_i
    <= equity` scales all traded assets down together when exceeded. The rebalance band and the
    minimum order apply to the hedged pair (`_pair_trades`): both legs trade or neither. Nothing
    trades while the venue is halted.
    """
    t = is_[b, I_T]
    n = as_.shape[1]
    is_[b, I_CLAMPED] = 0
    for i in range(n):
        as_[b, i, A_DQ_S] = 0.0
        as_[b, i, A_DQ_P] = 0.0
    equity = fs[b, F_EQUITY]
    if is_[b, I_HALT] > 0 or equity <= 0.0:
        return
    cap = cfg[C_LEVERAGE_CAP]
    used_hold = 0.0
    used_active = 0.0
    for i in range(n):
        s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
        a = _target_weight(act[b, i], cfg)
        maxlev = mkt[t, i, M_MAXLEV]
        if math.isnan(a):
            gross = abs(as_[b, i, A_SPOT] * s) + abs(as_[b, i, A_PERP] * p)
            used_hold += gross / maxlev
        else:
            used_active += abs(a) * equity * cap / maxlev
    scale = 1.0
    budget = equity - used_hold
    if used_active > budget and used_active > 0.0:
        scale = max(budget, 0.0) / used_active
        is_[b, I_CLAMPED] = 1
    threshold = max(cfg[C_MIN_ORDER], cfg[C_BAND] * equity)
    for i in range(n):
        a = _target_weight(act[b, i], cfg)
        if math.isnan(a):
            continue
        s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
        half = 0.5 * a * scale * equity * cap
        tgt_s = half / s
        tgt_p = -half / p
        dq_s = tgt_s - as_[b, i, A_SPOT]
        dq_p = tgt_p - as_[b, i, A_PERP]
        if _pair_trades(
            dq_s * s, dq_p * p, half == 0.0, as_[b, i, A_SPOT], as_[b, i, A_PERP], threshold
        ):
            as_[b, i, A_DQ_S] = dq_s
            as_[b, i, A_DQ_P] = dq_p


@_jit()
def single_asset_masks(
    weights: np.ndarray,
    mkt: np.ndarray,
    cfg: np.ndarray,
    fs: np.ndarray,
    as_: np.ndarray,
    is_: np.ndarray,
    out: np.ndarray,
) -> None:
    """Masks of the one-asset-at-a-time discrete action space, exactly as `plan_env` would act.

    `out[b, 0]` is "hold every asset" (always allowed); `out[b, 1 + i * W + j]` is "asset i to
    weight `weights[j]`, every other asset held". An action is allowed iff `plan_env` would trade
    it without clamping: not halted, equity positive, the weight not turned into 0 by a disabled
    reverse carry (unless it is 0), and `|w| * equity * leverage_cap / max_leverage_i` within the
    equity left by the held assets' `gross / max_leverage` (summed in `plan_env`'s order).
    """
    nw = weights.shape[0]
    n = as_.shape[1]
    for b in range(out.shape[0]):
        out[b, :] = False
        out[b, 0] = True
        equity = fs[b, F_EQUITY]
        if is_[b, I_HALT] > 0 or equity <= 0.0:
            continue
        t = is_[b, I_T]
        cap = cfg[C_LEVERAGE_CAP]
        for i in range(n):
            used_hold = 0.0
            for j in range(n):
                if j != i:
                    s, p, sd, pd = effective_prices(b, j, t, mkt, fs, as_, cfg)
                    gross = abs(as_[b, j, A_SPOT] * s) + abs(as_[b, j, A_PERP] * p)
                    used_hold += gross / mkt[t, j, M_MAXLEV]
            budget = equity - used_hold
            maxlev = mkt[t, i, M_MAXLEV]
            for c in range(nw):
                w = weights[c]
                a = _target_weight(w, cfg)
                if a != w:
                    continue  # reverse carry disabled: the weight would act as 0
                used_active = abs(a) * equity * cap / maxlev
                out[b, 1 + i * nw + c] = not (used_active > budget and used_active > 0.0)


@_jit(inline="always")
def sim_fill_env(
    b: int, mkt: np.ndarray, cfg: np.ndarray, fs: np.ndarray, as_: np.ndarray, is_: np.ndarray
) -> None:
    """Simulated executor for env b: every planned order fills in full at mid plus modelled
    costs."""
    t = is_[b, I_T]
    for i in range(as_.shape[1]):
        s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
        spread = effective_spread(b, i, t, mkt, fs, as_, cfg)
        dq_s = as_[b, i, A_DQ_S]
        dq_p = as_[b, i, A_DQ_P]
        f1, c1, m1 = leg_costs(abs(dq_s) * s, sd, spread, cfg[C_SPOT_MAKER], cfg[C_SPOT_TAKER], cfg)
        f2, c2, m2 = leg_costs(abs(dq_p) * p, pd, spread, cfg[C_PERP_MAKER], cfg[C_PERP_TAKER], cfg)
        as_[b, i, A_FQ_S] = dq_s
        as_[b, i, A_FQ_P] = dq_p
        as_[b, i, A_FEE] = f1 + f2
        as_[b, i, A_SPREAD_COST] = c1 + c2
        as_[b, i, A_IMPACT] = m1 + m2


@_jit(inline="always")
def _book_fills(
    b: int,
    t: int,
    mkt: np.ndarray,
    cfg: np.ndarray,
    fs: np.ndarray,
    as_: np.ndarray,
    info: np.ndarray,
) -> None:
    # Fills move coins and cash at mid; costs leave cash. Collateral of a traded perp leg is reset
    # to target.
    unified = cfg[C_UNIFIED] > 0.0
    fees = 0.0
    spread_cost = 0.0
    impact = 0.0
    turnover = 0.0
    for i in range(as_.shape[1]):
        s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
        dq_s = as_[b, i, A_FQ_S]
        dq_p = as_[b, i, A_FQ_P]
        if dq_s != 0.0:
            as_[b, i, A_SPOT_AVG] = _avg_entry(as_[b, i, A_SPOT], as_[b, i, A_SPOT_AVG], dq_s, s)
            as_[b, i, A_SPOT] += dq_s
            fs[b, F_CASH] -= dq_s * s
            turnover += abs(dq_s) * s
        if dq_p != 0.0:
            as_[b, i, A_PERP_AVG] = _avg_entry(as_[b, i, A_PERP], as_[b, i, A_PERP_AVG], dq_p, p)
            as_[b, i, A_PERP] += dq_p
            turnover += abs(dq_p) * p
            if not unified:
                target = abs(as_[b, i, A_PERP]) * p / cfg[C_PERP_LEVERAGE]
                fs[b, F_CASH] -= target - as_[b, i, A_COLL]
                as_[b, i, A_COLL] = target
        cost = as_[b, i, A_FEE] + as_[b, i, A_SPREAD_COST] + as_[b, i, A_IMPACT]
        fs[b, F_CASH] -= cost
        fees += as_[b, i, A_FEE]
        spread_cost += as_[b, i, A_SPREAD_COST]
        impact += as_[b, i, A_IMPACT]
    info[b, K_FEES] = fees
    info[b, K_SPREAD_COST] = spread_cost
    info[b, K_IMPACT] = impact
    info[b, K_SLIPPAGE] = spread_cost + impact
    info[b, K_TURNOVER] = turnover


@_jit(inline="always")
def _advance_anomalies(
    b: int, t1: int, cfg: np.ndarray, fs: np.ndarray, as_: np.ndarray, is_: np.ndarray
) -> None:
    # Age running events and draw new ones for bar t1 from the counter-based RNG.
    if is_[b, I_HALT] > 0:
        is_[b, I_HALT] -= 1
    if is_[b, I_OUTAGE] > 0:
        is_[b, I_OUTAGE] -= 1
    an.age_flash(b, cfg, fs, is_)
    if cfg[C_ANOMALIES] == 0.0:
        return
    key = is_[b, I_KEY]
    if is_[b, I_HALT] == 0 and uniform(key, t1, 0) < cfg[C_P_HALT]:
        is_[b, I_HALT] = int(cfg[C_HALT_STEPS])
    if is_[b, I_OUTAGE] == 0 and uniform(key, t1, 1) < cfg[C_P_OUTAGE]:
        is_[b, I_OUTAGE] = int(cfg[C_OUTAGE_STEPS])
    if fs[b, F_FLASH_ON] == 0.0 and uniform(key, t1, 2) < cfg[C_P_FLASH]:
        is_[b, I_FLASH_AGE] = 0
        an.start_flash(b, t1, key, cfg, fs, as_)


@_jit(inline="always")
def _margin_ratios(
    b: int, t: int, mkt: np.ndarray, cfg: np.ndarray, fs: np.ndarray, as_: np.ndarray
) -> float:
    # Fills as_[b, i, A_MR] (isolated per-asset ratio, inf when flat) and returns the binding ratio
    # of the account at the close. Perps count at the mark: the books hold them at the last price,
    # so each perp's margin adds `perp_qty * (mark - last)` and its maintenance is on mark notional.
    n = as_.shape[1]
    cash = fs[b, F_CASH]
    mmr = cfg[C_MMR]
    smmr = cfg[C_SPOT_MMR]
    worst = np.inf
    if cfg[C_UNIFIED] > 0.0:
        margin_eq = cash
        req = smmr * max(-cash, 0.0)
        for i in range(n):
            s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
            q = as_[b, i, A_SPOT]
            margin_eq += q * s * (1.0 - cfg[C_SPOT_HAIRCUT]) if q > 0.0 else q * s
            m = mark_price(b, i, t, mkt, fs, as_, cfg)
            margin_eq += as_[b, i, A_COLL] + as_[b, i, A_PERP] * (m - p)
            req += mmr * abs(as_[b, i, A_PERP]) * m + smmr * max(-q, 0.0) * s
            as_[b, i, A_MR] = np.inf
        if req > 0.0:
            worst = margin_eq / req
        for i in range(n):
            if as_[b, i, A_PERP] != 0.0:
                as_[b, i, A_MR] = worst
        return worst
    spot_eq = cash
    liab = max(-cash, 0.0)
    for i in range(n):
        s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
        q = as_[b, i, A_SPOT]
        spot_eq += q * s
        liab += max(-q, 0.0) * s
        m = mark_price(b, i, t, mkt, fs, as_, cfg)
        notional = abs(as_[b, i, A_PERP]) * m
        if notional > 0.0:
            coll_at_mark = as_[b, i, A_COLL] + as_[b, i, A_PERP] * (m - p)
            as_[b, i, A_MR] = coll_at_mark / (mmr * notional)
            worst = min(worst, as_[b, i, A_MR])
        else:
            as_[b, i, A_MR] = np.inf
    if liab > 0.0:
        worst = min(worst, spot_eq / (smmr * liab))
    return worst


@_jit(inline="always")
def _perp_extreme(b: int, i: int, t: int, mkt: np.ndarray, as_: np.ndarray) -> float:
    # Price multiple of asset i's perp at its adverse extreme of bar t: low / close for a long,
    # high / close for a short (1 where the frame has no range).
    return mkt[t, i, M_LOW_R] if as_[b, i, A_PERP] > 0.0 else mkt[t, i, M_HIGH_R]


@_jit(inline="always")
def _spot_extreme(b: int, i: int, t: int, mkt: np.ndarray, as_: np.ndarray) -> float:
    # The same for asset i's spot leg (a long loses at the low, a short at the high).
    return mkt[t, i, M_SPOT_LOW_R] if as_[b, i, A_SPOT] > 0.0 else mkt[t, i, M_SPOT_HIGH_R]


@_jit(inline="always")
def _unified_path(
    b: int, t: int, mkt: np.ndarray, cfg: np.ndarray, fs: np.ndarray, as_: np.ndarray
) -> tuple[float, float, float, float, float, float]:
    """The unified account's margin on the straight path from bar t's close (`lam = 0`) to every
    leg's adverse extreme of the bar (`lam = 1`: `_spot_extreme`, `_perp_extreme`), each point
    valued as `_margin_ratios` values a close.

    Margin equity `E(lam) = e0 + lam * de`; requirement `R(lam) = r0 + lam * dr + spot_mmr *
    max(-(cash + lam * dc), 0)`, where `dc` is the perp variation margin the move books to cash
    (the negative part of cash is borrowed USDT). Returns `(e0, de, r0, dr, cash, dc)`.

    Taking each leg at its adverse extreme minimises the surplus `E - R` at `lam = 1`, which
    decides a breach (the ratio `E / R` is below 1 iff `E < R`): a long spot leg at its low and a
    short one at its high lower E (the short also raises R), a short perp at its high lowers E and
    raises R, and a long perp at its low lowers E by its move and R by `mmr` times it.
    """
    h = cfg[C_SPOT_HAIRCUT]
    mmr = cfg[C_MMR]
    smmr = cfg[C_SPOT_MMR]
    cash = fs[b, F_CASH]
    e0 = cash
    de = 0.0
    r0 = 0.0
    dr = 0.0
    dc = 0.0
    for i in range(as_.shape[1]):
        s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
        m = mark_price(b, i, t, mkt, fs, as_, cfg)
        qs = as_[b, i, A_SPOT]
        qp = as_[b, i, A_PERP]
        ds = s * (_spot_extreme(b, i, t, mkt, as_) - 1.0)
        rp = _perp_extreme(b, i, t, mkt, as_) - 1.0
        w = qs * (1.0 - h) if qs > 0.0 else qs  # margin value of the spot leg per unit of price
        e0 += w * s + as_[b, i, A_COLL] + qp * (m - p)
        de += w * ds + qp * m * rp
        short = max(-qs, 0.0)
        r0 += mmr * abs(qp) * m + smmr * short * s
        dr += mmr * abs(qp) * m * rp + smmr * short * ds
        dc += qp * p * rp
    return e0, de, r0, dr, cash, dc


@_jit()  # out of line: a rare path (see `_jit`)
def _unified_crossing(
    b: int, t: int, mkt: np.ndarray, cfg: np.ndarray, fs: np.ndarray, as_: np.ndarray
) -> float:
    """Where on `_unified_path` the unified account's surplus `E - R` reaches 0: the fraction
    `lam` in [0, 1] of the way from the close to the adverse extremes at which an account that
    breaches only inside the bar is liquidated (the venue takes it over on the line, not at the
    extreme, as an isolated perp fills at its liquidation price).

    The surplus is linear in `lam` but for the kink where cash crosses 0 (USDT starts to be
    borrowed) and concave, so it crosses 0 once; the crossing is solved exactly on the linear piece
    where the sign changes. 0 when the close itself is on or below the line.
    """
    e0, de, r0, dr, cash, dc = _unified_path(b, t, mkt, cfg, fs, as_)
    smmr = cfg[C_SPOT_MMR]
    lo = 0.0
    f_lo = e0 - r0 - smmr * max(-cash, 0.0)
    hi = 1.0
    f_hi = e0 + de - r0 - dr - smmr * max(-(cash + dc), 0.0)
    if f_lo <= 0.0:
        return 0.0
    if f_hi >= 0.0:
        return 1.0
    if dc != 0.0:
        kink = -cash / dc
        if 0.0 < kink < 1.0:
            f_kink = e0 - r0 + kink * (de - dr)  # no borrowed USDT at the kink
            if f_kink < 0.0:
                hi, f_hi = kink, f_kink
            else:
                lo, f_lo = kink, f_kink
    return lo + (hi - lo) * f_lo / (f_lo - f_hi)


@_jit(inline="always")
def _spot_account_path(
    b: int, t: int, mkt: np.ndarray, cfg: np.ndarray, fs: np.ndarray, as_: np.ndarray
) -> tuple[float, float, float, float]:
    """The isolated spot margin account (cash and spot legs, against the borrowed coins of short
    spot legs and the borrowed USDT of negative cash) on the straight path from bar t's close
    (`lam = 0`) to every spot leg's adverse extreme (`lam = 1`, `_spot_extreme`).

    Equity `E(lam) = cash + sum(q * s(lam))` and liabilities `L(lam) = max(-cash, 0) + sum(max(-q,
    0) * s(lam))` are linear in `lam` (cash is constant on this path: the perps' variation margin
    goes to their collateral), so the surplus `E - spot_mmr * L` is too, and a breach at the
    extremes is crossed once, at `lam = f0 / (f0 - f1)`. Returns `(f0, f1, E(1), L(1))`, `f` the
    surplus at the close and at the extremes.
    """
    smmr = cfg[C_SPOT_MMR]
    cash = fs[b, F_CASH]
    e0 = cash
    l0 = max(-cash, 0.0)
    de = 0.0
    dl = 0.0
    for i in range(as_.shape[1]):
        s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
        q = as_[b, i, A_SPOT]
        ds = s * (_spot_extreme(b, i, t, mkt, as_) - 1.0)
        short = max(-q, 0.0)
        e0 += q * s
        de += q * ds
        l0 += short * s
        dl += short * ds
    return e0 - smmr * l0, e0 + de - smmr * (l0 + dl), e0 + de, l0 + dl


@_jit(inline="always")
def _bar_ratios(
    b: int, t: int, mkt: np.ndarray, cfg: np.ndarray, fs: np.ndarray, as_: np.ndarray
) -> float:
    """Margin ratios at the bar's adverse extremes; returns the lowest (inf if none).

    Isolated: fills `as_[b, i, A_MR_BAR]`: the ratio of asset i's perp with the mark at `mark *
    low / close` for a long perp, `mark * high / close` for a short one (the data's intrabar range
    of the last price, carried over to the mark); the returned lowest also counts the spot margin
    account with every spot leg at its adverse extreme (`_spot_account_path` at `lam = 1`: long
    spot at `spot_low`, short at `spot_high`), which no `A_MR_BAR` holds. Unified: the account's
    ratio with every leg at its adverse extreme (`_unified_path` at `lam = 1`: the perps' range
    carried to the mark as in isolated mode, the spot legs' from `spot_high` / `spot_low`), in
    `A_MR_BAR` of each asset with a perp (as `A_MR` holds the close's). A leg without a range in
    the frame counts at its close.
    """
    worst = np.inf
    n = as_.shape[1]
    mmr = cfg[C_MMR]
    if cfg[C_UNIFIED] > 0.0:
        e0, de, r0, dr, cash, dc = _unified_path(b, t, mkt, cfg, fs, as_)
        req = r0 + dr + cfg[C_SPOT_MMR] * max(-(cash + dc), 0.0)
        if req > 0.0:
            worst = (e0 + de) / req
        for i in range(n):
            as_[b, i, A_MR_BAR] = worst if as_[b, i, A_PERP] != 0.0 else np.inf
        return worst
    for i in range(n):
        q = as_[b, i, A_PERP]
        as_[b, i, A_MR_BAR] = np.inf
        if q == 0.0:
            continue
        s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
        x = mark_price(b, i, t, mkt, fs, as_, cfg)
        x *= mkt[t, i, M_LOW_R] if q > 0.0 else mkt[t, i, M_HIGH_R]
        as_[b, i, A_MR_BAR] = (as_[b, i, A_COLL] + q * (x - p)) / (mmr * abs(q) * x)
        worst = min(worst, as_[b, i, A_MR_BAR])
    f0, f1, spot_eq, liab = _spot_account_path(b, t, mkt, cfg, fs, as_)
    if liab > 0.0:
        worst = min(worst, spot_eq / (cfg[C_SPOT_MMR] * liab))
    return worst


@_jit(inline="always")
def _free_cash(
    b: int, t: int, mkt: np.ndarray, cfg: np.ndarray, fs: np.ndarray, as_: np.ndarray
) -> float:
    """Cash an auto-add may move into isolated collateral at bar t: positive cash, less what keeps
    the spot margin account (cash and spot legs against the borrowed coins) at `SPOT_TRANSFER_LEVEL`
    times its maintenance, so a top-up never borrows USDT and never leaves the spot account on the
    edge of its own liquidation."""
    cash = fs[b, F_CASH]
    if cash <= 0.0:
        return 0.0
    spot_eq = cash
    liab = 0.0
    for i in range(as_.shape[1]):
        s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
        q = as_[b, i, A_SPOT]
        spot_eq += q * s
        liab += max(-q, 0.0) * s
    return max(0.0, min(cash, spot_eq - SPOT_TRANSFER_LEVEL * cfg[C_SPOT_MMR] * liab))


@_jit()  # out of line: a rare path (see `_jit`)
def _auto_add_margin(
    b: int, t: int, mkt: np.ndarray, cfg: np.ndarray, fs: np.ndarray, as_: np.ndarray
) -> float:
    """Isolated auto-add margin at bar t (`EnvConfig.isolated_auto_add_margin`); returns the cash
    moved into collateral. Reads the ratios `_margin_ratios` and `_bar_ratios` just wrote.

    A perp whose lower ratio, at the close (`A_MR`) or at the bar's adverse extreme (`A_MR_BAR`),
    is below the trigger gets `(target - ratio) * mmr * |qty| * x`, `x` the mark that ratio was
    taken at: a ratio rises by `d / (mmr * |qty| * x)` per `d` of collateral, so this is exactly
    what brings it back to the target. Perps go in asset order while free cash lasts
    (`_free_cash`); one that needs more than is left gets what is left. Cash to collateral is a
    transfer: equity and every cash-flow term of the step are unchanged.
    """
    mmr = cfg[C_MMR]
    trigger = cfg[C_AUTO_ADD_TRIGGER]
    free = _free_cash(b, t, mkt, cfg, fs, as_)
    added = 0.0
    for i in range(as_.shape[1]):
        q = as_[b, i, A_PERP]
        low = min(as_[b, i, A_MR], as_[b, i, A_MR_BAR])
        if q == 0.0 or not low < trigger or free <= 0.0:
            continue
        x = mark_price(b, i, t, mkt, fs, as_, cfg)
        if as_[b, i, A_MR_BAR] < as_[b, i, A_MR]:
            x *= _perp_extreme(b, i, t, mkt, as_)
        d = min((cfg[C_AUTO_ADD_TARGET] - low) * mmr * abs(q) * x, free)
        as_[b, i, A_COLL] += d
        fs[b, F_CASH] -= d
        free -= d
        added += d
    return added


@_jit(inline="always")
def liquidation_price(qty: float, last: float, collateral: float, mmr: float) -> float:
    """Mark at which an isolated perp of `qty` contracts, booked at `last` with `collateral`,
    reaches a margin ratio of exactly 1: `(qty * last - collateral) / (qty - mmr * |qty|)`.

    At that mark the collateral left, `collateral + qty * (mark - last)`, equals the maintenance
    margin `mmr * |qty| * mark`.
    """
    return (qty * last - collateral) / (qty - mmr * abs(qty))


@_jit(inline="always")
def _absorb(before: float, cost: float) -> tuple[float, float, float]:
    # A margin account worth `before` is closed at `cost`: returns (what is left, the liquidation
    # loss the trader bears, the insurance fund's share). The loss is never negative and never more
    # than the account held; a negative account (a gap through the bankruptcy price) is made good by
    # the insurance fund, so what is left is never below zero.
    rest = before - cost
    if rest >= 0.0:
        return rest, cost, 0.0
    return 0.0, max(before, 0.0), max(-before, 0.0)


@_jit(inline="always")
def _close_spot(
    b: int,
    t: int,
    lam: float,
    mkt: np.ndarray,
    cfg: np.ndarray,
    fs: np.ndarray,
    as_: np.ndarray,
) -> tuple[float, float]:
    # Sell (or buy back) every spot leg at the liquidation haircut into cash, at the price `lam` of
    # the way from bar t's close to the leg's adverse extreme (0: the close). Returns (the haircut,
    # the price P&L of the move from the close to that price).
    h = cfg[C_LIQ_HAIRCUT]
    cost = 0.0
    moved = 0.0
    for i in range(as_.shape[1]):
        close, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
        q = as_[b, i, A_SPOT]
        s = close * (1.0 + lam * (_spot_extreme(b, i, t, mkt, as_) - 1.0))
        moved += q * (s - close)
        fs[b, F_CASH] += q * s
        cost += abs(q) * s * h
        as_[b, i, A_SPOT] = 0.0
        as_[b, i, A_SPOT_AVG] = 0.0
    return cost, moved


@_jit(inline="always")
def _close_perp(b: int, i: int, p: float, cfg: np.ndarray, as_: np.ndarray) -> float:
    # Close asset i's perp at the haircut plus the liquidation fee; returns that cost.
    cost = abs(as_[b, i, A_PERP]) * p * (cfg[C_LIQ_HAIRCUT] + cfg[C_LIQ_FEE])
    as_[b, i, A_PERP] = 0.0
    as_[b, i, A_PERP_AVG] = 0.0
    return cost


@_jit()  # out of line: a rare path (see `_jit`)
def _close_account(
    b: int,
    t: int,
    lam: float,
    mkt: np.ndarray,
    cfg: np.ndarray,
    fs: np.ndarray,
    as_: np.ndarray,
) -> tuple[float, float, float]:
    # Close every leg of env b at the liquidation haircut (perps also pay the liquidation fee) and
    # floor what is left at zero; returns (liquidation loss, insurance fund, price P&L change). A
    # unified liquidation, and a bankruptcy in either mode. The legs close at the last prices `lam`
    # of the way from bar t's close to their adverse extremes (`_unified_crossing`; 0: the close):
    # the move from the close is re-booked as price P&L.
    before = fs[b, F_CASH]
    cost = 0.0
    moved = 0.0
    for i in range(as_.shape[1]):
        s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
        x = p * (1.0 + lam * (_perp_extreme(b, i, t, mkt, as_) - 1.0))
        moved += as_[b, i, A_PERP] * (x - p)
        before += as_[b, i, A_SPOT] * s + as_[b, i, A_COLL]
        cost += _close_perp(b, i, x, cfg, as_)
        as_[b, i, A_COLL] = 0.0
    spot_cost, spot_moved = _close_spot(b, t, lam, mkt, cfg, fs, as_)
    cost += spot_cost
    moved += spot_moved
    rest, loss, insurance = _absorb(before + moved, cost)
    fs[b, F_CASH] = rest
    return loss, insurance, moved


@_jit(inline="always")
def _liquidate_perp_at(
    b: int, i: int, p: float, x: float, cfg: np.ndarray, as_: np.ndarray
) -> tuple[float, float, float, float]:
    # Liquidate asset i's isolated perp, booked at the last price `p`, at the mark `x`: the bar's
    # variation margin is re-booked from p to x (the price P&L change; 0 when the mark is the last
    # price), then the haircut and the fee at x come out of what collateral is left (never more
    # than it; a negative rest is the insurance fund's). Returns (cash back, loss, insurance fund,
    # price P&L change).
    repriced = as_[b, i, A_PERP] * (x - p)
    rest, lost, absorbed = _absorb(as_[b, i, A_COLL] + repriced, _close_perp(b, i, x, cfg, as_))
    as_[b, i, A_COLL] = 0.0
    return rest, lost, absorbed, repriced


@_jit()  # out of line: a rare path (see `_jit`)
def _liquidate(
    b: int,
    t: int,
    close_ratio: float,
    mkt: np.ndarray,
    cfg: np.ndarray,
    fs: np.ndarray,
    as_: np.ndarray,
) -> tuple[float, float, float]:
    # Returns (liquidation loss, insurance fund, price P&L change). Unified: the whole account is
    # closed (`_close_account`) at the close's last prices when the close breaches (its ratio
    # `close_ratio` < 1), else, when only the bar's adverse extremes do, at the point of the path
    # to them where the account crossed the line (`_unified_crossing`). Isolated: only each perp
    # whose own ratio is below 1 is closed, against its own collateral, at a mark
    # (`_liquidate_perp_at`): the close's mark when the close breaches (a gap: the first price the
    # env knows past the line), else its liquidation price when only the bar's adverse extreme
    # does (the mark crossed the line inside the bar and the engine took the position over there).
    # Either way the trader loses what collateral the position had left at that mark, as on an
    # exchange. The spot margin account (cash and spot legs, `_spot_account_path`) is closed only
    # when its own ratio is below 1: at the close's spot prices when the close breaches, else,
    # when only the spot legs' adverse extremes do, where its surplus crossed 0 on the straight
    # path to them (the move from the close re-booked as price P&L). Everything else stays open.
    n = as_.shape[1]
    if cfg[C_UNIFIED] > 0.0:
        lam = 0.0 if close_ratio < 1.0 else _unified_crossing(b, t, mkt, cfg, fs, as_)
        return _close_account(b, t, lam, mkt, cfg, fs, as_)
    loss = 0.0
    insurance = 0.0
    price_pnl = 0.0
    for i in range(n):
        q = as_[b, i, A_PERP]
        s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
        if as_[b, i, A_PERP] != 0.0 and as_[b, i, A_MR] < 1.0:
            x = mark_price(b, i, t, mkt, fs, as_, cfg)
        elif q != 0.0 and as_[b, i, A_MR_BAR] < 1.0:
            x = liquidation_price(q, p, as_[b, i, A_COLL], cfg[C_MMR])
        else:
            continue
        rest, lost, absorbed, repriced = _liquidate_perp_at(b, i, p, x, cfg, as_)
        fs[b, F_CASH] += rest
        loss += lost
        insurance += absorbed
        price_pnl += repriced
    # The spot account, with the cash the liquidated perps gave back: its surplus at the close
    # (f0) and at the spot legs' adverse extremes (f1) decides whether and where it closes.
    f0, f1, e1, l1 = _spot_account_path(b, t, mkt, cfg, fs, as_)
    if f0 < 0.0:
        lam = 0.0
    elif f1 < 0.0:
        lam = f0 / (f0 - f1)
    else:
        return loss, insurance, price_pnl
    spot_eq = fs[b, F_CASH]
    for i in range(n):
        s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
        spot_eq += as_[b, i, A_SPOT] * s
    cost, moved = _close_spot(b, t, lam, mkt, cfg, fs, as_)
    rest, lost, absorbed = _absorb(spot_eq + moved, cost)
    fs[b, F_CASH] = rest
    loss += lost
    insurance += absorbed
    price_pnl += moved
    return loss, insurance, price_pnl


@_jit()  # out of line: a rare path (see `_jit`)
def _ratios_again(
    b: int, t: int, mkt: np.ndarray, cfg: np.ndarray, fs: np.ndarray, as_: np.ndarray
) -> tuple[float, float]:
    # `_margin_ratios` and `_bar_ratios` taken again after collateral moved (an auto-add, a
    # liquidation): (the close's binding ratio, the lowest of it and the bar's).
    ratio = _margin_ratios(b, t, mkt, cfg, fs, as_)
    return ratio, min(ratio, _bar_ratios(b, t, mkt, cfg, fs, as_))


@_jit()  # out of line: a rare path (see `_jit`)
def _close_bankrupt(
    b: int, t: int, mkt: np.ndarray, cfg: np.ndarray, fs: np.ndarray, as_: np.ndarray
) -> tuple[float, float, float, float]:
    # Close a bankrupt account at bar t's close (`_close_account`); returns (liquidation loss,
    # insurance fund, the margin ratio after, the equity after).
    lost, absorbed, moved = _close_account(b, t, 0.0, mkt, cfg, fs, as_)
    ratio = _margin_ratios(b, t, mkt, cfg, fs, as_)
    return lost, absorbed, ratio, equity_of(b, t, mkt, fs, as_, cfg)


@_jit(inline="always")
def _horizon_vol(b: int, t1: int, e1: float, cfg: np.ndarray, fs: np.ndarray) -> float:
    """Annualised volatility of env b's equity from returns over a fixed clock horizon.

    At every `C_VOL_BARS`-th bar of the data grid the return since the last boundary enters an
    exponentially weighted mean of squares (bias-corrected by the weight sum); the estimate is
    annualised with the horizon's length, so 15 m, 1 h and 8 h bars of one market agree. 0 until
    the first horizon return.
    """
    k_bars = int(cfg[C_VOL_BARS])
    if t1 % k_bars == 0:
        anchor = fs[b, F_VOL_ANCHOR]
        r_h = e1 / anchor - 1.0 if anchor > 0.0 else 0.0
        decay = cfg[C_VOL_DECAY]
        fs[b, F_RET_VAR] = decay * fs[b, F_RET_VAR] + r_h * r_h
        fs[b, F_VOL_W] = decay * fs[b, F_VOL_W] + 1.0
        fs[b, F_VOL_ANCHOR] = e1
    if fs[b, F_VOL_W] <= 0.0:
        return 0.0
    return math.sqrt(fs[b, F_RET_VAR] / fs[b, F_VOL_W] / (k_bars * cfg[C_BAR_YEARS]))


@_jit(inline="always")
def apply_env(
    b: int,
    mkt: np.ndarray,
    tfeat: np.ndarray,
    feats: np.ndarray,
    cfg: np.ndarray,
    fs: np.ndarray,
    as_: np.ndarray,
    is_: np.ndarray,
    ctx: np.ndarray,
    obs: np.ndarray,
    rew: np.ndarray,
    term: np.ndarray,
    trunc: np.ndarray,
    info: np.ndarray,
    flags: np.ndarray,
    legs: np.ndarray,
) -> None:
    """Book env b's fills, advance one bar and settle it; write reward, flags, info and the next
    observation."""
    t = is_[b, I_T]
    n = as_.shape[1]
    e0 = fs[b, F_EQUITY]
    flags[b, G_CLAMPED] = is_[b, I_CLAMPED] != 0
    _book_fills(b, t, mkt, cfg, fs, as_, info)
    unified = cfg[C_UNIFIED] > 0.0
    # Prices at t, before the clock moves (the flash state is still that of bar t).
    for i in range(n):
        s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
        as_[b, i, A_PX_S] = s
        as_[b, i, A_PX_P] = p
    t1 = t + 1
    _advance_anomalies(b, t1, cfg, fs, as_, is_)
    price_pnl = 0.0
    funding_pnl = 0.0
    borrow = 0.0
    spike = False
    dt = cfg[C_BAR_YEARS]
    for i in range(n):
        s0 = as_[b, i, A_PX_S]
        p0 = as_[b, i, A_PX_P]
        s1, p1, sd, pd = effective_prices(b, i, t1, mkt, fs, as_, cfg)
        qs = as_[b, i, A_SPOT]
        qp = as_[b, i, A_PERP]
        var_perp = qp * (p1 - p0)
        price_pnl += qs * (s1 - s0) + var_perp
        rate = mkt[t1, i, M_FUND]
        fund = 0.0
        if not math.isnan(rate):
            key = is_[b, I_KEY]
            if cfg[C_ANOMALIES] > 0.0 and uniform(key, t1, _S_SPIKE + 3 * i) < cfg[C_P_SPIKE]:
                rate = _funding_anomaly(rate, key, t1, _S_SPIKE + 3 * i + 1, cfg[C_SPIKE_BPS])
                spike = True
            as_[b, i, A_R3] = as_[b, i, A_R2]
            as_[b, i, A_R2] = as_[b, i, A_R1]
            as_[b, i, A_R1] = rate
            if cfg[C_FUNDING] > 0.0:
                fund = -qp * mark_price(b, i, t1, mkt, fs, as_, cfg) * rate
        funding_pnl += fund
        if unified:
            fs[b, F_CASH] += var_perp + fund
        else:
            as_[b, i, A_COLL] += var_perp + fund
        if cfg[C_BORROW] > 0.0 and qs < 0.0:
            borrow += -qs * s0 * cfg[C_SPOT_BORROW] * dt
    if cfg[C_BORROW] > 0.0 and fs[b, F_CASH] < 0.0:
        borrow += -fs[b, F_CASH] * cfg[C_USDT_BORROW] * dt
    fs[b, F_CASH] -= borrow
    halted1 = is_[b, I_HALT] > 0
    flags[b, G_HALTED] = halted1
    ratio = _margin_ratios(b, t1, mkt, cfg, fs, as_)
    worst = min(ratio, _bar_ratios(b, t1, mkt, cfg, fs, as_))
    # Auto-add margin (isolated, when on): free cash tops up the perps near the line first, as the
    # venue's engine does before it liquidates; then the ratios are taken again.
    margin_added = 0.0
    if cfg[C_AUTO_ADD] > 0.0 and worst < cfg[C_AUTO_ADD_TRIGGER]:
        if not unified and cfg[C_MARGIN] > 0.0 and not halted1:
            margin_added = _auto_add_margin(b, t1, mkt, cfg, fs, as_)
        if margin_added > 0.0:
            ratio, worst = _ratios_again(b, t1, mkt, cfg, fs, as_)
    liq_loss = 0.0
    insurance = 0.0
    liquidated = False
    if cfg[C_MARGIN] > 0.0 and not halted1 and worst < 1.0:
        liq_loss, insurance, repriced = _liquidate(b, t1, ratio, mkt, cfg, fs, as_)
        price_pnl += repriced
        liquidated = True
        ratio, worst = _ratios_again(b, t1, mkt, cfg, fs, as_)
    e1 = equity_of(b, t1, mkt, fs, as_, cfg)
    if e1 < 0.0:
        # Bankrupt (margin off, or halted): the venue closes the account and its insurance fund
        # takes the shortfall, so equity never ends a step below zero.
        lost, absorbed, ratio, e1 = _close_bankrupt(b, t1, mkt, cfg, fs, as_)
        liq_loss += lost
        insurance += absorbed
    fs[b, F_EQUITY] = e1
    fs[b, F_MARGIN_RATIO] = min(ratio, MARGIN_RATIO_CAP)
    if e1 > fs[b, F_PEAK]:
        fs[b, F_PEAK] = e1
    dd = 1.0 - e1 / fs[b, F_PEAK] if fs[b, F_PEAK] > 0.0 else 1.0
    is_[b, I_T] = t1
    # Reward in fractions of the equity at the start of the step.
    denom = e0 if e0 > 0.0 else 1.0
    r_carry = funding_pnl / denom
    r_basis = price_pnl / denom
    costs = info[b, K_FEES] + info[b, K_SLIPPAGE] + borrow + liq_loss
    r_costs = costs / denom
    sigma = _horizon_vol(b, t1, e1, cfg, fs)
    # Every risk term is a rate per unit of time or per unit traded, so its yearly sum does not
    # depend on the bar length: drawdown per day (C_DD_PENALTY is scaled by bar_days), volatility
    # per year, turnover per notional traded.
    risk = cfg[C_DD_PENALTY] * max(0.0, dd - cfg[C_DD_THRESHOLD])
    risk += cfg[C_VOL_PENALTY] * sigma * dt
    risk += cfg[C_TURNOVER_PENALTY] * info[b, K_TURNOVER] / denom
    if liquidated:
        risk += cfg[C_LIQ_PENALTY]
    rew[b] = cfg[C_REWARD_SCALE] * (r_carry + r_basis - r_costs - risk)
    if liquidated and rew[b] > 0.0:
        # The insurance fund's share is kept out of the reward, and a liquidation is never paid for
        # (a hedged book's spot gain on the liquidating bar is not a reward for being liquidated).
        rew[b] = 0.0
    bankrupt = e1 <= 0.0
    breach = cfg[C_DD_LIMIT] > 0.0 and dd > cfg[C_DD_LIMIT]
    term[b] = (liquidated and cfg[C_LIQ_ENDS] > 0.0) or bankrupt or breach
    trunc[b] = (not term[b]) and t1 >= is_[b, I_END]
    info[b, K_EQUITY] = e1
    info[b, K_CASH] = fs[b, F_CASH]
    info[b, K_FUNDING] = funding_pnl
    info[b, K_PRICE] = price_pnl
    info[b, K_BORROW] = borrow
    info[b, K_LIQ_LOSS] = liq_loss
    info[b, K_INSURANCE] = insurance
    info[b, K_MARGIN_ADDED] = margin_added
    flags[b, G_LIQUIDATED] = liquidated
    info[b, K_MARGIN_RATIO] = fs[b, F_MARGIN_RATIO]
    info[b, K_DRAWDOWN] = dd
    flags[b, G_STALE] = is_[b, I_OUTAGE] > 0
    flags[b, G_FLASH] = fs[b, F_FLASH_ON] > 0.0
    flags[b, G_SPIKE] = spike
    info[b, K_R_CARRY] = r_carry * cfg[C_REWARD_SCALE]
    info[b, K_R_BASIS] = r_basis * cfg[C_REWARD_SCALE]
    info[b, K_R_COSTS] = r_costs * cfg[C_REWARD_SCALE]
    info[b, K_R_RISK] = risk * cfg[C_REWARD_SCALE]
    flags[b, G_BANKRUPT] = bankrupt
    flags[b, G_DD_BREACH] = breach
    write_obs(b, False, mkt, tfeat, feats, cfg, fs, as_, is_, ctx, obs, info, legs)


@_jit(inline="always")
def write_obs(
    b: int,
    force_market: bool,
    mkt: np.ndarray,
    tfeat: np.ndarray,
    feats: np.ndarray,
    cfg: np.ndarray,
    fs: np.ndarray,
    as_: np.ndarray,
    is_: np.ndarray,
    ctx: np.ndarray,
    obs: np.ndarray,
    info: np.ndarray,
    legs: np.ndarray,
) -> None:
    """Write env b's observation at its current bar (layout: `CarryTradeEnv` docstring), the
    portfolio terms of its info and its positions (`legs`).

    Entries that are not bounded by construction are clipped to +-OBS_LIMIT.

    `as_[b, :, A_MR]` holds the per-asset margin ratios at this bar (from `_margin_ratios`).

    During a feed outage the market block of each asset keeps its last values (only its stale bit is
    set), unless `force_market` (a reset) asks for fresh values, and the exposure and P&L entries
    (exposures, unrealised P&L, gross leverage, equity P&L) use the last prices the observation saw
    (`A_SEEN_*`); the books and `info` still mark at the true prices.
    """
    t = is_[b, I_T]
    n = as_.shape[1]
    nf = feats.shape[2]
    per_asset = OBS_ASSET_MARKET + OBS_ASSET_PORTFOLIO + nf
    equity = fs[b, F_EQUITY]
    outage = is_[b, I_OUTAGE] > 0 and not force_market
    flash = fs[b, F_FLASH_ON] > 0.0
    age = is_[b, I_FLASH_AGE]
    lag1 = int(mkt[0, 0, M_LAG1H])
    lag4 = int(mkt[0, 0, M_LAG4H])
    seen_equity = equity
    if outage:  # the equity the agent can compute from the prices it last saw
        for i in range(n):
            s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
            seen_equity -= as_[b, i, A_SPOT] * (s - as_[b, i, A_SEEN_S])
            seen_equity -= as_[b, i, A_PERP] * (p - as_[b, i, A_SEEN_P])
    e = max(equity, 1e-6 * cfg[C_INITIAL_CASH])
    e_seen = max(seen_equity, 1e-6 * cfg[C_INITIAL_CASH])
    gross = 0.0
    upnl = 0.0
    gross_seen = 0.0
    upnl_seen = 0.0
    maxlev = np.inf
    for i in range(n):
        o = i * per_asset
        s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
        maxlev = min(maxlev, mkt[t, i, M_MAXLEV])
        qs = as_[b, i, A_SPOT]
        qp = as_[b, i, A_PERP]
        if not outage:
            as_[b, i, A_SEEN_S] = s
            as_[b, i, A_SEEN_P] = p
            ls = 0.0
            lp = 0.0
            ls1 = 0.0
            ls4 = 0.0
            ls_prev = 0.0
            log_depth = mkt[t, i, M_LOG_DEPTH]
            spread = mkt[t, i, M_SPREAD]
            if flash:  # a flash event shifts price levels, returns, depth and the spread
                ls = math.log(s / mkt[t, i, M_SPOT])
                lp = math.log(p / mkt[t, i, M_PERP])
                gs = as_[b, i, A_FL_S]
                ls1 = math.log(1.0 + gs * an.lagged_spot_level(b, age, lag1, cfg, fs))
                ls4 = math.log(1.0 + gs * an.lagged_spot_level(b, age, lag4, cfg, fs))
                ls_prev = math.log(1.0 + gs * an.lagged_spot_level(b, age, 1, cfg, fs))
                log_depth += math.log10(max(sd / mkt[t, i, M_SDEPTH], 1e-12))
                spread = an.flash_spread(b, i, spread, cfg, fs, as_)
            ret1 = mkt[t, i, M_RET1] + ls - ls_prev
            z = abs(ret1) / max(mkt[t, i, M_BARVOL], 1e-12)
            obs[b, o + 0] = (mkt[t, i, M_SPOT_SMA] + ls) * 100.0
            obs[b, o + 1] = (mkt[t, i, M_PERP_SMA] + lp) * 100.0
            obs[b, o + 2] = (p / s - 1.0) * 1e3
            obs[b, o + 3] = (mkt[t, i, M_RET1H] + ls - ls1) * 100.0
            obs[b, o + 4] = (mkt[t, i, M_RET4H] + ls - ls4) * 100.0
            obs[b, o + 5] = mkt[t, i, M_VOL]
            obs[b, o + 6] = log_depth
            obs[b, o + 7] = spread
            obs[b, o + 8] = as_[b, i, A_R1] * 1e4
            obs[b, o + 9] = (as_[b, i, A_R1] + as_[b, i, A_R2] + as_[b, i, A_R3]) * (1e4 / 3.0)
            obs[b, o + 10] = mkt[t, i, M_HRS_TO_FUND] / 8.0
            obs[b, o + 11] = mkt[t, i, M_MAXLEV]
            obs[b, o + 12] = mkt[t, i, M_SENT]
            obs[b, o + 13] = mkt[t, i, M_STALE]
            obs[b, o + 14] = min(z, 50.0) / 10.0
        else:
            obs[b, o + 13] = 1.0
        vs = as_[b, i, A_SEEN_S]
        vp = as_[b, i, A_SEEN_P]
        obs[b, o + 15] = _bounded(qs * vs / e_seen)
        obs[b, o + 16] = _bounded(qp * vp / e_seen)
        obs[b, o + 17] = _bounded((qs * vs + qp * vp) / e_seen)
        obs[b, o + 18] = margin_buffer(as_[b, i, A_MR])
        for k in range(nf):
            obs[b, o + OBS_ASSET_MARKET + OBS_ASSET_PORTFOLIO + k] = _bounded(feats[t, i, k])
        gross += abs(qs * s) + abs(qp * p)
        gross_seen += abs(qs * vs) + abs(qp * vp)
        if qs != 0.0:
            upnl += qs * (s - as_[b, i, A_SPOT_AVG])
            upnl_seen += qs * (vs - as_[b, i, A_SPOT_AVG])
        if qp != 0.0:
            upnl += qp * (p - as_[b, i, A_PERP_AVG])
            upnl_seen += qp * (vp - as_[b, i, A_PERP_AVG])
    g = n * per_asset
    mr = fs[b, F_MARGIN_RATIO]
    dd = 1.0 - equity / fs[b, F_PEAK] if fs[b, F_PEAK] > 0.0 else 1.0
    obs[b, g + 0] = _bounded(fs[b, F_CASH] / e)
    obs[b, g + 1] = _bounded(seen_equity / cfg[C_INITIAL_CASH] - 1.0)
    obs[b, g + 2] = _bounded(upnl_seen / e_seen)
    obs[b, g + 3] = dd
    obs[b, g + 4] = margin_buffer(mr)
    obs[b, g + 5] = _bounded(gross_seen / e_seen)
    obs[b, g + 6] = tfeat[t, 0]
    obs[b, g + 7] = tfeat[t, 1]
    obs[b, g + 8] = tfeat[t, 2]
    obs[b, g + 9] = tfeat[t, 3]
    obs[b, g + 10] = 1.0 if is_[b, I_HALT] > 0 else 0.0
    for k in range(ctx.shape[1]):
        obs[b, g + OBS_GLOBAL + k] = ctx[b, k]
    for i in range(n):
        legs[b, L_SPOT, i] = as_[b, i, A_SPOT]
        legs[b, L_PERP, i] = as_[b, i, A_PERP]
        legs[b, L_COLL, i] = as_[b, i, A_COLL]
    info[b, K_LEVERAGE] = gross / e
    info[b, K_UPNL] = upnl
    info[b, K_MAX_LEVERAGE] = maxlev


@_jit(inline="always")
def _prefetch_rows(
    b: int, mkt: np.ndarray, tfeat: np.ndarray, feats: np.ndarray, is_: np.ndarray
) -> None:
    """Prefetch the market, time-feature and feature rows env b's next step reads (bars t, t + 1).

    With random starts every env is on its own bar, so those rows are cold in cache; loaded on
    demand, their misses stall each env's step in turn (about 70 % of the kernel's time at
    B = 1,024 on a loaded machine). Requested `PREFETCH_AHEAD` envs early, they overlap the steps
    in between. A hint only: no value read or written changes.
    """
    t = is_[b, I_T]
    if t >= is_[b, I_END]:
        return
    nf = feats.shape[2]
    for t_row in range(t, t + 2):
        for i in range(mkt.shape[1]):
            # One element per cache line of the row (28 float64 span at most 5 lines).
            for c in range(0, N_MKT, 8):
                _prefetch(mkt, (t_row, i, c))
            _prefetch(mkt, (t_row, i, N_MKT - 1))
            for c in range(0, nf, 8):
                _prefetch(feats, (t_row, i, c))
            if nf > 0:
                _prefetch(feats, (t_row, i, nf - 1))
    # tfeat rows are 4 float64 (32 bytes): the first and last entries cover their lines.
    _prefetch(tfeat, (t + 1, 0))
    _prefetch(tfeat, (t + 1, tfeat.shape[1] - 1))


@_jit(inline="always")
def _step_env(
    b: int,
    act: np.ndarray,
    mkt: np.ndarray,
    tfeat: np.ndarray,
    feats: np.ndarray,
    cfg: np.ndarray,
    fs: np.ndarray,
    as_: np.ndarray,
    is_: np.ndarray,
    ctx: np.ndarray,
    obs: np.ndarray,
    rew: np.ndarray,
    term: np.ndarray,
    trunc: np.ndarray,
    info: np.ndarray,
    flags: np.ndarray,
    legs: np.ndarray,
) -> None:
    # One fused step of env b: plan, simulated fills, apply. A finished env waits for a reset.
    if is_[b, I_T] >= is_[b, I_END]:
        return
    plan_env(b, act, mkt, cfg, fs, as_, is_)
    sim_fill_env(b, mkt, cfg, fs, as_, is_)
    apply_env(
        b, mkt, tfeat, feats, cfg, fs, as_, is_, ctx, obs, rew, term, trunc, info, flags, legs
    )


@_jit()
def _step_serial(
    envs: np.ndarray,
    act: np.ndarray,
    mkt: np.ndarray,
    tfeat: np.ndarray,
    feats: np.ndarray,
    cfg: np.ndarray,
    fs: np.ndarray,
    as_: np.ndarray,
    is_: np.ndarray,
    ctx: np.ndarray,
    obs: np.ndarray,
    rew: np.ndarray,
    term: np.ndarray,
    trunc: np.ndarray,
    info: np.ndarray,
    flags: np.ndarray,
    legs: np.ndarray,
) -> None:
    n = envs.shape[0]
    for j in range(n):
        if j + PREFETCH_AHEAD < n:
            _prefetch_rows(envs[j + PREFETCH_AHEAD], mkt, tfeat, feats, is_)
        _step_env(
            envs[j],
            act,
            mkt,
            tfeat,
            feats,
            cfg,
            fs,
            as_,
            is_,
            ctx,
            obs,
            rew,
            term,
            trunc,
            info,
            flags,
            legs,
        )


@_jit(parallel=True)
def _step_parallel(
    envs: np.ndarray,
    act: np.ndarray,
    mkt: np.ndarray,
    tfeat: np.ndarray,
    feats: np.ndarray,
    cfg: np.ndarray,
    fs: np.ndarray,
    as_: np.ndarray,
    is_: np.ndarray,
    ctx: np.ndarray,
    obs: np.ndarray,
    rew: np.ndarray,
    term: np.ndarray,
    trunc: np.ndarray,
    info: np.ndarray,
    flags: np.ndarray,
    legs: np.ndarray,
) -> None:
    n = envs.shape[0]
    for j in nb.prange(n):
        if j + PREFETCH_AHEAD < n:
            _prefetch_rows(envs[j + PREFETCH_AHEAD], mkt, tfeat, feats, is_)
        _step_env(
            envs[j],
            act,
            mkt,
            tfeat,
            feats,
            cfg,
            fs,
            as_,
            is_,
            ctx,
            obs,
            rew,
            term,
            trunc,
            info,
            flags,
            legs,
        )


@_jit()
def plan_batch(
    envs: np.ndarray,
    act: np.ndarray,
    mkt: np.ndarray,
    cfg: np.ndarray,
    fs: np.ndarray,
    as_: np.ndarray,
    is_: np.ndarray,
) -> None:
    """Phase 1 of the split path: orders for the listed envs."""
    for j in range(envs.shape[0]):
        if is_[envs[j], I_T] < is_[envs[j], I_END]:
            plan_env(envs[j], act, mkt, cfg, fs, as_, is_)


@_jit()
def quotes_batch(
    envs: np.ndarray,
    mkt: np.ndarray,
    cfg: np.ndarray,
    fs: np.ndarray,
    as_: np.ndarray,
    is_: np.ndarray,
    out: np.ndarray,
) -> None:
    """The quotes orders of the split path are planned at: `out[b, i] = (spot, perp, spot depth,
    perp depth, spread bp)` at each listed env's bar, anomalies included."""
    for j in range(envs.shape[0]):
        b = envs[j]
        t = is_[b, I_T]
        for i in range(as_.shape[1]):
            s, p, sd, pd = effective_prices(b, i, t, mkt, fs, as_, cfg)
            out[b, i, 0] = s
            out[b, i, 1] = p
            out[b, i, 2] = sd
            out[b, i, 3] = pd
            out[b, i, 4] = effective_spread(b, i, t, mkt, fs, as_, cfg)


@_jit()
def apply_batch(
    envs: np.ndarray,
    mkt: np.ndarray,
    tfeat: np.ndarray,
    feats: np.ndarray,
    cfg: np.ndarray,
    fs: np.ndarray,
    as_: np.ndarray,
    is_: np.ndarray,
    ctx: np.ndarray,
    obs: np.ndarray,
    rew: np.ndarray,
    term: np.ndarray,
    trunc: np.ndarray,
    info: np.ndarray,
    flags: np.ndarray,
    legs: np.ndarray,
) -> None:
    """Phase 3 of the split path: book fills and advance the listed envs."""
    for j in range(envs.shape[0]):
        if is_[envs[j], I_T] >= is_[envs[j], I_END]:
            continue
        apply_env(
            envs[j],
            mkt,
            tfeat,
            feats,
            cfg,
            fs,
            as_,
            is_,
            ctx,
            obs,
            rew,
            term,
            trunc,
            info,
            flags,
            legs,
        )


@_jit()
def reset_obs_batch(
    envs: np.ndarray,
    mkt: np.ndarray,
    tfeat: np.ndarray,
    feats: np.ndarray,
    cfg: np.ndarray,
    fs: np.ndarray,
    as_: np.ndarray,
    is_: np.ndarray,
    ctx: np.ndarray,
    obs: np.ndarray,
    info: np.ndarray,
    legs: np.ndarray,
) -> None:
    """Write the first observation of freshly reset envs (state already initialised)."""
    for j in range(envs.shape[0]):
        b = envs[j]
        fs[b, F_MARGIN_RATIO] = min(
            _margin_ratios(b, is_[b, I_T], mkt, cfg, fs, as_), MARGIN_RATIO_CAP
        )
        write_obs(b, True, mkt, tfeat, feats, cfg, fs, as_, is_, ctx, obs, info, legs)
