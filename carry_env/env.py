"""`CarryTradeEnv`: the spot-perpetual funding-rate carry trade as a gymnasium environment."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from carry_env import kernel as k
from carry_env.config import EnvConfig
from carry_env.engine import Engine
from carry_env.feeds import Executor, MarketFeed
from carry_env.market import MarketData


class CarryTradeEnv(gym.Env[np.ndarray, np.ndarray]):
    """Carry trade on N spot/perpetual pairs sharing one USDT cash pool.

    ## Description
    Each step is one bar of the market data. The agent sets, per asset, the size of a hedged
    position: long spot + short perp ("long carry", collects funding when it is positive) or short
    spot on borrowed coins + long perp ("reverse carry"). The env replays every cash flow an
    exchange would book: funding at every settlement in the data (8 h, 4 h and 1 h intervals all
    work), maker/taker fees, half the spread, depth-based impact and a tick, interest on borrowed
    coins and USDT, isolated (or unified) perp margin checked at the mark price and at the bar's
    adverse highs and lows, with liquidation at a haircut plus a liquidation fee and optional
    isolated auto-add margin, a volatility-dependent leverage limit, and seeded anomalies (flash
    crashes with basis blow-outs and thin books, exchange halts, funding spikes and sign flips,
    market-data outages).

    Timing: the observation at bar t uses data stamped at or before t. Orders fill at bar t's prices
    (plus costs); the clock then moves to t + 1, where positions are marked, funding settled at t +
    1 is paid on the positions held over (t, t + 1], borrow interest accrues, and margin is checked.

    Mark price: funding (`-perp_qty * mark * rate`) and maintenance margin use the frame's
    `mark_price` where it has one for the bar, else the perp price of the data; a flash event moves
    the mark with its spot gap but not with the perp's extra gap (the basis blow-out), as Binance's
    mark (index plus a clamped moving average of the basis) would. The books and `price_pnl` mark
    at the last price. With `perp_high` / `perp_low` in the frame, each isolated perp is also
    checked at the bar's adverse extreme (high for a short, low for a long, carried to the mark as
    `mark * extreme / close`); with `spot_high` / `spot_low`, so is the isolated spot margin account
    (cash and spot legs against the borrowed coins and USDT), every spot leg at its adverse extreme
    (the high for a short leg, the low for a long one). The unified account is also checked with
    every leg at its adverse extreme (long spot at `spot_low`, short spot at `spot_high`, perps as
    in isolated mode; a leg without a range at its close): the combination of extremes that
    minimises the account's margin surplus given its signs. It is a bound: the legs' extremes need
    not fall at the same moment, so a hedged pair is charged both legs' adverse ranges at once.

    Auto-add margin (`isolated_auto_add_margin`, off by default): before liquidating, the venue
    tops up each isolated perp whose ratio at the close or the adverse extreme is below
    `auto_add_margin_trigger` back to `auto_add_margin_target`, from free cash only (positive cash
    the spot margin account can spare at twice its maintenance); `info["margin_added"]` books the
    transfer, which moves no equity. With too little cash it adds what there is, and the perp is
    then liquidated as without it.

    ## Action Space
    `Box(-1, 1, (N,), float32)`: per asset a weight `a`; the hedged notional is `size = a * equity *
    leverage_cap` with spot target `+size / 2` and perp target `-size / 2` (for `a < 0` the signs
    flip). An action of any other shape than `(N,)` is an error (nothing is broadcast). Values
    outside [-1, 1] are clipped; NaN holds the asset's position unchanged. If `sum_i
    |size_i| / max_leverage_t,i` exceeds equity, all traded sizes are scaled down together
    (`info["clamped"]`). The hedged pair is rebalanced only when one of its legs changes by at least
    `rebalance_band * equity` and `min_order_usd`; then both legs trade, else neither (closing to
    zero always trades). Nothing fills during a halt.

    ## Observation Space
    `Box(-1e6, 1e6, (N * (19 + F) + 11 + E,), float32)` (values clipped to the bounds, which only
    degenerate inputs reach); `env.observation_names` names each index. Per asset i (block of 19 + F
    starting at `i * (19 + F)`):

    | idx | name | meaning |
    |-----|------|---------|
    | 0 | spot_vs_sma_pct | 100 * log(spot / 1-day SMA of spot) |
    | 1 | perp_vs_sma_pct | 100 * log(perp / 1-day SMA of perp) |
    | 2 | basis_10bp | (perp / spot - 1) in units of 10 bp |
    | 3 | spot_ret_1h_pct | 1 h log return of spot, percent |
    | 4 | spot_ret_4h_pct | 4 h log return of spot, percent |
    | 5 | realised_vol | annualised realised volatility of spot (`vol_window_hours`) |
    | 6 | log10_depth_musd | log10 of the thinner leg's depth in millions of USDT |
    | 7 | spread_bps | quoted spread, bp (widened during a flash event, as the fills pay it) |
    | 8 | funding_bp | last settled funding rate, bp |
    | 9 | funding_sma3_bp | mean of the last three settled rates, bp |
    | 10 | funding_countdown_8h | hours to the next settlement / 8 |
    | 11 | max_leverage | `max_leverage_t` of this asset |
    | 12 | sentiment | sentiment index of the bar (0 when absent) |
    | 13 | stale | 1 when a price was forward-filled or the feed is out (block keeps its values) |
    | 14 | anomaly_score | abs z-score of the last spot return vs realised vol, / 10, capped at 5 |
    | 15 | spot_exposure | spot notional / equity |
    | 16 | perp_exposure | perp notional / equity (negative when short) |
    | 17 | net_delta | (spot + perp notional) / equity |
    | 18 | perp_margin_buffer | `1 - 1/r`, r = collateral / maintenance; 0 = liquidation, 1 = flat |
    | 19.. | f_* | the market frame's feature columns, as given |

    Then the account and the clock (offset `N * (19 + F)`):

    | idx | name | meaning |
    |-----|------|---------|
    | 0 | cash | cash / equity |
    | 1 | equity_growth | equity / initial_cash - 1 |
    | 2 | unrealised_pnl | unrealised P&L against average entry prices / equity |
    | 3 | drawdown | 1 - equity / peak equity of the episode |
    | 4 | margin_buffer | `1 - 1/r` of the binding margin ratio r, in [-1, 1]; 0 = liquidation |
    | 5 | gross_leverage | gross notional of both legs / equity |
    | 6, 7 | hour_sin, hour_cos | hour of day (UTC) |
    | 8, 9 | dow_sin, dow_cos | day of week (UTC) |
    | 10 | halted | 1 while the exchange is halted |
    | 11.. | expert_* | `expert_context_dim` values from `set_expert_context` (meta-controller) |

    ## Rewards
    `reward = reward_scale * (carry + basis - costs - risk)`, each a fraction of the equity at the
    start of the step: carry = funding P&L; basis = price P&L of both legs (for a hedged book, the
    basis change); costs = fees + slippage (half-spread, impact, tick) + borrow interest +
    liquidation loss; risk = `drawdown_penalty` per day * max(0, drawdown - `drawdown_threshold`) +
    `volatility_penalty` per year * the account's annualised volatility (estimated from its returns
    over `volatility_horizon_hours` of clock time) + `turnover_penalty` * turnover / equity, +
    `liquidation_penalty` on liquidation. Every risk term is a rate of time or of notional traded,
    so the same market on 15 m, 1 h or 8 h bars gives the same yearly sum of each term. A step with
    a liquidation never has a positive reward. `info` has every term (`reward_carry`,
    `reward_basis`, `reward_costs`, `risk_penalty`) and the cash flows, which satisfy
    `equity[t+1] - equity[t] == funding_pnl + price_pnl - fees - slippage - borrow_cost -
    liquidation_loss + insurance_fund` (`insurance_fund`: the part of a gap through the bankruptcy
    price that the venue's insurance fund absorbs; `liquidation_loss` is never negative).

    ## Episode End
    `terminated` on liquidation (a margin ratio below 1; unless `liquidation_ends_episode=False`),
    bankruptcy (equity <= 0) or drawdown above `drawdown_limit`. Isolated margin liquidates only the
    failing perp (its collateral is lost, less what remains after the liquidation fee; the spot leg
    and the other assets stay open, now unhedged); unified margin liquidates the whole account, with
    equity floored at zero. An isolated perp liquidated at the close fills at the close's mark; one
    that breaches only at the bar's extreme fills at its liquidation price (the mark at which its
    ratio is exactly 1), not at the close, so the bar's recovery is not credited; an isolated spot
    margin account below its maintenance closes its spot legs (the perps stay open) at the close,
    or, when only the spot legs' extremes breach, where it crossed the line; a unified account
    that breaches only at the extremes closes every leg where it crossed the line on the straight
    path from the close to them. Either way what the position (or account) has left pays the
    haircut and fee, and anything beyond the bankruptcy price is `insurance_fund`. A step that
    would end with negative equity (margin off, or a move
    during a halt) is a bankruptcy: the venue closes every leg, equity ends at exactly 0 and the
    shortfall is `insurance_fund`. `truncated` at the end of the data or after `episode_length`
    bars.

    ## Anomalies
    Seeded from `np_random` through a stateless counter-based RNG (episode key, bar, stream), so
    every path is reproducible and the same in the single and batched envs. Flash events
    (`carry_env.anomalies`) deepen over 1..`flash_deepen_bars_max` bars to their trough, the basis
    may keep widening `flash_basis_widen_bars_max` bars longer, and the recovery is partial or
    overshoots (`flash_recovery_min`..`flash_recovery_max`, the rest fading with
    `flash_residual_halflife_bars`); while one runs, depth thins by up to `flash_depth_thinning`
    and the spread widens to `flash_spread_mult` times the data's plus the basis gap, in the fills
    and in the observation alike, so trading the dislocation costs about what it can pay. Halts
    block fills and liquidations. Feed outages freeze each market block (stale bit set) and show
    the exposure and P&L entries (`spot_exposure`, `perp_exposure`, `net_delta`, `equity_growth`,
    `unrealised_pnl`, `gross_leverage`) at the last prices seen; `info` and the books keep marking
    at the true prices. Funding anomalies spike or flip a settlement's print.

    ## Arguments
    `CarryTradeEnv(market, config=EnvConfig(), *, feed=None, executor=None, render_mode=None)`:
    `market` is a `MarketData` or a market frame (polars/pandas); `config` an `EnvConfig` (feature
    flags such as `EnvConfig(fees=False, slippage=False, anomalies=False)` serve curricula and
    ablations); `feed`/`executor` inject a `MarketFeed` and an `Executor` (default: replay `market`
    with simulated fills). `reset(options=...)` accepts `start` and `end` (bar index or UTC time) to
    replay a chosen window.

    ## Version History
    - v1: isolated margin isolates (only the failing perp is liquidated), an `insurance_fund`
      term for gaps through the bankruptcy price, unified equity floored at zero,
      `liquidation_ends_episode`; flash events follow a random path (deepening over 1-6 bars, a
      basis that can keep widening, recoveries partial or overshooting) with depth thinned by up
      to 97 % and the spread widened up to 30x plus the basis gap, in fills and observation alike;
      during feed outages the exposure and P&L entries show the last seen prices; risk terms scale
      with time (v0 charged the per-step return std every step, whose
      yearly sum grew with sqrt(bars per year) and ranked real BTC long carry below flat);
      an action not of shape `(N,)` is an error (v0 broadcast a length-1 action to every
      asset); the rebalance band and minimum order apply to the hedged pair, so both legs trade or
      neither (v0 could trade one leg only after a basis move); a frame whose settlements are
      further apart than 8 h, or than its `funding_interval_hours` says, is rejected; funding and
      margin use the mark price (optional `mark_price` column, else the data's perp price without
      the flash event's basis blow-out; v0 used the last price, so a flash spike of the perp alone
      could liquidate a hedged book); isolated margin is also checked at the bar's adverse
      `perp_high` / `perp_low` (v0 checked closes only: at `perp_leverage=10` six real BTC 8 h
      candles breach at their low and v0 liquidated none), the isolated spot margin account with
      every spot leg at its adverse extreme (optional `spot_high` / `spot_low` columns) and unified
      margin with every leg at its adverse extreme, each liquidating where the account crosses the
      line (isolated: the spot legs only); optional isolated auto-add margin
      (`isolated_auto_add_margin`, off by default, `info["margin_added"]`), which the pipeline turns
      on; equity never ends a step below zero, in either mode, even with margin off or halted (v0
      let it go negative).
    - v0: first release.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        market: MarketData | Any,
        config: EnvConfig | None = None,
        *,
        feed: MarketFeed | None = None,
        executor: Executor | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode {render_mode!r} is not one of {self.metadata['render_modes']}"
            )
        data = market if isinstance(market, MarketData) else MarketData.from_frame(market)
        self.config = config if config is not None else EnvConfig()
        self.engine = Engine(data, self.config, 1, feed=feed, executor=executor)
        self.market = self.engine.market
        self.render_mode = render_mode
        n = self.market.n_symbols
        self.action_space = spaces.Box(-1.0, 1.0, shape=(n,), dtype=np.float32)
        self.observation_space = spaces.Box(
            -k.OBS_LIMIT, k.OBS_LIMIT, shape=(self.engine.obs_dim,), dtype=np.float32
        )
        self.observation_names = self.engine.names
        self._needs_reset = True
        self._act = self.engine.act[0]
        self._obs = self.engine.obs[0]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; `options` may give `start` / `end` (bar index or UTC time)."""
        super().reset(seed=seed)
        self.engine.reset_env(0, self.np_random, options)
        self._needs_reset = False
        return self._obs.copy(), self.engine.info_dict(0)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Trade towards `action`, advance one bar, settle it."""
        if self._needs_reset:
            raise RuntimeError("call reset() before step(), and again after an episode ends")
        self._act[:] = checked_action(action, (self.market.n_symbols,))
        eng = self.engine
        eng.step()
        terminated = bool(eng.term[0])
        truncated = bool(eng.trunc[0])
        self._needs_reset = terminated or truncated
        return self._obs.copy(), float(eng.rew[0]), terminated, truncated, eng.info_dict(0)

    def set_expert_context(self, values: np.ndarray) -> None:
        """Fill the expert-context slot of the next observations (length `expert_context_dim`)."""
        v = np.asarray(values, dtype=np.float32).reshape(-1)
        if v.shape[0] != self.config.expert_context_dim:
            raise ValueError(
                f"expert context has {v.shape[0]} values; expert_context_dim is "
                f"{self.config.expert_context_dim}"
            )
        self.engine.ctx[0] = v

    def render(self) -> str | None:
        """`ansi`: one line with the bar time, equity, positions and the last step's cash flows."""
        if self.render_mode != "ansi":
            return None
        info = self.engine.info_dict(0)
        ts = np.datetime64(int(self.market.ts[self.engine.is_[0, 0]]), "ns").astype("datetime64[m]")
        return (
            f"{ts}Z equity={info['equity']:.2f} spot={np.round(info['spot_qty'], 6)} "
            f"perp={np.round(info['perp_qty'], 6)} funding={info['funding_pnl']:.2f} "
            f"fees={info['fees']:.2f} slippage={info['slippage']:.2f} "
            f"margin_ratio={info['margin_ratio']:.2f}"
        )


def checked_action(action: Any, shape: tuple[int, ...]) -> np.ndarray:
    """`action` as an array (its dtype kept; the caller's buffer converts), which must have exactly
    `shape`.

    Raises:
        ValueError: the action has another shape; the message names both (a length-1 action is
            never broadcast to every asset).
    """
    a = np.asarray(action)
    if a.shape != shape:
        raise ValueError(
            f"action has shape {a.shape}; expected {shape} "
            f"({'one weight per asset' if len(shape) == 1 else 'one row of weights per env'})"
        )
    return a
