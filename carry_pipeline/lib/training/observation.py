"""What an expert sees: the fold's normalised sliding windows next to the env's account state.

At each bar an expert sees, per asset, the window of `training_windows` whose end time is the latest
at or before the bar's `ts` (never one ending after it), optionally a longer history made of several
consecutive windows (thinned by a stride), beside chosen entries of `CarryTradeEnv`'s observation.

The bar -> window-row map is computed once per env as an int64 array (`window_rows`), so a step only
gathers rows with numpy fancy indexing; nothing loops over bars or envs in Python.

Observation (`gymnasium.spaces.Dict`, float32), per env, N assets:

- `window` `(N, R, Fw)`: R = ceil(history_windows * lookback / history_stride) rows of the
  normalised window values, oldest first, ending at the latest window end <= the bar; zeros while
  no window has ended yet.
- `asset` `(N, Fa)`: `asset_fields` of each asset's block of the env observation.
- `global` `(G + 2,)`: `global_fields` of the env observation, then `window_valid` (1 when a window
  exists) and `window_age_days` (bar time minus window end, in days; 0 on a gap-free grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs

from carry_env import kernel as k
from carry_env.engine import ASSET_MARKET_NAMES, ASSET_PORTFOLIO_NAMES, GLOBAL_NAMES
from carry_pipeline.lib.features.windows import open_windows

US_PER_NS = 1_000
NS_PER_DAY = 86_400 * 1_000_000_000
ASSET_FIELDS = (*ASSET_MARKET_NAMES, *ASSET_PORTFOLIO_NAMES)
"""Per-asset entries of the env observation an expert may select (the `f_*` ones come from the
windows instead, normalised)."""
Output = Literal["weights", "exposure"]


@dataclass(frozen=True, eq=False)
class WindowSet:
    """One fold segment of `training_windows`: the normalised `(T, S, F)` values and their times.

    A window ending at row r is `values[r - lookback + 1 : r + 1]`; windows end at rows
    `first_window_row .. T - 1`.
    """

    values: np.ndarray
    """`(T, S, F)` float32, normalised with the fold's train statistics (may be a memmap)."""
    ts_us: np.ndarray
    """`(T,)` int64 bar close times, microseconds since the epoch, strictly increasing."""
    lookback: int
    first_window_row: int
    symbols: tuple[str, ...]
    features: tuple[str, ...]
    fold: int = -1
    segment: str = "train"
    span: tuple[Any, Any] | None = None
    """`(span_start, span_end)` of the segment (half-open), as the manifest gives it."""

    def __post_init__(self) -> None:
        t, s, f = self.values.shape
        where = f"fold {self.fold} {self.segment} windows"
        if self.ts_us.shape != (t,):
            raise ValueError(f"{where}: {self.ts_us.shape[0]} times for {t} rows of values")
        if t > 1 and not (np.diff(self.ts_us) > 0).all():
            raise ValueError(f"{where}: bar times are not strictly increasing")
        if (s, f) != (len(self.symbols), len(self.features)):
            raise ValueError(
                f"{where}: values have {s} symbols x {f} features; the manifest names "
                f"{len(self.symbols)} x {len(self.features)}"
            )
        if not self.lookback - 1 <= self.first_window_row < max(t, 1):
            raise ValueError(
                f"{where}: first_window_row {self.first_window_row} is not in "
                f"[{self.lookback - 1}, {t - 1}]"
            )

    @classmethod
    def from_manifest_row(cls, row: dict) -> WindowSet:
        """Memory-map one `training_windows` manifest row (see `lib.features.windows`)."""
        import json

        open_windows(row)  # validates that the files exist and agree with the row
        return cls(
            values=np.load(row["values_path"], mmap_mode="r"),
            ts_us=np.asarray(np.load(row["ts_path"], mmap_mode="r"), dtype=np.int64),
            lookback=int(row["lookback"]),
            first_window_row=int(row["first_window_row"]),
            symbols=tuple(json.loads(row["symbols"])),
            features=tuple(json.loads(row["features"])),
            fold=int(row["fold"]),
            segment=str(row["segment"]),
            span=(row["span_start"], row["span_end"]),
        )

    @property
    def end_ts_us(self) -> np.ndarray:
        """End time of every window, in window order."""
        return self.ts_us[self.first_window_row :]

    def window(self, i: int) -> np.ndarray:
        """Window i (`(lookback, S, F)`), as `open_windows` lists it."""
        r = self.first_window_row + i
        return np.asarray(self.values[r - self.lookback + 1 : r + 1])


@dataclass(frozen=True)
class ObservationSpec:
    """Which parts of the windows and of the env observation an expert sees."""

    window_features: tuple[str, ...] | None = None
    """Feature-name prefixes to keep from the windows (e.g. `("f_sent_", "f_funding")`); None keeps
    all."""
    history_windows: int = 1
    """Consecutive windows per observation: the history covers `history_windows * lookback` bars
    ending at the latest window end (a frame stack without overlap, for multi-day horizons)."""
    history_stride: int = 1
    """Keep every `history_stride`-th row of that history, counted back from its end."""
    asset_fields: tuple[str, ...] = ASSET_PORTFOLIO_NAMES
    """Per-asset env observation entries (names from `ASSET_FIELDS`)."""
    global_fields: tuple[str, ...] = ("cash", "drawdown", "margin_buffer", "gross_leverage")
    """Account/clock env observation entries (names from `carry_env.engine.GLOBAL_NAMES`)."""

    def problems(self) -> list[str]:
        """What is wrong with the spec, one message per field (empty when valid)."""
        out = []
        if self.history_windows < 1:
            out.append(f"history_windows={self.history_windows} must be >= 1")
        if self.history_stride < 1:
            out.append(f"history_stride={self.history_stride} must be >= 1")
        bad = [n for n in self.asset_fields if n not in ASSET_FIELDS]
        if bad:
            out.append(f"asset_fields {bad} are not env per-asset entries {list(ASSET_FIELDS)}")
        bad = [n for n in self.global_fields if n not in GLOBAL_NAMES]
        if bad:
            out.append(f"global_fields {bad} are not env global entries {list(GLOBAL_NAMES)}")
        return out

    def history_offsets(self, lookback: int) -> np.ndarray:
        """Row offsets of the history relative to the window's end row, oldest first (<= 0)."""
        n_rows = math.ceil(self.history_windows * lookback / self.history_stride)
        return -np.arange(n_rows - 1, -1, -1, dtype=np.int64) * self.history_stride


def window_index(bar_ts_ns: np.ndarray, end_ts_us: np.ndarray) -> np.ndarray:
    """For each bar, the index of the window whose end is the latest at or before the bar.

    Args:
        bar_ts_ns: `(T,)` bar times, int64 nanoseconds (`MarketData.ts`).
        end_ts_us: `(W,)` window end times, int64 microseconds, increasing.

    Returns:
        `(T,)` int64 window indices; -1 where no window has ended by the bar.
    """
    ends_ns = np.asarray(end_ts_us, dtype=np.int64) * US_PER_NS
    return np.searchsorted(ends_ns, np.asarray(bar_ts_ns, dtype=np.int64), side="right") - 1


@dataclass(frozen=True, eq=False)
class ObservationBuilder:
    """Precomputed gathers from (env observation, bar index) to the expert's Dict observation."""

    windows: WindowSet
    spec: ObservationSpec
    bar_ts_ns: np.ndarray
    env_names: Sequence[str]
    symbols: tuple[str, ...]
    rows: np.ndarray = field(init=False)
    """`(T, R)` value rows of each bar's history."""
    valid: np.ndarray = field(init=False)
    age_days: np.ndarray = field(init=False)
    feature_idx: np.ndarray = field(init=False)
    symbol_idx: np.ndarray = field(init=False)
    """`(S,)` the windows' symbol axis, in their order."""
    source: np.ndarray = field(init=False)
    """`(T, S, F')` float32 values the windows are gathered from: the windows' own (a memmap) when
    the spec reads every feature, else a copy of the features it reads (`feature_idx`)."""
    asset_idx: np.ndarray = field(init=False)
    global_idx: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        w, spec = self.windows, self.spec
        if spec.problems():
            raise ValueError("invalid ObservationSpec: " + "; ".join(spec.problems()))
        widx = window_index(self.bar_ts_ns, w.end_ts_us)
        end_row = np.where(widx >= 0, widx + w.first_window_row, 0)
        offsets = spec.history_offsets(w.lookback)
        rows = end_row[:, None] + offsets[None, :]
        valid = (widx >= 0) & (rows[:, 0] >= 0)
        end_ns = w.ts_us[end_row].astype(np.int64) * US_PER_NS
        age = np.where(valid, (self.bar_ts_ns - end_ns) / NS_PER_DAY, 0.0)
        set_ = object.__setattr__
        set_(self, "rows", np.where(valid[:, None], np.maximum(rows, 0), 0))
        set_(self, "valid", valid)
        set_(self, "age_days", age.astype(np.float32))
        set_(self, "feature_idx", _feature_indices(w.features, spec.window_features, w.fold))
        set_(self, "symbol_idx", np.arange(len(w.symbols), dtype=np.int64))
        values = np.asarray(w.values)
        if self.feature_idx.shape[0] == values.shape[2] and values.dtype == np.float32:
            set_(self, "source", values)  # every feature, in order (`_feature_indices`)
        else:
            set_(self, "source", np.ascontiguousarray(values[:, :, self.feature_idx], np.float32))
        index = {name: i for i, name in enumerate(self.env_names)}
        set_(
            self,
            "asset_idx",
            np.array(
                [[index[f"{s}:{n}"] for n in spec.asset_fields] for s in self.symbols],
                dtype=np.int64,
            ).reshape(len(self.symbols), len(spec.asset_fields)),
        )
        set_(self, "global_idx", np.array([index[n] for n in spec.global_fields], dtype=np.int64))

    @property
    def observation_space(self) -> spaces.Dict:
        """The Dict space of one env's observation."""
        n, r, f = len(self.symbols), self.rows.shape[1], self.feature_idx.shape[0]
        box = lambda *shape: spaces.Box(-k.OBS_LIMIT, k.OBS_LIMIT, shape, np.float32)  # noqa: E731
        return spaces.Dict(
            {
                "window": box(n, r, f),
                "asset": box(n, self.asset_idx.shape[1]),
                "global": box(self.global_idx.shape[0] + 2),
            }
        )

    def build(self, env_obs: np.ndarray, bars: np.ndarray) -> dict[str, np.ndarray]:
        """The Dict observation of a batch: `env_obs` `(B, D)` at bar indices `bars` `(B,)`."""
        bars = np.asarray(bars, dtype=np.int64)
        rows = self.rows[bars]  # (B, R)
        # One gather straight into the (B, S, R, F) layout (6x faster than gathering rows, then
        # features, then transposing: this runs for every expert on every bar it decides).
        win = self.source[rows[:, None, :], self.symbol_idx[None, :, None]]
        valid = self.valid[bars]
        if not valid.all():
            win[~valid] = 0.0  # no window has ended by the bar: zeros, flagged in `global`
        glob = np.concatenate(
            [
                env_obs[:, self.global_idx],
                self.valid[bars, None].astype(np.float32),
                self.age_days[bars, None],
            ],
            axis=1,
        )
        return {
            "window": win,
            "asset": env_obs[:, self.asset_idx].astype(np.float32),
            "global": glob.astype(np.float32),
        }


def _feature_indices(
    features: tuple[str, ...], prefixes: tuple[str, ...] | None, fold: int
) -> np.ndarray:
    if prefixes is None:
        return np.arange(len(features), dtype=np.int64)
    idx = [i for i, name in enumerate(features) if name.startswith(tuple(prefixes))]
    if not idx:
        raise ValueError(
            f"fold {fold}: no window feature starts with {list(prefixes)}; the windows have "
            f"{list(features)}"
        )
    return np.array(idx, dtype=np.int64)


def current_bars(venv: Any) -> np.ndarray:
    """Bar index of each env's current observation in a (wrapped) `CarryTradeVectorEnv`."""
    return base_vector_env(venv).engine.is_[:, k.I_T].copy()


def array_observation(obs: VecEnvObs, where: str) -> np.ndarray:
    """`obs` as the `(B, D)` array a wrapped `CarryTradeVectorEnv` returns (SB3 types a `VecEnv`'s
    observations as array, dict or tuple).

    Raises:
        TypeError: naming `where`, when the wrapped env returned a dict or tuple.
    """
    if not isinstance(obs, np.ndarray):
        raise TypeError(
            f"{where}: the wrapped env returned {type(obs).__name__} observations; expected the "
            "(B, D) array of a CarryTradeVectorEnv"
        )
    return obs


def base_vector_env(venv: Any) -> Any:
    """The `CarryTradeVectorEnv` under SB3 wrappers and the `SB3VecEnv` adapter."""
    env = venv
    while not hasattr(env, "engine"):
        if hasattr(env, "venv"):
            env = env.venv
        else:
            raise TypeError(f"{type(venv).__name__} does not wrap a CarryTradeVectorEnv")
    return env


def reference_carry(
    env_obs: np.ndarray,
    env_names: Sequence[str],
    entry_bp: float = 0.5,
    exit_bp: float = 0.0,
) -> np.ndarray:
    """The book an exposure multiplier scales, `(B, N)`: per asset full long carry (1) when the
    3-settlement funding mean is above `entry_bp`, full reverse carry (-1) below `-entry_bp`, and
    flat (0) in between, except that a held book is kept through the band: a long (its spot leg
    long in the observation) until the mean falls below `exit_bp`, a reverse until it rises above
    `-exit_bp` (a book the multiplier cut to flat enters again only past `entry_bp`). These are
    `FundingSignRule`'s rule and default thresholds; without the hysteresis every crossing of
    `entry_bp` re-traded the whole book (the anomaly expert made 47-150 fills a 10-day fold in
    `make run`, against the rule's 7-27)."""
    if not exit_bp < entry_bp:
        raise ValueError(f"exit_bp={exit_bp} must be below entry_bp={entry_bp}")
    index = {n: i for i, n in enumerate(env_names)}
    symbols = [
        n.removesuffix(":funding_sma3_bp") for n in env_names if n.endswith(":funding_sma3_bp")
    ]
    sma = env_obs[:, [index[f"{s}:funding_sma3_bp"] for s in symbols]]
    held = env_obs[:, [index[f"{s}:spot_exposure"] for s in symbols]]  # same asset order
    long = (sma > entry_bp) | ((held > 0) & (sma >= exit_bp))
    reverse = (sma < -entry_bp) | ((held < 0) & (sma <= -exit_bp))
    return np.where(long, 1.0, np.where(reverse, -1.0, 0.0))


class ExpertVecEnv(VecEnvWrapper):
    """SB3 `VecEnv` wrapper over `SB3VecEnv(CarryTradeVectorEnv)`: Dict observations from the
    windows (see the module docstring) and the expert's action mapping.

    Actions: `output="weights"` passes the policy's action to the env (continuous weights in [-1, 1]
    per asset, or the discrete env's choice). `output="exposure"`: the policy's `a` in [-1, 1] per
    asset is the multiplier `m = (a + 1) / 2` in [0, 1], and the env trades `m *
    reference_carry(obs)`, so `m = 0` is flat and `m = 1` the full reference book; with a
    `band` (`ExposureBand`) the book re-trades only past it and holds (NaN) otherwise.
    """

    def __init__(
        self,
        venv: VecEnv,
        builder: ObservationBuilder,
        output: Output = "weights",
        band: ExposureBand | None = None,
    ) -> None:
        self.builder = builder
        self.output = output
        self.band = band
        self._base = base_vector_env(venv)
        if self._base.market.symbols != builder.symbols:
            raise ValueError(
                f"fold {builder.windows.fold}: env symbols {list(self._base.market.symbols)} "
                "differ "
                f"from the observation builder's {list(builder.symbols)}"
            )
        super().__init__(venv, observation_space=builder.observation_space)
        self._raw: np.ndarray | None = None
        self._prev_bars: np.ndarray | None = None

    @property
    def raw_observation(self) -> np.ndarray:
        """The wrapped env's current observations `(B, D)` (`observation_names` order), from which
        the Dict observations are built.

        Raises:
            RuntimeError: before the first `reset`.
        """
        if self._raw is None:
            raise RuntimeError("ExpertVecEnv.raw_observation is read before reset()")
        return self._raw

    def reset(self) -> dict[str, np.ndarray]:
        """Reset the envs and return the first Dict observations."""
        self._raw = array_observation(self.venv.reset(), "ExpertVecEnv.reset")
        return self.builder.build(self._raw, current_bars(self._base))

    def step_async(self, actions: np.ndarray) -> None:
        """Map the actions (see the class docstring) and pass them on."""
        self._prev_bars = current_bars(self._base)
        self.venv.step_async(
            map_actions(
                self.output,
                actions,
                self.raw_observation,
                self._base.observation_names,
                leverage_cap=self._base.config.leverage_cap,
                band=self.band,
            )
        )

    def step_wait(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, list[dict]]:
        """Step; a finished env's `terminal_observation` is built at the bar its episode ended."""
        raw, rew, dones, infos = self.venv.step_wait()
        raw = array_observation(raw, "ExpertVecEnv.step_wait")
        self._raw = raw
        obs = self.builder.build(raw, current_bars(self._base))
        done = np.flatnonzero(dones)
        if done.size:
            if self._prev_bars is None:
                raise RuntimeError("ExpertVecEnv.step_wait is called before step_async()")
            final_raw = np.stack([infos[b]["terminal_observation"] for b in done])
            # A step advances the clock by one bar, or to the `terminal_bar` a `DecisionVecEnv`
            # (several bars a step) names.
            final_bars = [infos[b].get("terminal_bar", self._prev_bars[b] + 1) for b in done]
            final = self.builder.build(final_raw, np.asarray(final_bars, dtype=np.int64))
            for j, b in enumerate(done):
                infos[b]["terminal_observation"] = {key: v[j] for key, v in final.items()}
        return obs, rew, dones, infos


def exposure_multiplier(actions: np.ndarray) -> np.ndarray:
    """Policy actions in [-1, 1] (clipped) -> exposure multipliers in [0, 1]."""
    return (np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0) + 1.0) / 2.0


def leverage_fit(weights: np.ndarray, max_leverage: np.ndarray, leverage_cap: float) -> np.ndarray:
    """`(B, N)` weights scaled down together as the env's leverage limit would clamp them:
    `w * min(1, 1 / sum_j |w_j| * leverage_cap / max_leverage_j)` per row."""
    w = np.asarray(weights, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero limit: nothing may be held
        per = np.where(w != 0.0, np.abs(w) * leverage_cap / max_leverage, 0.0)
        used = np.sum(per, axis=1, keepdims=True)
        return w * np.minimum(1.0, 1.0 / np.where(used > 0.0, used, 1.0))


@dataclass(frozen=True)
class ExposureBand:
    """When an exposure expert's book `m * reference_carry` re-trades: cut fast, add slowly.

    Per asset, with the held weight `h = 2 * spot_exposure / leverage_cap` (the weight that made
    the spot leg, as `evaluation.baselines.BandRebalancer` reads it) and the target `t` scaled down
    as the env's leverage limit would clamp it (`t * min(1, 1 / sum_j |t_j| * cap / max_lev_j)`),
    the asset trades to `t` when it enters, closes or reverses (so a cut to 0 passes at once), when
    it cuts by more than `cut` of the held size (`|h| - |t| > cut * |h|`), when it adds more than
    `add` of the target size (`|t| - |h| > add * |t|`), or when its perp margin buffer is below
    `margin_floor`; otherwise its action is NaN (hold). Without it every move of the multiplier
    past the env's 2 % `rebalance_band` re-traded the book: the anomaly expert made 116 fills and
    lost 1.06 % a 10-day fold in `make run`, most of it fees.
    """

    cut: float = 0.1
    """Smallest cut that trades, as a fraction of the held size."""
    add: float = 0.25
    """Smallest addition that trades, as a fraction of the target size."""
    margin_floor: float = 0.9
    """Perp margin buffer (`1 - 1/ratio`) below which a held pair re-trades (`BandRebalancer`)."""

    def __post_init__(self) -> None:
        bad = [
            f"{name}={getattr(self, name)} must be in [0, 1)"
            for name in ("cut", "add", "margin_floor")
            if not 0.0 <= getattr(self, name) < 1.0
        ]
        if bad:
            raise ValueError("ExposureBand: " + "; ".join(bad))

    def actions(
        self,
        targets: np.ndarray,
        env_obs: np.ndarray,
        env_names: Sequence[str],
        leverage_cap: float,
    ) -> np.ndarray:
        """`(B, N)` env actions for the `(B, N)` targets: the clamped target where a trade is due,
        NaN where the held book stays."""
        index = {n: i for i, n in enumerate(env_names)}
        symbols = [
            n.removesuffix(":spot_exposure") for n in env_names if n.endswith(":spot_exposure")
        ]

        def entry(field_name: str) -> np.ndarray:
            return env_obs[:, [index[f"{s}:{field_name}"] for s in symbols]]

        target = leverage_fit(targets, entry("max_leverage"), leverage_cap)
        held = 2.0 * entry("spot_exposure") / leverage_cap
        held_side = np.where(np.abs(held) < 1e-9, 0.0, np.sign(held))
        changes_side = np.sign(target) != held_side
        size_h, size_t = np.abs(held), np.abs(target)
        cut = size_h - size_t > self.cut * size_h
        add = size_t - size_h > self.add * size_t
        thin = (held_side != 0.0) & (entry("perp_margin_buffer") < self.margin_floor)
        due = changes_side | ((target != 0.0) & (cut | add | thin))
        return np.where(due, target, np.nan)


def map_actions(
    output: Output,
    actions: np.ndarray,
    env_obs: np.ndarray,
    env_names: Sequence[str],
    *,
    leverage_cap: float,
    band: ExposureBand | None = None,
) -> np.ndarray:
    """The env's actions for a policy's: unchanged for `weights`; for `exposure`, `m *
    reference_carry` through `band` (see `ExpertVecEnv`; None: the targets as they are)."""
    if output == "exposure":
        targets = exposure_multiplier(actions) * reference_carry(env_obs, env_names)
        if band is None:
            return targets
        return band.actions(targets, env_obs, env_names, leverage_cap)
    return np.asarray(actions)


def make_expert_env(
    market: Any,
    windows: WindowSet,
    spec: ObservationSpec,
    config: Any,
    n_envs: int,
    *,
    output: Output = "weights",
    discrete: bool = False,
    decision_bars: int = 1,
    band: ExposureBand | None = None,
) -> ExpertVecEnv:
    """`ExpertVecEnv` over `SB3VecEnv` over a batched carry env (`CarryTradeDiscreteVectorEnv`
    when `discrete`) on `market` with `config`; with `decision_bars` > 1 a
    `cadence.DecisionVecEnv` between them makes one step that many bars; `band` as in
    `ExpertVecEnv`."""
    from carry_env.discrete import CarryTradeDiscreteVectorEnv
    from carry_env.vector import CarryTradeVectorEnv, SB3VecEnv
    from carry_pipeline.lib.training.cadence import DecisionVecEnv

    cls = CarryTradeDiscreteVectorEnv if discrete else CarryTradeVectorEnv
    base = cls(market, config, n_envs)
    builder = ObservationBuilder(
        windows, spec, base.market.ts, base.observation_names, base.market.symbols
    )
    venv: VecEnv = SB3VecEnv(base)
    if decision_bars > 1:
        venv = DecisionVecEnv(venv, decision_bars, discrete=discrete)
    return ExpertVecEnv(venv, builder, output, band)
