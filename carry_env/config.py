"""Configuration of the carry-trade environment: one frozen dataclass, every field documented.

Defaults follow Binance (spot + USD-M perpetuals, VIP 0) where an exchange number exists. Rates are
fractions, fields in basis points end in `_bps`, annual rates end in `_annual`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Literal

import numpy as np

# Indices into the float64 config vector the numba kernel reads (see `EnvConfig.to_vector`). Kept as
# module constants so the kernel compiles them in as literals.
C_LEVERAGE_CAP = 0
C_PERP_LEVERAGE = 1
C_SPOT_MAKER = 2
C_SPOT_TAKER = 3
C_PERP_MAKER = 4
C_PERP_TAKER = 5
C_MAKER_FRACTION = 6
C_SLIP_MODEL = 7
C_SLIP_K = 8
C_TICK_BPS = 9
C_BAND = 10
C_MIN_ORDER = 11
C_SPOT_BORROW = 12
C_USDT_BORROW = 13
C_ALLOW_REVERSE = 14
C_UNIFIED = 15
C_SPOT_HAIRCUT = 16
C_MMR = 17
C_SPOT_MMR = 18
C_LIQ_HAIRCUT = 19
C_LIQ_FEE = 20
C_LIQ_PENALTY = 21
C_DD_LIMIT = 22
C_DD_THRESHOLD = 23
C_DD_PENALTY = 24
C_VOL_PENALTY = 25
C_VOL_DECAY = 26
C_TURNOVER_PENALTY = 27
C_REWARD_SCALE = 28
C_FEES = 29
C_SPREAD = 30
C_SLIPPAGE = 31
C_FUNDING = 32
C_BORROW = 33
C_MARGIN = 34
C_ANOMALIES = 35
C_P_FLASH = 36
C_P_HALT = 37
C_P_OUTAGE = 38
C_P_SPIKE = 39
C_FLASH_SIZE = 40
C_FLASH_BASIS = 41
C_FLASH_DECAY = 42
C_FLASH_DEPTH = 43
C_HALT_STEPS = 44
C_OUTAGE_STEPS = 45
C_SPIKE_BPS = 46
C_BAR_YEARS = 47
C_BAR_DAYS = 48
C_INITIAL_CASH = 49
C_FLASH_DEEPEN_MAX = 50
C_FLASH_WIDEN_MAX = 51
C_FLASH_RECOVERY_MIN = 52
C_FLASH_RECOVERY_MAX = 53
C_FLASH_RESID_DECAY = 54
C_FLASH_SPREAD_MULT = 55
C_FLASH_SPREAD_BASIS = 56
C_VOL_BARS = 57
C_LIQ_ENDS = 58
C_AUTO_ADD = 59
C_AUTO_ADD_TRIGGER = 60
C_AUTO_ADD_TARGET = 61
N_CONFIG = 62


@dataclass(frozen=True)
class EnvConfig:
    """Economics, risk rules, reward weights and feature flags of `CarryTradeEnv`."""

    # ---- account and sizing ----
    initial_cash: float = 100_000.0
    """Starting USDT in the shared cash pool."""
    leverage_cap: float = 1.5
    """Gross hedged notional per unit of equity at |action| = 1: `size = a * equity * leverage_cap`,
    of
    which half is the spot leg and half the perp leg."""
    perp_leverage: float = 3.0
    """Leverage of the isolated perp position: collateral posted = |perp notional| / perp_leverage,
    reset each time the perp leg trades (in between it moves only with the perp's P&L and funding,
    unless `isolated_auto_add_margin` tops it up)."""
    margin_mode: Literal["isolated", "unified"] = "isolated"
    """`isolated`: only the perp leg's posted collateral backs it. `unified`: all equity backs every
    position, long spot counted at `(1 - spot_collateral_haircut)`."""
    spot_collateral_haircut: float = 0.05
    """Unified mode: fraction of long-spot value not counted as margin."""
    allow_reverse_carry: bool = True
    """Whether negative actions (short spot on borrowed coins, long perp) are allowed; if not, they
    act
    as 0."""

    # ---- dynamic leverage limit ----
    leverage_limit: bool = True
    """Lower `max_leverage_t` when realised volatility rises; when off, `max_leverage_t =
    leverage_cap`."""
    target_vol_annual: float = 0.6
    """Realised (annualised) spot volatility at which the full `leverage_cap` is still allowed;
    above
    it the cap shrinks in proportion: `max_leverage_t = clip(leverage_cap * target_vol / vol_t,
    min_leverage, cap)`."""
    min_leverage: float = 0.25
    """Floor of `max_leverage_t`."""
    vol_window_hours: float = 24.0
    """Window of the realised volatility behind `max_leverage_t` and the observation."""

    # ---- execution costs ----
    fees: bool = True
    """Charge exchange fees."""
    spot_maker_fee_bps: float = 10.0
    """Spot maker fee (Binance VIP 0: 10 bp)."""
    spot_taker_fee_bps: float = 10.0
    """Spot taker fee (Binance VIP 0: 10 bp)."""
    perp_maker_fee_bps: float = 2.0
    """Perp maker fee (Binance USD-M VIP 0: 2 bp)."""
    perp_taker_fee_bps: float = 5.0
    """Perp taker fee (Binance USD-M VIP 0: 5 bp)."""
    maker_fraction: float = 0.0
    """Share of each order's notional filled passively (maker fee, no half-spread); the rest crosses
    the spread."""
    spread: bool = True
    """Charge half the quoted spread (`spread_bps` column, else `default_spread_bps`) on taker
    notional."""
    default_spread_bps: float = 1.0
    """Spread used when the market frame has no `spread_bps` column."""
    slippage: bool = True
    """Charge depth-based market impact and the fixed tick."""
    slippage_model: Literal["linear", "sqrt"] = "linear"
    """`linear`: impact fraction `k * notional / depth`; `sqrt`: `k * sqrt(notional / depth)`."""
    slippage_k: float = 5e-4
    """Impact coefficient `k`. Depth is the book within +-10 bp of mid, so taking all of it moves
    the
    price about 10 bp and costs about 5 bp on average: `k = 5e-4` for both models."""
    default_depth_usd: float = 5_000_000.0
    """Depth used when the market frame has no `spot_depth_usd` / `perp_depth_usd` column."""
    tick_bps: float = 0.1
    """Fixed slippage of about one price tick per traded leg, in bp of notional."""
    rebalance_band: float = 0.02
    """A hedged pair is rebalanced only when one of its legs changes by at least this fraction of
    equity (and `min_order_usd`); then both legs trade, else neither (closing always trades)."""
    min_order_usd: float = 10.0
    """Exchange minimum notional of an order; smaller changes are not traded."""

    # ---- carry and financing ----
    funding: bool = True
    """Settle funding: `-perp_qty * mark_price * funding_rate` at every settlement in the data (the
    mark: the frame's `mark_price`, else its perp price; see `CarryTradeEnv`)."""
    borrow: bool = True
    """Charge interest on borrowed coins (short spot) and on negative USDT cash."""
    spot_borrow_rate_annual: float = 0.05
    """Interest on the value of borrowed coins for the short spot leg of a reverse carry."""
    usdt_borrow_rate_annual: float = 0.10
    """Interest on negative cash (USDT borrowed on margin)."""

    # ---- margin and liquidation ----
    margin: bool = True
    """Enforce maintenance margin at the mark price, also at the bar's adverse extremes where the
    frame has them (isolated perps at `perp_high` / `perp_low`; the unified account at the
    combination of `perp_high` / `perp_low` and `spot_high` / `spot_low` that is worst for its
    legs), and liquidate when a ratio falls below 1.
    Off, nothing is liquidated, but a step that would end with negative equity still closes the
    account at zero (bankruptcy)."""
    maintenance_margin_rate: float = 0.005
    """Perp maintenance margin as a fraction of notional (Binance BTCUSDT first tier: 0.4 %-0.5
    %)."""
    spot_maintenance_rate: float = 0.1
    """Spot margin account: maintenance as a fraction of borrowed value (coins shorted plus USDT
    borrowed)."""
    liquidation_haircut_bps: float = 50.0
    """Forced closes fill this much worse than mid, on every leg."""
    liquidation_fee_rate: float = 0.01
    """Liquidation (clearance) fee as a fraction of liquidated perp notional."""
    liquidation_penalty: float = 0.1
    """Extra reward penalty on liquidation, as a fraction of equity (before `reward_scale`)."""
    liquidation_ends_episode: bool = True
    """End the episode on a liquidation (the default, so agents learn to avoid it). False keeps the
    episode going with what is left: in isolated mode the other legs stay open (the spot leg of a
    liquidated perp now unhedged); in unified mode the account has been closed as a whole. The
    penalty is charged either way; bankruptcy (equity <= 0) always ends the episode."""
    isolated_auto_add_margin: bool = False
    """Isolated mode: the venue's "auto-add margin" (Binance, Bybit). When a perp's margin ratio at
    the close or at the bar's adverse extreme falls below `auto_add_margin_trigger`, free cash is
    moved into its collateral until that ratio is back at `auto_add_margin_target` (a transfer:
    equity unchanged, `info["margin_added"]`). Free cash is positive cash the spot margin account
    can spare above its own maintenance: a top-up never borrows and never liquidates the spot
    account. With too little, what there is goes in and the perp is liquidated as without the
    option (its collateral, top-up included, is lost). Perps are topped up in asset order while
    free cash lasts; no top-ups during a halt. Off by default, so `CarryTrade-v1` keeps its
    dynamics and every figure measured on it; the pipeline's training, backtest and paper configs
    turn it on (`carry_pipeline.lib.env_config`), because a carry desk runs hedged pairs with it:
    without it the perp leg of a hedged pair is liquidated by a move its spot leg has gained on,
    although the account as a whole is sound. Ignored in unified mode (no isolated collateral)."""
    auto_add_margin_trigger: float = 2.0
    """Margin ratio (collateral at the mark / maintenance margin) below which margin is added. 2:
    collateral down to twice maintenance, 1 % of notional at the default 0.5 % maintenance rate, so
    about half a percent of further adverse move from the liquidation line. Must exceed 1 (below 1
    the perp is liquidated)."""
    auto_add_margin_target: float = 10.0
    """Margin ratio a top-up restores (at the price the trigger was met at). 10: collateral 5 % of
    notional at the default maintenance rate (20x), about two daily BTC standard deviations of
    adverse move before the next top-up, while not locking away more free cash than the other
    perps may need (the default 3x posts a ratio of 67 when the leg trades). Must exceed the
    trigger."""

    # ---- episode end ----
    drawdown_limit: float = 0.5
    """Terminate when drawdown from the episode's peak equity exceeds this fraction (0 disables)."""
    episode_length: int | None = None
    """Bars per episode; None runs to the end of the data."""
    random_start: bool = False
    """Start each episode at a random bar (drawn from `np_random`) instead of the first one."""

    # ---- reward ----
    drawdown_threshold: float = 0.05
    """`dmax`: drawdown beyond which the drawdown penalty applies."""
    drawdown_penalty: float = 0.03
    """`beta` per day: a 1 % breach held for a day costs 0.03 % of equity, about one day of 11 %
    annual
    carry."""
    volatility_penalty: float = 0.5
    """Weight on the account's annualised volatility, charged per unit of time: each step costs
    `volatility_penalty * sigma_annual * bar_years`, so a year at 2 % volatility costs 1 % of equity
    at the default, whatever the bar length. v0 charged the per-step std every step, which grew with
    sqrt(bars per year) (about 410 bp/yr on 1 h bars of real BTC carry) and made always-long-carry
    score below flat. 0.5 keeps hedged carry on real BTC 2023-06..2025-03 (about 1-2 % annual
    volatility from the basis) well above flat while an unhedged or levered book pays visibly."""
    volatility_horizon_hours: float = 8.0
    """Horizon of the returns `sigma_annual` is estimated from (whole bars; bars longer than it use
    one bar). Returns over a fixed clock horizon, not per bar, so the basis' bar-to-bar noise,
    which mean-reverts within hours, does not inflate the estimate on short bars: 15 m, 1 h and 8 h
    bars of the same market give the same figure. 8 h is one funding interval."""
    volatility_halflife_hours: float = 168.0
    """Half-life of the exponential weighting of those horizon returns (a week: 21 returns of
    8 h)."""
    turnover_penalty: float = 0.0
    """Weight on traded notional / equity (costs are already charged; this discourages churn
    further).
    """
    reward_scale: float = 10_000.0
    """Reward = scaled fractions of equity; 1e4 makes the reward read in basis points of equity."""

    # ---- anomalies (seeded from np_random) ----
    anomalies: bool = True
    """Inject flash crashes, exchange halts, funding spikes and feed outages."""
    flash_crash_per_day: float = 0.01
    """Expected flash events per day. Each follows a random path (`carry_env.anomalies`): both legs
    gap deeper over a few bars, the basis blows out and may keep widening, depth thins and the
    spread widens, then prices recover partly, fully or past their start."""
    flash_size: float = 0.1
    """Typical spot gap at a flash event's trough (drawn in [0.5, 1.5] x this); 70 % are crashes,
    30 % squeezes.
    """
    flash_basis_overshoot: float = 0.3
    """The perp leg gaps by up to this fraction more than spot: the basis blow-out."""
    flash_halflife_bars: float = 4.0
    """Half-life of the recovering part of prices and depth after a flash event's trough."""
    flash_depth_thinning: float = 0.97
    """Fraction of depth gone at the flash event's trough (v1: 0.97, books nearly empty; v0:
    0.9)."""
    halt_per_day: float = 0.005
    """Expected exchange halts per day: no fills, no liquidations, the status bit set."""
    halt_bars: int = 8
    """Length of a halt in bars."""
    feed_outage_per_day: float = 0.01
    """Expected market-data outages per day: the market block of the observation freezes and is
    flagged
    stale."""
    feed_outage_bars: int = 4
    """Length of a feed outage in bars."""
    funding_spike_prob: float = 0.01
    """Probability that a settlement prints an anomaly instead of the data's rate: half of them a
    spike of either sign, half the data's rate with its sign flipped."""
    funding_spike_bps: float = 30.0
    """Typical spike magnitude (drawn in [0.5, 1] x this)."""
    flash_deepen_bars_max: int = 6
    """A flash event deepens for D bars, D drawn in 1..this, before its trough (v0: always 1, the
    trough on the first bar, which made the reversion certain and visible)."""
    flash_basis_widen_bars_max: int = 4
    """The basis keeps widening W bars after the spot trough, W drawn in 0..this, so entering on the
    first blow-out can meet a wider one."""
    flash_recovery_min: float = 0.5
    """Smallest share of the trough that recovers with `flash_halflife_bars` (drawn per event in
    [min, max], separately for the spot level and the basis)."""
    flash_recovery_max: float = 1.3
    """Largest recovered share: above 1 the price (or the basis) overshoots past its start."""
    flash_residual_halflife_bars: float = 48.0
    """Half-life of the unrecovered residual (or the overshoot) after the trough; the event ends
    when both the spot and basis levels are below 0.1 % of the trough."""
    flash_spread_mult: float = 30.0
    """Spread at a flash event's trough as a multiple of the data's spread (scaled with the depth of
    the moment), for the simulated fills and the observation's `spread_bps`."""
    flash_spread_basis: float = 1.0
    """Extra spread during an event per bp of basis gap: at 1 the spread is at least the basis
    dislocation, so crossing both legs to trade it costs about what its reversion can pay."""

    # ---- observation ----
    expert_context_dim: int = 0
    """Length of the expert-context slot at the end of the observation (the meta-controller fills
    it).
    """

    def __post_init__(self) -> None:
        problems = []
        positive = (
            "initial_cash",
            "leverage_cap",
            "perp_leverage",
            "target_vol_annual",
            "min_leverage",
            "vol_window_hours",
            "default_depth_usd",
            "volatility_halflife_hours",
            "volatility_horizon_hours",
            "flash_halflife_bars",
            "flash_residual_halflife_bars",
            "flash_deepen_bars_max",
            "flash_spread_mult",
            "reward_scale",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                problems.append(f"{name}={getattr(self, name)!r} must be > 0")
        fractions = (
            "maker_fraction",
            "spot_collateral_haircut",
            "flash_depth_thinning",
            "funding_spike_prob",
            "drawdown_limit",
            "drawdown_threshold",
        )
        for name in fractions:
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name}={getattr(self, name)!r} must be in [0, 1]")
        non_negative = [
            f.name
            for f in fields(self)
            if f.name.endswith(("_bps", "_annual", "_per_day", "_penalty", "_rate"))
        ]
        non_negative += [
            "slippage_k",
            "rebalance_band",
            "min_order_usd",
            "halt_bars",
            "feed_outage_bars",
            "flash_size",
            "flash_basis_overshoot",
            "flash_basis_widen_bars_max",
            "flash_recovery_min",
            "flash_spread_basis",
            "expert_context_dim",
        ]
        for name in non_negative:
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)!r} must be >= 0")
        if self.min_leverage > self.leverage_cap:
            problems.append(
                f"min_leverage={self.min_leverage} exceeds leverage_cap={self.leverage_cap}"
            )
        if self.flash_recovery_max < self.flash_recovery_min:
            problems.append(
                f"flash_recovery_max={self.flash_recovery_max} is below "
                f"flash_recovery_min={self.flash_recovery_min}"
            )
        if not self.auto_add_margin_trigger > 1.0:
            problems.append(
                f"auto_add_margin_trigger={self.auto_add_margin_trigger!r} must be > 1 (a margin "
                "ratio below 1 is liquidated)"
            )
        if not math.isfinite(self.auto_add_margin_target):
            problems.append(
                f"auto_add_margin_target={self.auto_add_margin_target!r} must be finite"
            )
        elif not self.auto_add_margin_target > self.auto_add_margin_trigger:
            problems.append(
                f"auto_add_margin_target={self.auto_add_margin_target!r} must exceed "
                f"auto_add_margin_trigger={self.auto_add_margin_trigger!r}"
            )
        if self.margin_mode not in ("isolated", "unified"):
            problems.append(f"margin_mode={self.margin_mode!r} must be 'isolated' or 'unified'")
        if self.slippage_model not in ("linear", "sqrt"):
            problems.append(f"slippage_model={self.slippage_model!r} must be 'linear' or 'sqrt'")
        if self.episode_length is not None and self.episode_length < 1:
            problems.append(f"episode_length={self.episode_length} must be >= 1 or None")
        if problems:
            raise ValueError("invalid EnvConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, object]:
        """The config as plain values, for metadata and reports."""
        return asdict(self)

    def to_vector(self, bar_seconds: float) -> np.ndarray:
        """Pack the numeric config into the float64 vector the kernel reads.

        Args:
            bar_seconds: length of one bar of the market data, to turn per-day and annual rates into
            per-bar ones.
        """
        bar_days = bar_seconds / 86_400.0
        per_bar = lambda per_day: min(1.0, per_day * bar_days)  # noqa: E731 - a one-line conversion
        v = np.zeros(N_CONFIG, dtype=np.float64)
        v[C_LEVERAGE_CAP] = self.leverage_cap
        v[C_PERP_LEVERAGE] = self.perp_leverage
        v[C_SPOT_MAKER] = self.spot_maker_fee_bps * 1e-4
        v[C_SPOT_TAKER] = self.spot_taker_fee_bps * 1e-4
        v[C_PERP_MAKER] = self.perp_maker_fee_bps * 1e-4
        v[C_PERP_TAKER] = self.perp_taker_fee_bps * 1e-4
        v[C_MAKER_FRACTION] = self.maker_fraction
        v[C_SLIP_MODEL] = 0.0 if self.slippage_model == "linear" else 1.0
        v[C_SLIP_K] = self.slippage_k
        v[C_TICK_BPS] = self.tick_bps * 1e-4
        v[C_BAND] = self.rebalance_band
        v[C_MIN_ORDER] = self.min_order_usd
        v[C_SPOT_BORROW] = self.spot_borrow_rate_annual
        v[C_USDT_BORROW] = self.usdt_borrow_rate_annual
        v[C_ALLOW_REVERSE] = float(self.allow_reverse_carry)
        v[C_UNIFIED] = float(self.margin_mode == "unified")
        v[C_SPOT_HAIRCUT] = self.spot_collateral_haircut
        v[C_MMR] = self.maintenance_margin_rate
        v[C_SPOT_MMR] = self.spot_maintenance_rate
        v[C_LIQ_HAIRCUT] = self.liquidation_haircut_bps * 1e-4
        v[C_LIQ_FEE] = self.liquidation_fee_rate
        v[C_LIQ_PENALTY] = self.liquidation_penalty
        v[C_DD_LIMIT] = self.drawdown_limit
        v[C_DD_THRESHOLD] = self.drawdown_threshold
        v[C_DD_PENALTY] = self.drawdown_penalty * bar_days
        v[C_VOL_PENALTY] = self.volatility_penalty
        vol_bars = max(1, round(self.volatility_horizon_hours * 3_600.0 / bar_seconds))
        v[C_VOL_BARS] = vol_bars
        horizon_hours = vol_bars * bar_seconds / 3_600.0
        v[C_VOL_DECAY] = 0.5 ** (horizon_hours / self.volatility_halflife_hours)
        v[C_TURNOVER_PENALTY] = self.turnover_penalty
        v[C_REWARD_SCALE] = self.reward_scale
        v[C_FEES] = float(self.fees)
        v[C_SPREAD] = float(self.spread)
        v[C_SLIPPAGE] = float(self.slippage)
        v[C_FUNDING] = float(self.funding)
        v[C_BORROW] = float(self.borrow)
        v[C_MARGIN] = float(self.margin)
        v[C_ANOMALIES] = float(self.anomalies)
        v[C_P_FLASH] = per_bar(self.flash_crash_per_day)
        v[C_P_HALT] = per_bar(self.halt_per_day)
        v[C_P_OUTAGE] = per_bar(self.feed_outage_per_day)
        v[C_P_SPIKE] = self.funding_spike_prob
        v[C_FLASH_SIZE] = self.flash_size
        v[C_FLASH_BASIS] = self.flash_basis_overshoot
        v[C_FLASH_DECAY] = 0.5 ** (1.0 / self.flash_halflife_bars)
        v[C_FLASH_DEPTH] = self.flash_depth_thinning
        v[C_HALT_STEPS] = float(self.halt_bars)
        v[C_OUTAGE_STEPS] = float(self.feed_outage_bars)
        v[C_SPIKE_BPS] = self.funding_spike_bps * 1e-4
        v[C_BAR_YEARS] = bar_seconds / (365.0 * 86_400.0)
        v[C_BAR_DAYS] = bar_days
        v[C_INITIAL_CASH] = self.initial_cash
        v[C_FLASH_DEEPEN_MAX] = float(self.flash_deepen_bars_max)
        v[C_FLASH_WIDEN_MAX] = float(self.flash_basis_widen_bars_max)
        v[C_FLASH_RECOVERY_MIN] = self.flash_recovery_min
        v[C_FLASH_RECOVERY_MAX] = self.flash_recovery_max
        v[C_FLASH_RESID_DECAY] = 0.5 ** (1.0 / self.flash_residual_halflife_bars)
        v[C_FLASH_SPREAD_MULT] = self.flash_spread_mult
        v[C_FLASH_SPREAD_BASIS] = self.flash_spread_basis
        v[C_LIQ_ENDS] = float(self.liquidation_ends_episode)
        v[C_AUTO_ADD] = float(self.isolated_auto_add_margin)
        v[C_AUTO_ADD_TRIGGER] = self.auto_add_margin_trigger
        v[C_AUTO_ADD_TARGET] = self.auto_add_margin_target
        return v
