"""Rule baselines a competent carry trader would run; every trained policy must beat them.

Each is a policy with stable-baselines3's `predict(observation, state=None, episode_start=None,
deterministic=True) -> (action, state)`, and a `reset(env)` hook that the backtest runner calls
before the first step: there the rule reads the env's observation layout (`observation_names`) and
its `leverage_cap`. The rules then decide from the observation alone, so they see exactly what an
agent sees (nothing after the current bar).

- `Flat`: never trades.
- `LongCarry`: enters long carry once (weight `weight / N` per asset; at the default 1.0 and the
  default config, spot plus perp collateral equal the equity: fully funded, no borrowed USDT) and
  holds (NaN actions) until a rebalance is forced (`BandRebalancer`).
- `FundingSignRule`: long carry when funding is above `+entry_bp`, reverse carry below
  `-entry_bp`, flat inside; with hysteresis: a long is kept until funding falls below `exit_bp`
  (`exit_bp < entry_bp`), a reverse until it rises above `-exit_bp`. Rebalances as `LongCarry`.
- `SpotBuyAndHold`: buys spot with the whole equity at the first bar and holds it. The env trades
  hedged pairs only, so this policy is flat inside the env and the runner books its equity from the
  env's spot marks (`carry_pipeline.lib.evaluation.walk_forward.spot_buy_and_hold`).

Rebalancing (`BandRebalancer`): the held weight of asset i is read from the observation, `h_i = 2 *
spot_exposure_i / leverage_cap` (the weight that would produce the current spot leg). The target is
the rule's weight scaled down as the env's leverage limit would clamp it, `w_eff_i = w_i * min(1,
1 / sum_j |w_j| * leverage_cap / max_leverage_j)`. An asset trades only when it enters, closes or
reverses, when `|h_i - w_eff_i| > band * |w_eff_i|` (price drift, or the leverage limit moved), or
when its perp margin buffer falls below `margin_floor` (re-trading resets the isolated collateral);
otherwise its action is NaN (hold). Sending the held target every bar, as `carry_env.demo` does,
makes the env re-trade whenever a leg drifts by 2 % of equity (`rebalance_band`).
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np

from carry_env.env import CarryTradeEnv


class _ObservationLayout:
    # Indices of the per-asset entries the rules read, from the env's observation names.
    def __init__(self, env: CarryTradeEnv) -> None:
        names = env.observation_names
        symbols = env.market.symbols
        index = {name: i for i, name in enumerate(names)}

        def cols(entry: str) -> np.ndarray:
            return np.array([index[f"{s}:{entry}"] for s in symbols], dtype=np.int64)

        self.n_assets = len(symbols)
        self.leverage_cap = float(env.config.leverage_cap)
        self.spot_exposure = cols("spot_exposure")
        self.margin_buffer = cols("perp_margin_buffer")
        self.max_leverage = cols("max_leverage")
        self.funding_bp = cols("funding_bp")
        self.funding_sma3_bp = cols("funding_sma3_bp")


class _RulePolicy:
    # Shared plumbing: the reset hook and the layout it reads.
    def __init__(self) -> None:
        self._layout: _ObservationLayout | None = None

    def reset(self, env: CarryTradeEnv) -> None:
        """Read the observation layout and the leverage cap of `env`; called before a backtest."""
        self._layout = _ObservationLayout(env)

    @property
    def layout(self) -> _ObservationLayout:
        """The layout read by `reset`."""
        if self._layout is None:
            raise RuntimeError(
                f"{type(self).__name__}.reset(env) must be called before predict(): the rule "
                "reads the observation layout from the env"
            )
        return self._layout


class Flat(_RulePolicy):
    """Never trades: zero weight on every asset."""

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """Zeros, one per asset."""
        return np.zeros(self.layout.n_assets), state


class BandRebalancer:
    """Hold-or-retarget decision of the rules (module docstring).

    Args:
        band: relative drift of the held weight from its target that forces a rebalance.
        margin_floor: perp margin buffer (`1 - 1/ratio`, observation entry `perp_margin_buffer`)
            below which the pair is re-traded to reset its collateral.
    """

    def __init__(self, band: float = 0.2, margin_floor: float = 0.9) -> None:
        if not 0.0 < band < 1.0:
            raise ValueError(f"band={band} must be in (0, 1)")
        if not 0.0 <= margin_floor < 1.0:
            raise ValueError(f"margin_floor={margin_floor} must be in [0, 1)")
        self.band = band
        self.margin_floor = margin_floor

    def effective_targets(
        self, weights: np.ndarray, max_leverage: np.ndarray, cap: float
    ) -> np.ndarray:
        """`weights` scaled down together as the env's leverage budget would clamp them."""
        used = float(np.sum(np.abs(weights) * cap / max_leverage))
        return weights * min(1.0, 1.0 / used) if used > 0 else weights

    def actions(
        self, weights: np.ndarray, observation: np.ndarray, layout: _ObservationLayout
    ) -> np.ndarray:
        """Per asset: the effective target where a trade is due, else NaN (hold)."""
        out = np.empty(layout.n_assets)
        _band_actions(
            np.asarray(weights, dtype=np.float64),
            np.asarray(observation, dtype=np.float64),
            layout.spot_exposure,
            layout.max_leverage,
            layout.margin_buffer,
            layout.leverage_cap,
            self.band,
            self.margin_floor,
            out,
        )
        return out


@nb.njit(cache=True)
def _band_actions(
    weights: np.ndarray,
    obs: np.ndarray,
    spot_exposure: np.ndarray,
    max_leverage: np.ndarray,
    margin_buffer: np.ndarray,
    cap: float,
    band: float,
    margin_floor: float,
    out: np.ndarray,
) -> None:
    # BandRebalancer.actions, compiled: the rules run every bar, and a dozen numpy calls on arrays
    # of N values cost ~40 us a bar from Python (more than the env step).
    used = 0.0
    for i in range(weights.shape[0]):
        used += abs(weights[i]) * cap / obs[max_leverage[i]]
    scale = min(1.0, 1.0 / used) if used > 0.0 else 1.0
    for i in range(weights.shape[0]):
        target = weights[i] * scale
        held = 2.0 * obs[spot_exposure[i]] / cap
        flat_now = abs(held) < 1e-9
        held_side = 0.0 if flat_now else np.sign(held)
        changes_side = np.sign(target) != held_side
        drifted = abs(held - target) > band * abs(target)
        thin_margin = (not flat_now) and obs[margin_buffer[i]] < margin_floor
        due = changes_side or (target != 0.0 and (drifted or thin_margin))
        out[i] = target if due else np.nan


class LongCarry(_RulePolicy):
    """Long carry in every asset at `weight / N` each, rebalanced only when forced.

    Args:
        weight: total action weight over the assets (1.0: fully funded at the default config).
        rebalancer: when a rebalance is forced; default `BandRebalancer()`.
    """

    def __init__(self, weight: float = 1.0, rebalancer: BandRebalancer | None = None) -> None:
        super().__init__()
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"weight={weight} must be in (0, 1]")
        self.weight = weight
        self.rebalancer = rebalancer or BandRebalancer()

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """Enter, rebalance when forced, else hold (NaN)."""
        n = self.layout.n_assets
        weights = np.full(n, self.weight / n)
        return self.rebalancer.actions(weights, observation, self.layout), state


def hysteresis_states(
    signal: np.ndarray, entry_bp: float, exit_bp: float, initial: np.ndarray | None = None
) -> np.ndarray:
    """The funding rule's side (+1 long carry, -1 reverse, 0 flat) after each signal row.

    From flat: +1 above `entry_bp`, -1 below `-entry_bp`. From +1: -1 below `-entry_bp`, else 0
    below `exit_bp`. From -1: +1 above `entry_bp`, else 0 above `-exit_bp`.

    Args:
        signal: `[T, N]` (or `[N]`) funding in bp.
        initial: sides before the first row (default flat).
    """
    sig = np.atleast_2d(np.asarray(signal, dtype=np.float64))
    side = np.zeros(sig.shape[1]) if initial is None else np.asarray(initial, dtype=np.float64)
    out = np.empty_like(sig)
    for t in range(sig.shape[0]):
        side = next_side(side, sig[t], entry_bp, exit_bp)
        out[t] = side
    return out


def next_side(side: np.ndarray, signal: np.ndarray, entry_bp: float, exit_bp: float) -> np.ndarray:
    """One step of `hysteresis_states`."""
    long_in = signal > entry_bp
    rev_in = signal < -entry_bp
    new = np.where(long_in, 1.0, np.where(rev_in, -1.0, side))
    new = np.where((side == 1.0) & ~rev_in & (signal < exit_bp), 0.0, new)
    new = np.where((side == -1.0) & ~long_in & (signal > -exit_bp), 0.0, new)
    return new


class FundingSignRule(_RulePolicy):
    """Funding-sign carry with hysteresis (module docstring).

    Args:
        entry_bp: funding (bp per settlement) above which long carry opens, below whose negative
            reverse carry opens.
        exit_bp: a long closes below it, a reverse above its negative; must be below `entry_bp`.
        signal: observation entry read per asset: `funding_sma3_bp` (mean of the last three
            settled rates) or `funding_bp` (the last one).
        weight: total action weight over the assets, as `LongCarry`.
        rebalancer: as `LongCarry`.
    """

    def __init__(
        self,
        entry_bp: float = 0.5,
        exit_bp: float = 0.0,
        *,
        signal: str = "funding_sma3_bp",
        weight: float = 1.0,
        rebalancer: BandRebalancer | None = None,
    ) -> None:
        super().__init__()
        if not exit_bp < entry_bp:
            raise ValueError(
                f"exit_bp={exit_bp} must be below entry_bp={entry_bp}: without the gap there is "
                "no hysteresis"
            )
        if entry_bp <= 0:
            raise ValueError(f"entry_bp={entry_bp} must be > 0")
        if signal not in ("funding_sma3_bp", "funding_bp"):
            raise ValueError(f"signal={signal!r} must be 'funding_sma3_bp' or 'funding_bp'")
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"weight={weight} must be in (0, 1]")
        self.entry_bp, self.exit_bp, self.signal, self.weight = entry_bp, exit_bp, signal, weight
        self.rebalancer = rebalancer or BandRebalancer()
        self._side = np.zeros(0)

    def reset(self, env: CarryTradeEnv) -> None:
        """Read the layout and start flat."""
        super().reset(env)
        self._side = np.zeros(self.layout.n_assets)

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """Update each asset's side from its funding, then rebalance as `LongCarry`."""
        layout = self.layout
        obs = np.asarray(observation, dtype=np.float64)
        cols = layout.funding_sma3_bp if self.signal == "funding_sma3_bp" else layout.funding_bp
        self._side = next_side(self._side, obs[cols], self.entry_bp, self.exit_bp)
        weights = self._side * (self.weight / layout.n_assets)
        return self.rebalancer.actions(weights, obs, layout), state


class SpotBuyAndHold(Flat):
    """Spot bought with all the equity at the first bar and held (no hedge, no funding).

    Flat inside the env; the walk-forward runner books its equity from the recorded spot marks
    (`walk_forward.spot_buy_and_hold`), with the entry paying the spot taker fee, half the spread
    and the depth impact of the env's config, split equally over the assets.
    """
