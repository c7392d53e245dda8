"""The meta-controller: a PPO agent gating frozen experts (plus "flat") on the batched carry env.

Meta-environment (`MetaVecEnv`, an SB3 `VecEnv` wrapper over `SB3VecEnv(CarryTradeVectorEnv)`,
through a `cadence.DecisionVecEnv` when `decision_bars` > 1). At each decision (every
`decision_bars` bars; the book is held in between) every frozen expert sees its own observation
(its `ObservationBuilder` over the same env observation and the fold's windows) and suggests an
action; the meta-controller sees, flat (float32):

- per gated expert j (K of them): its suggested weights `a_j` `(N,)`, its recent reward and its
  running Sharpe (what the env's expert-context slot is reserved for; built by this wrapper after
  each step, since the slot would lag them by one bar);
- the anomaly expert's exposure multiplier `m` `(N,)` (ones without one);
- its own running usage of the K + 1 options (EWMA of its gating weights over the episode);
- account state: `cash`, `drawdown`, `margin_buffer`, `gross_leverage` and per asset
  `spot_exposure`, `perp_exposure`, `funding_sma3_bp`.

An expert's reward on a decision is what its suggestion would have earned per unit weight
before costs over the decision's bars: the mean over assets of `a_j * (settled funding - basis
change)` in bp (a long-carry unit, long spot and short perp, receives positive funding and loses
when the basis widens). "Recent" is its EWMA with half-life `reward_halflife` bars (one update per
decision), and the running Sharpe is that EWMA mean over the EWMA standard deviation (clipped to
+-5); both restart at each episode.

Action: K + 1 values in [-1, 1], logits `logit_scale * action`. Gating `softmax` (default) gives
the weights `w = softmax(logits)`, `top1` the one-hot of the argmax. The env trades
`m * fit(sum_j w_j a_j)` (flat's suggestion is zero): a convex combination of actions in [-1, 1],
scaled down to the env's leverage limit (`fit`, so that `m` cuts the book the env would hold
rather than an over-limit book the env's clamp absorbs), times `m` in [0, 1]; it stays in the
env's action space and the env enforces leverage, capital and margin on it as on any action.

Between decisions the book is held, except for the anomaly expert's risk overlay
(`MetaCore.between`): it is read every bar, and a multiplier more than its `band_cut` below the
one the book was sized with cuts the book at once (to the last decision's mix times the new
multiplier); a rising multiplier waits for the next decision.

Reward: the env's reward (bp of equity) summed over the decision's bars, plus `entropy_weight *
days * H(w) / log(K + 1)` (normalised entropy, in [0, 1]; `days` the decision's length), minus
`balance_weight * days * ((K + 1) * sum_j u_j^2 - 1)` where `u` is the running usage: 0 when the
options are used evenly, K when all weight sits on one option, so collapse costs reward. Both
weights are bp of equity per day, scaled by the decision's length in days like the env's risk
terms (and by the env's `reward_scale` when its reward is not in bp), so a day of shaping weighs
the same on any bar and stays small next to the carry it must not outweigh (a full book's funding
is about 2 bp a day on the demo market).

`train_meta_controller(...)` mirrors `train.train_expert`: input checks, pinned threads, seed,
progress lines, validation on the held-out tail, atomic save under `<models_root>/meta/fold<k>/`,
and the registry row.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecMonitor

from carry_env.config import EnvConfig
from carry_env.market import MarketData
from carry_pipeline.lib.env_config import PIPELINE_ENV_CONFIG
from carry_pipeline.lib.training.cadence import (
    DecisionClock,
    DecisionVecEnv,
    episode_problems,
)
from carry_pipeline.lib.training.observation import (
    ObservationBuilder,
    WindowSet,
    array_observation,
    base_vector_env,
    current_bars,
    leverage_fit,
)
from carry_pipeline.lib.training.policy import (
    ExpertPolicy,
    eval_predict,
    load_expert,
    pinned_threads,
)
from carry_pipeline.lib.training.rollout import RolloutMetrics, _accumulate, _fixed_span
from carry_pipeline.lib.training.specs import PROFILES
from carry_pipeline.lib.training.train import (
    FoldSpan,
    Logger,
    ProgressCallback,
    TrainingRecord,
    _dt,
    check_inputs,
    data_sha256,
    save_expert,
)

GATINGS = ("softmax", "top1")
GLOBAL_FIELDS = ("cash", "drawdown", "margin_buffer", "gross_leverage")
ASSET_FIELDS = ("spot_exposure", "perp_exposure", "funding_sma3_bp")
SHARPE_CLIP = 5.0
BP = 1e4


@dataclass(frozen=True)
class MetaSpec:
    """How the meta-controller trains (JSON via `to_dict` / `from_dict`)."""

    name: str = "meta"
    """Models folder `<models_root>/<name>/<fold>/`."""
    gating: str = "softmax"
    """`softmax`: weights = softmax of the logits; `top1`: all weight on the argmax."""
    logit_scale: float = 3.0
    """Logits = `logit_scale * action` (actions in [-1, 1])."""
    entropy_weight: float = 0.08
    """Reward bonus in bp of equity per day for the normalised entropy of the weights (in [0, 1]).
    With `balance_weight` the shaping spans at most 0.2 bp a day, a tenth of a full carry book's
    funding on the demo market (about 2 bp a day: 0.75x equity short perp at 0.9 bp per 8 h). It
    was 0.02 per step, 1.9 bp a day on 15-minute bars, as much as the carry itself, so an even
    gating paid as well as earning."""
    balance_weight: float = 0.04
    """Reward penalty in bp of equity per day per unit of concentrated running usage (0 even, K all
    on one option: 0.12 bp a day at K = 3)."""
    usage_halflife: float = 64.0
    """Half-life in bars of the running usage of each option."""
    reward_halflife: float = 24.0
    """Half-life in bars of each expert's recent reward and running Sharpe."""
    net_arch: tuple[int, ...] = (64, 64)
    env_overrides: Mapping[str, Any] = field(default_factory=dict)
    """`EnvConfig` fields replaced for the meta env."""
    timesteps: Mapping[str, int] = field(default_factory=lambda: {"demo": 8_192, "full": 500_000})
    n_envs: int = 16
    n_steps: int = 64
    batch_size: int = 512
    n_epochs: int = 4
    learning_rate: float = 1e-3
    gamma: float = 0.99
    ent_coef: float = 0.0
    log_std_init: float = -0.5
    episode_length: int = 512
    """Bars per training episode (at least two decisions)."""
    decision_bars: int = 8
    """Bars per decision (`cadence`): the meta-controller asks its experts and gates them once
    every this many bars (2 hours of 15-minute bars) and holds the book in between; rewards are
    summed over them and `gamma` is per decision. The anomaly expert's multiplier is read at each
    decision, so a cut waits for at most this many bars."""
    seed: int = 0
    threads: int = 1
    """torch CPU threads, pinned while training and recorded."""
    validation_fraction: float = 0.2
    progress_every: int = 2_048

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError(f"meta-controller {self.name!r}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid field, named, with what it must be."""
        out = []
        if self.gating not in GATINGS:
            out.append(f"gating {self.gating!r} is not one of {list(GATINGS)}")
        for name in ("logit_scale", "usage_halflife", "reward_halflife", "learning_rate"):
            if not getattr(self, name) > 0:
                out.append(f"{name}={getattr(self, name)} must be > 0")
        for name in ("entropy_weight", "balance_weight", "ent_coef"):
            if getattr(self, name) < 0:
                out.append(f"{name}={getattr(self, name)} must be >= 0")
        for name in (
            "n_envs", "n_epochs", "episode_length", "decision_bars", "threads", "progress_every",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                out.append(f"{name}={getattr(self, name)} must be >= 1")
        out += episode_problems(self.episode_length, self.decision_bars)
        if not self.net_arch or any(int(x) < 1 for x in self.net_arch):
            out.append(f"net_arch {list(self.net_arch)} must be positive layer sizes")
        if self.n_steps < 2:
            out.append(f"n_steps={self.n_steps} must be >= 2")
        if not 1 < self.batch_size <= self.n_envs * self.n_steps:
            out.append(
                f"batch_size={self.batch_size} must be in [2, n_envs * n_steps = "
                f"{self.n_envs * self.n_steps}]"
            )
        if not 0 < self.gamma <= 1:
            out.append(f"gamma={self.gamma} must be in (0, 1]")
        if not 0 < self.validation_fraction <= 0.5:
            out.append(f"validation_fraction={self.validation_fraction} must be in (0, 0.5]")
        missing = [p for p in PROFILES if p not in self.timesteps]
        if missing or any(int(v) < 1 for v in self.timesteps.values()):
            out.append(f"timesteps {dict(self.timesteps)} needs positive {list(PROFILES)}")
        try:
            self.env_config()
        except (TypeError, ValueError) as err:
            out.append(f"env_overrides: {err}")
        return out

    def env_config(self, base: EnvConfig | None = None) -> EnvConfig:
        """The meta env's config: `base` with random starts, this episode length, the overrides."""
        return replace(
            base or PIPELINE_ENV_CONFIG,
            random_start=True,
            episode_length=self.episode_length,
            **dict(self.env_overrides),
        )

    def total_timesteps(self, profile: str) -> int:
        """Timesteps of a profile (ValueError naming the meta-controller if unknown)."""
        if profile not in self.timesteps:
            raise ValueError(
                f"meta-controller {self.name!r}: profile {profile!r} is not one of "
                f"{sorted(self.timesteps)}"
            )
        return int(self.timesteps[profile])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values."""
        d = asdict(self)
        d["env_overrides"] = dict(self.env_overrides)
        d["timesteps"] = dict(self.timesteps)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetaSpec:
        """Inverse of `to_dict`."""
        d = dict(d)
        return cls(**{**d, "net_arch": tuple(d.get("net_arch", (64, 64)))})


def gate(logits: np.ndarray, gating: str) -> np.ndarray:
    """Gating weights `(B, K + 1)` from logits: softmax rows, or the one-hot of each argmax."""
    z = np.asarray(logits, dtype=np.float64)
    if gating == "top1":
        return np.eye(z.shape[1])[np.argmax(z, axis=1)]
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def combine(
    weights: np.ndarray,
    suggestions: np.ndarray,
    multiplier: np.ndarray,
    max_leverage: np.ndarray | None = None,
    leverage_cap: float = 1.0,
) -> np.ndarray:
    """The env action `m * fit(sum_j w_j a_j)`: `weights` `(B, K + 1)` (last = flat, suggesting
    zero), `suggestions` `(B, K, N)` in [-1, 1], `multiplier` `(B, N)` in [0, 1].

    With `max_leverage` `(B, N)` (the env's per-asset limits) the mixed book is first scaled as
    the env's leverage limit would clamp it (`observation.leverage_fit`), so the multiplier cuts
    the book the env would hold: applied to an over-limit book, the env's clamp absorbed it (a
    book of 1 per asset at a 2x over limit was the same at m = 0.5 as at m = 1)."""
    a = np.clip(suggestions, -1.0, 1.0)
    mixed = np.einsum("bk,bkn->bn", weights[:, :-1], a)
    if max_leverage is not None:
        mixed = leverage_fit(mixed, max_leverage, leverage_cap)
    return np.clip(np.clip(multiplier, 0.0, 1.0) * mixed, -1.0, 1.0)


def normalised_entropy(weights: np.ndarray) -> np.ndarray:
    """Entropy of each row over log(K + 1): 1 for uniform weights, 0 for one-hot, `(B,)`."""
    w = np.clip(weights, 1e-12, 1.0)
    return -(weights * np.log(w)).sum(axis=1) / math.log(weights.shape[1])


def collapse_penalty(usage: np.ndarray) -> np.ndarray:
    """`(K + 1) * sum_j u_j^2 - 1` of each row of running usage (rows sum to 1): 0 when even,
    K when all on one option, `(B,)`."""
    u = usage / np.maximum(usage.sum(axis=1, keepdims=True), 1e-12)
    return usage.shape[1] * (u**2).sum(axis=1) - 1.0


def carry_unit_bp(market: MarketData) -> np.ndarray:
    """`(T, N)`: per bar t, what one unit of long carry earns from bar t to t + 1, in bp, before
    costs: the funding settled at t + 1 minus the change of the basis; the last row is 0."""
    basis = market.perp / market.spot - 1.0
    out = np.zeros_like(basis, dtype=np.float64)
    out[:-1] = np.nan_to_num(market.funding[1:], nan=0.0) - np.diff(basis, axis=0)
    return out * BP


def alpha(halflife: float) -> float:
    """EWMA weight of the newest value for a half-life in steps."""
    return 1.0 - 0.5 ** (1.0 / halflife)


class MetaCore:
    """The meta-environment's logic over a `CarryTradeVectorEnv` (`base`), free of SB3 plumbing:
    `observe` -> `actions` -> (step the env) -> `feedback`. See the module docstring."""

    def __init__(
        self,
        base: Any,
        windows: WindowSet,
        experts: Mapping[str, ExpertPolicy],
        spec: MetaSpec,
        anomaly: ExpertPolicy | None = None,
    ) -> None:
        for name, policy in experts.items():
            if policy.spec.output != "weights" or policy.spec.algorithm == "MaskablePPO":
                raise ValueError(
                    f"meta-controller: expert {name!r} ({policy.spec.algorithm}, output "
                    f"{policy.spec.output!r}) is not a continuous weights expert; only those "
                    "can be gated"
                )
        if not experts:
            raise ValueError("meta-controller: no experts to gate")
        if anomaly is not None and anomaly.spec.output != "exposure":
            raise ValueError(
                f"meta-controller: anomaly expert {anomaly.spec.name!r} has no exposure output"
            )
        self.base, self.spec = base, spec
        self.names = tuple(experts)
        self.experts = tuple(experts.values())
        self.anomaly = anomaly
        names, market = base.observation_names, base.market
        build = lambda p: ObservationBuilder(  # noqa: E731
            windows, p.spec.observation, market.ts, names, market.symbols
        )
        self.builders = tuple(build(p) for p in self.experts)
        self.anomaly_builder = build(anomaly) if anomaly is not None else None
        index = {n: i for i, n in enumerate(names)}
        self.global_idx = np.array([index[n] for n in GLOBAL_FIELDS], dtype=np.int64)
        self.asset_idx = np.array(
            [index[f"{s}:{f}"] for f in ASSET_FIELDS for s in market.symbols], dtype=np.int64
        )
        self.max_leverage_idx = np.array(
            [index[f"{s}:max_leverage"] for s in market.symbols], dtype=np.int64
        )
        self.leverage_cap = float(base.config.leverage_cap)
        self.unit_bp = carry_unit_bp(market)
        self._unit_cum = np.vstack([np.zeros((1, market.n_symbols)), np.cumsum(self.unit_bp, 0)])
        decision_days = float(market.bar_seconds) * spec.decision_bars / 86_400.0
        self.shaping_scale = decision_days * float(base.config.reward_scale) / BP
        """Reward units per bp-per-day of shaping: a decision's length in days, times the env's
        `reward_scale` over 1e4 (1 when its reward is in bp)."""
        b, k, n = base.num_envs, len(self.experts), market.n_symbols
        self.n_options = k + 1
        self.obs_dim = k * (n + 2) + n + self.n_options + len(GLOBAL_FIELDS) + len(ASSET_FIELDS) * n
        self.suggestions = np.zeros((b, k, n))
        self.multiplier = np.ones((b, n))
        self.max_leverage = np.full((b, n), np.inf)
        """The env's per-asset leverage limits at the last `observe` (or `between`)."""
        self.applied = np.ones((b, n))
        """The multiplier the held book was sized with (at its decision or its last risk cut)."""
        self.weights = np.full((b, k + 1), 1.0 / (k + 1))
        self._states: list[Any] = [None] * (k + 1)
        self._starts = np.ones(b, dtype=bool)
        self._mean = np.zeros((b, k))
        self._var = np.zeros((b, k))
        self.usage = np.full((b, k + 1), 1.0 / (k + 1))

    @property
    def observation_space(self) -> spaces.Box:
        """Flat float32 observation (see the module docstring)."""
        return spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32)

    @property
    def action_space(self) -> spaces.Box:
        """K + 1 gating values in [-1, 1]."""
        return spaces.Box(-1.0, 1.0, (self.n_options,), np.float32)

    def reset_envs(self, mask: np.ndarray) -> None:
        """Restart the running statistics and recurrent states of the envs in `mask`."""
        self._mean[mask] = 0.0
        self._var[mask] = 0.0
        self.usage[mask] = 1.0 / self.n_options
        self._starts = self._starts | mask

    def observe(self, raw: np.ndarray, bars: np.ndarray) -> np.ndarray:
        """Ask every expert for its suggestion at env observations `raw` `(B, D)` at `bars`, and
        return the meta observation `(B, obs_dim)`."""
        for j, (policy, builder) in enumerate(zip(self.experts, self.builders, strict=True)):
            out = policy.act(builder.build(raw, bars), self._states[j], self._starts)
            self._states[j] = out.state
            self.suggestions[:, j] = np.clip(out.output, -1.0, 1.0)
        if self.anomaly is not None and self.anomaly_builder is not None:
            out = self.anomaly.act(
                self.anomaly_builder.build(raw, bars), self._states[-1], self._starts
            )
            self._states[-1] = out.state
            self.multiplier = np.asarray(out.output, dtype=np.float64)
        self._starts = np.zeros_like(self._starts)
        self.max_leverage = raw[:, self.max_leverage_idx].astype(np.float64)
        sharpe = np.clip(self._mean / np.sqrt(self._var + 1e-6), -SHARPE_CLIP, SHARPE_CLIP)
        experts = np.concatenate(
            [self.suggestions, self._mean[..., None], sharpe[..., None]], axis=2
        ).reshape(raw.shape[0], -1)
        return np.concatenate(
            [experts, self.multiplier, self.usage, raw[:, self.global_idx], raw[:, self.asset_idx]],
            axis=1,
        ).astype(np.float32)

    def actions(self, meta_actions: np.ndarray) -> np.ndarray:
        """Gate the current suggestions with the meta actions; the env action `(B, N)`."""
        logits = self.spec.logit_scale * np.clip(np.asarray(meta_actions, np.float64), -1, 1)
        self.weights = gate(logits, self.spec.gating)
        self.applied = self.multiplier.copy()
        return self._combine()

    def _combine(self) -> np.ndarray:
        return combine(self.weights, self.suggestions, self.multiplier, self.max_leverage,
                       self.leverage_cap)  # fmt: skip

    def between(self, raw: np.ndarray, bars: np.ndarray) -> np.ndarray:
        """The env action `(B, N)` on a bar between decisions: the risk overlay.

        The anomaly expert reads env observations `raw` at `bars`; where its multiplier fell below
        `1 - band_cut` (its spec's `band_cut`) of the one the held book was sized with, the book is
        cut to the last decision's gating and suggestions times the new multiplier (a cut to 0
        closes it); elsewhere, and without an anomaly expert, the book is held (NaN). A rising
        multiplier waits for the next decision: cut fast, re-enter slowly."""
        hold = np.full(self.applied.shape, np.nan)
        if self.anomaly is None or self.anomaly_builder is None:
            return hold
        obs = self.anomaly_builder.build(raw, bars)
        out = self.anomaly.act(obs, self._states[-1], self._starts)
        self._states[-1] = out.state
        self.multiplier = np.asarray(out.output, dtype=np.float64)
        cut = self.multiplier < (1.0 - self.anomaly.spec.band_cut) * self.applied
        if not cut.any():
            return hold
        self.applied = np.where(cut, self.multiplier, self.applied)
        self.max_leverage = raw[:, self.max_leverage_idx].astype(np.float64)
        return np.where(cut, self._combine(), np.nan)

    def get_state(self) -> dict[str, Any]:
        """Everything `observe`, `actions` and `feedback` carry between bars: the experts'
        recurrent states, the episode-start flags, the running reward statistics, the usage and
        the last suggestions, multiplier (read and applied) and weights (copies)."""
        arrays = {
            "suggestions": self.suggestions, "multiplier": self.multiplier,
            "applied": self.applied, "weights": self.weights, "starts": self._starts,
            "mean": self._mean, "var": self._var, "usage": self.usage,
        }  # fmt: skip
        return {**{k: v.copy() for k, v in arrays.items()}, "states": list(self._states)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a `get_state()` of a core over the same experts and symbols.

        Raises:
            ValueError: a missing entry, another number of expert states, or an array of
                another shape than this core's (named).
        """
        names = ("suggestions", "multiplier", "weights", "starts", "mean", "var", "usage")
        missing = [n for n in (*names, "states") if n not in state]
        if missing:
            raise ValueError(f"meta-controller state lacks {missing}")
        if len(state["states"]) != len(self._states):
            raise ValueError(
                f"meta-controller state holds {len(state['states'])} expert states, this core "
                f"gates {len(self._states) - 1} experts and the anomaly slot"
            )
        # A state saved before the risk overlay had no applied multiplier: the one it read.
        state = {**state, "applied": state.get("applied", state["multiplier"])}
        current = {"suggestions": self.suggestions, "multiplier": self.multiplier,
                   "applied": self.applied, "weights": self.weights, "starts": self._starts,
                   "mean": self._mean, "var": self._var, "usage": self.usage}  # fmt: skip
        for n in current:
            if np.shape(state[n]) != current[n].shape:
                raise ValueError(
                    f"meta-controller state {n!r} has shape {np.shape(state[n])}, this core "
                    f"{current[n].shape}"
                )
        self.suggestions = np.array(state["suggestions"], dtype=np.float64)
        self.multiplier = np.array(state["multiplier"], dtype=np.float64)
        self.applied = np.array(state["applied"], dtype=np.float64)
        self.weights = np.array(state["weights"], dtype=np.float64)
        self._starts = np.array(state["starts"], dtype=bool)
        self._mean = np.array(state["mean"], dtype=np.float64)
        self._var = np.array(state["var"], dtype=np.float64)
        self.usage = np.array(state["usage"], dtype=np.float64)
        self._states = list(state["states"])

    def feedback(
        self, bars: np.ndarray, env_reward: np.ndarray, until: np.ndarray | None = None
    ) -> np.ndarray:
        """After a decision at `bars` held until bars `until` (default `bars + 1`): update the
        experts' running reward (what each suggestion earned per unit over those bars) and Sharpe
        and the usage, and return the shaped reward `(B,)` (`reset_envs` then restarts finished
        envs). The half-lives are in bars: one update per decision of `decision_bars`."""
        start = np.asarray(bars, dtype=np.int64)
        end = start + 1 if until is None else np.asarray(until, dtype=np.int64)
        unit = self._unit_cum[end] - self._unit_cum[start]  # (B, N)
        r = (self.suggestions * unit[:, None, :]).mean(axis=2)  # (B, K)
        per = self.spec.decision_bars
        a = alpha(self.spec.reward_halflife / per)
        delta = r - self._mean
        self._mean += a * delta
        self._var = (1.0 - a) * (self._var + a * delta**2)
        self.usage += alpha(self.spec.usage_halflife / per) * (self.weights - self.usage)
        shaped = (
            np.asarray(env_reward, np.float64)
            + self.spec.entropy_weight * self.shaping_scale * normalised_entropy(self.weights)
            - self.spec.balance_weight * self.shaping_scale * collapse_penalty(self.usage)
        )
        return shaped


class MetaVecEnv(VecEnvWrapper):
    """SB3 `VecEnv` over `SB3VecEnv(CarryTradeVectorEnv)`: the meta-controller's observation,
    action and reward (`MetaCore`, module docstring)."""

    def __init__(self, venv: VecEnv, core: MetaCore) -> None:
        self.core = core
        self._base = base_vector_env(venv)
        super().__init__(
            venv, observation_space=core.observation_space, action_space=core.action_space
        )
        self._raw: np.ndarray | None = None
        self._bars: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        """Reset the envs and the running statistics; the first meta observations."""
        self._raw = array_observation(self.venv.reset(), "MetaVecEnv.reset")
        self.core.reset_envs(np.ones(self.num_envs, dtype=bool))
        return self.core.observe(self._raw, current_bars(self._base))

    def step_async(self, actions: np.ndarray) -> None:
        """Gate the experts' suggestions and pass the combined action on."""
        self._bars = current_bars(self._base)
        self.venv.step_async(self.core.actions(actions))

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Step; a finished env's `terminal_observation` is its meta observation at that bar."""
        raw, rew, dones, infos = self.venv.step_wait()
        raw = array_observation(raw, "MetaVecEnv.step_wait")
        if self._bars is None:
            raise RuntimeError("MetaVecEnv.step_wait is called before step_async()")
        done = np.flatnonzero(dones)
        until = current_bars(self._base)
        for b in done:  # the bar its episode ended on (one bar a step, or a DecisionVecEnv's)
            until[b] = infos[b].get("terminal_bar", self._bars[b] + 1)
        shaped = self.core.feedback(self._bars, rew, until).astype(np.float32)
        if done.size:
            # Terminal observations: the finished episodes' last bar, statistics not yet restarted;
            # the experts' recurrent states are kept as they were for the next observation.
            final_raw = raw.copy()
            final_raw[done] = np.stack([infos[b]["terminal_observation"] for b in done])
            bars = until.copy()
            states = list(self.core._states)
            final = self.core.observe(final_raw, bars)
            self.core._states = states
            for b in done:
                infos[b]["terminal_observation"] = final[b]
        self.core.reset_envs(np.asarray(dones, dtype=bool))
        self._raw = raw
        return self.core.observe(raw, current_bars(self._base)), shaped, dones, infos


def make_meta_env(
    market: MarketData,
    windows: WindowSet,
    experts: Mapping[str, ExpertPolicy],
    spec: MetaSpec,
    config: EnvConfig,
    n_envs: int,
    anomaly: ExpertPolicy | None = None,
) -> MetaVecEnv:
    """`MetaVecEnv` over `SB3VecEnv(CarryTradeVectorEnv(market, config, n_envs))`, through a
    `cadence.DecisionVecEnv` of `spec.decision_bars` when that is above 1 (its bars between
    decisions take `MetaCore.between`, the anomaly expert's risk overlay, when there is one)."""
    from carry_env.vector import CarryTradeVectorEnv, SB3VecEnv

    base = CarryTradeVectorEnv(market, config, n_envs)
    core = MetaCore(base, windows, experts, spec, anomaly)
    venv: VecEnv = SB3VecEnv(base)
    if spec.decision_bars > 1:
        between = core.between if anomaly is not None else None
        venv = DecisionVecEnv(venv, spec.decision_bars, between=between)
    return MetaVecEnv(venv, core)


@dataclass(frozen=True)
class MetaRollout:
    """A meta rollout's cash-flow totals and the mean gating weight of each option."""

    metrics: RolloutMetrics
    mean_weights: dict[str, float]


def meta_rollout(
    actor: Any,
    market: MarketData,
    windows: WindowSet,
    experts: Mapping[str, ExpertPolicy],
    spec: MetaSpec,
    config: EnvConfig,
    *,
    start: int,
    end: int,
    anomaly: ExpertPolicy | None = None,
    seed: int = 0,
) -> MetaRollout:
    """One episode on bars `start..end` (one env) where `actor(meta_obs) -> (1, K + 1)` gates the
    experts on the decision bars of a `cadence.DecisionClock` (on the others the book is held,
    but for the anomaly expert's cuts, `MetaCore.between`); totals as `rollout.rollout` reports
    them, mean weights over bars."""
    from carry_env.vector import CarryTradeVectorEnv

    base = CarryTradeVectorEnv(market, _fixed_span(config), 1)
    core = MetaCore(base, windows, experts, spec, anomaly)
    raw, _ = base.reset(seed=seed, options={"start": int(start), "end": int(end)})
    core.reset_envs(np.ones(1, dtype=bool))
    totals = dict.fromkeys(("reward", "funding", "costs", "price_pnl", "leverage"), 0.0)
    equity, liquidations, steps = [float(config.initial_cash)], 0, 0
    used = np.zeros(core.n_options)
    clock = DecisionClock(spec.decision_bars, market.bar_seconds)
    decided: np.ndarray | None = None
    while True:
        bars = current_bars(base)
        if clock.due(int(market.ts[bars[0]])):
            if decided is not None:
                core.feedback(decided, np.zeros(1), bars)
            action = core.actions(actor(core.observe(raw, bars)))
            decided = bars
        else:
            action = core.between(raw, bars)
        used += core.weights[0]
        raw, rew, term, trunc, infos = base.step(action)
        done = bool(term[0] or trunc[0])
        info = infos["final_info"] if done else infos
        _accumulate(totals, info, float(rew[0]))
        equity.append(float(info["equity"][0]))
        liquidations += int(info["liquidated"][0])
        steps += 1
        if done:
            break
    path = np.array(equity)
    metrics = RolloutMetrics(
        steps=steps,
        reward=totals["reward"],
        funding=totals["funding"],
        costs=totals["costs"],
        net_carry=totals["funding"] - totals["costs"],
        price_pnl=totals["price_pnl"],
        pnl=float(path[-1] - path[0]),
        max_drawdown=float(np.max(1.0 - path / np.maximum.accumulate(path))),
        liquidations=liquidations,
        mean_gross_leverage=totals["leverage"] / steps,
    )
    names = (*core.names, "flat")
    return MetaRollout(metrics, {n: float(w) for n, w in zip(names, used / steps, strict=True)})


class MetaPolicy:
    """A trained meta-controller: `meta_obs (B, D)` -> deterministic gating action `(B, K + 1)`."""

    def __init__(self, model: PPO, spec: MetaSpec, experts: tuple[str, ...]) -> None:
        self.model, self.spec, self.experts = model, spec, experts

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic action."""
        return eval_predict(self.model, obs, deterministic=True)


def train_meta_controller(
    spec: MetaSpec,
    experts: Mapping[str, str | Path],
    market: MarketData,
    windows: WindowSet,
    fold: FoldSpan,
    *,
    models_root: str | Path,
    anomaly: str | Path | None = None,
    stats: pl.DataFrame | None = None,
    profile: str = "demo",
    timesteps: int | None = None,
    base_config: EnvConfig | None = None,
    logger: Logger | None = None,
    tensorboard_dir: str | Path | None = None,
) -> TrainingRecord:
    """Train, validate and save the meta-controller of one fold over frozen experts.

    Args:
        spec: the meta-controller.
        experts: gated expert name -> its saved folder (`load_expert`), trained on this fold.
        market: the fold's market restricted to its train span (`train_span_market`).
        windows: the fold's `train` windows.
        fold: the fold's train span.
        models_root: the model store; the meta-controller goes to `<models_root>/<name>/fold<k>/`.
        anomaly: the anomaly expert's folder, whose multiplier applies on top, or None.
        stats, profile, timesteps, base_config, logger, tensorboard_dir: as `train_expert`.

    Raises:
        ValueError: bad input, naming the fold and the problem.
        FileNotFoundError: an expert folder holds no saved expert.
    """
    log = logger or logging.getLogger(__name__)
    total = int(timesteps) if timesteps is not None else spec.total_timesteps(profile)
    first, split = check_inputs(spec, market, windows, fold)  # type: ignore[arg-type]
    config = spec.env_config(base_config)
    fit = market.window(_dt(market.ts[first]), _dt(market.ts[split - 1]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    policies = {name: load_expert(path, device=device) for name, path in experts.items()}
    risk = load_expert(anomaly, device=device) if anomaly is not None else None
    with pinned_threads(spec.threads):
        started = time.perf_counter()
        vec = VecMonitor(make_meta_env(fit, windows, policies, spec, config, spec.n_envs, risk))
        vec.seed(spec.seed)
        model = PPO(
            "MlpPolicy",
            vec,
            n_steps=spec.n_steps,
            batch_size=spec.batch_size,
            n_epochs=spec.n_epochs,
            learning_rate=spec.learning_rate,
            gamma=spec.gamma,
            ent_coef=spec.ent_coef,
            policy_kwargs={
                "net_arch": {"pi": list(spec.net_arch), "vf": list(spec.net_arch)},
                "log_std_init": spec.log_std_init,
            },
            seed=spec.seed,
            device=device,
            tensorboard_log=str(tensorboard_dir) if tensorboard_dir else None,
            verbose=0,
        )
        progress = ProgressCallback(log, spec.progress_every, spec.name)
        model.learn(total_timesteps=total, callback=progress, progress_bar=False)
        wall = time.perf_counter() - started
        validation = meta_rollout(
            MetaPolicy(model, spec, tuple(policies)),
            market,
            windows,
            policies,
            spec,
            config,
            start=split,
            end=market.n_bars - 1,
            anomaly=risk,
            seed=spec.seed,
        )
    target = Path(models_root) / spec.name / fold.name
    record = TrainingRecord(
        expert=spec.name,
        fold=fold.fold,
        train_start=fold.train_start,
        train_end=fold.train_end,
        fit_end=_dt(market.ts[split]),
        algorithm="PPO",
        seed=spec.seed,
        threads=spec.threads,
        device=device,
        profile=profile,
        timesteps=int(model.num_timesteps),
        wall_seconds=wall,
        fps=model.num_timesteps / wall,
        data_sha256=data_sha256(windows, market),
        model_path=str(target),
        spec={
            **spec.to_dict(),
            "experts": {k: str(v) for k, v in experts.items()},
            "anomaly": str(anomaly) if anomaly is not None else None,
        },
        env_config=config.to_dict(),
        curve=progress.summary(),
        validation={
            **validation.metrics.to_dict(),
            "mean_weights": validation.mean_weights,
        },
    )
    save_expert(target, model, record, stats)
    log.info(
        f"{spec.name} fold {fold.fold}: {record.timesteps} timesteps in {wall:.1f} s on {device}; "
        f"validation net carry {validation.metrics.net_carry:.2f} USDT, mean weights "
        + ", ".join(f"{k} {v:.2f}" for k, v in validation.mean_weights.items())
    )
    return record


def load_meta_controller(
    folder: str | Path, device: str = "auto"
) -> tuple[MetaPolicy, dict[str, ExpertPolicy], ExpertPolicy | None]:
    """The meta-controller saved in `folder`, with the experts (and anomaly expert) it gates,
    loaded from the folders it was trained over.

    Raises:
        FileNotFoundError: the folder lacks `spec.json` or `model.zip`, or an expert is gone.
    """
    folder = Path(folder)
    for name in ("spec.json", "model.zip"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder} holds no {name}: not a saved meta-controller")
    d = json.loads((folder / "spec.json").read_text())
    experts = {k: load_expert(v, device=device) for k, v in d.pop("experts").items()}
    anomaly_path = d.pop("anomaly")
    anomaly = load_expert(anomaly_path, device=device) if anomaly_path else None
    spec = MetaSpec.from_dict(d)
    model = PPO.load(folder / "model.zip", device=device)
    return MetaPolicy(model, spec, tuple(experts)), experts, anomaly
