"""Warm start of an exposure expert by imitation of a rule-based risk teacher, before PPO.

The teacher (`RiskTeacher`) reads the env observation of each bar and holds the full reference
book (multiplier 1) unless a stress signal fires on an asset, where it cuts that asset to flat
(multiplier 0):

- the quoted spread is above `WarmStart.spread_ratio` times the asset's median spread over the fit
  span (liquidity withdrawing: flash events widen it, and so do venues before a dislocation);
- `anomaly_score` (|z| of the last spot return against realised volatility, / 10) is above
  `WarmStart.anomaly_score`;
- the perp's margin buffer (`perp_margin_buffer`, 0 = liquidation) is below
  `WarmStart.margin_buffer`;
- the asset's feed is stale, or the exchange is halted (every asset).

`warm_start(model, ...)` rolls the teacher (with a share of uniformly random multipliers, so the
states an imperfect student reaches are covered) over the fit span in the batched env, labels every
observation with the teacher's multiplier, and fits the policy's mean action to it (mean squared
error on `a = 2 m - 1`) for `epochs` passes of minibatches; the critic is fitted at the same time
to the discounted returns of those rollouts, so PPO starts from a value function that already
prices the teacher's behaviour. PPO then trains from there as usual.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from carry_env.config import EnvConfig
from carry_env.market import MarketData
from carry_pipeline.lib.training.observation import (
    ExposureBand,
    ObservationSpec,
    WindowSet,
    base_vector_env,
    make_expert_env,
)


@dataclass(frozen=True)
class WarmStart:
    """Imitation of the risk teacher before PPO (`output="exposure"` experts on PPO only)."""

    steps: int = 2_048
    """Labelled observations collected on the fit span (summed over the batched envs)."""
    explore: float = 0.25
    """Share of the collection steps acted with a uniformly random multiplier instead of the
    teacher's (the label is always the teacher's), so the student also learns what to do in the
    states it reaches when it strays from the teacher."""
    epochs: int = 2
    """Passes over the collected observations."""
    batch_size: int = 256
    """Minibatch size of the imitation steps."""
    learning_rate: float = 1e-3
    """Adam learning rate of the imitation steps (PPO's own optimiser starts afresh after)."""
    value_weight: float = 0.5
    """Weight of the critic's fit to the rollouts' discounted returns in the imitation loss (0
    leaves the critic untrained)."""
    spread_ratio: float = 3.0
    """The teacher cuts an asset whose quoted spread exceeds this multiple of its median spread
    over the fit span."""
    anomaly_score: float = 0.4
    """The teacher cuts an asset whose `anomaly_score` exceeds this (0.4: a 4-sigma bar)."""
    margin_buffer: float = 0.5
    """The teacher cuts an asset whose `perp_margin_buffer` falls below this (0 = liquidation,
    1 = flat)."""

    def problems(self) -> list[str]:
        """Every invalid field, named, with what it must be."""
        out = []
        for name in ("steps", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                out.append(f"warm_start.{name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.explore <= 1.0:
            out.append(f"warm_start.explore={self.explore} must be in [0, 1]")
        if not self.learning_rate > 0:
            out.append(f"warm_start.learning_rate={self.learning_rate} must be > 0")
        if self.value_weight < 0:
            out.append(f"warm_start.value_weight={self.value_weight} must be >= 0")
        if not self.spread_ratio > 1:
            out.append(f"warm_start.spread_ratio={self.spread_ratio} must be > 1")
        if not self.anomaly_score > 0:
            out.append(f"warm_start.anomaly_score={self.anomaly_score} must be > 0")
        if not 0.0 <= self.margin_buffer < 1.0:
            out.append(f"warm_start.margin_buffer={self.margin_buffer} must be in [0, 1)")
        return out


@dataclass(frozen=True, eq=False)
class RiskTeacher:
    """The rule-based teacher: `multiplier(env_obs)` -> `(B, N)` in {0, 1} (module docstring)."""

    rules: WarmStart
    calm_spread_bps: np.ndarray
    """`(N,)` median quoted spread per asset over the fit span (bp)."""
    columns: dict[str, np.ndarray]
    """Index of each per-asset entry (`(N,)`) and of `halted` (`(1,)`) in the env observation."""

    @classmethod
    def build(
        cls,
        rules: WarmStart,
        market: MarketData,
        env_names: Sequence[str],
        default_spread_bps: float,
    ) -> RiskTeacher:
        """The teacher of a fit span: its calm spreads, and the observation columns it reads."""
        index = {name: i for i, name in enumerate(env_names)}
        columns = {
            field: np.array([index[f"{s}:{field}"] for s in market.symbols], dtype=np.int64)
            for field in ("spread_bps", "anomaly_score", "perp_margin_buffer", "stale")
        }
        columns["halted"] = np.array([index["halted"]], dtype=np.int64)
        spread = np.where(np.isfinite(market.spread_bps), market.spread_bps, default_spread_bps)
        return cls(rules, np.median(spread, axis=0), columns)

    def multiplier(self, env_obs: np.ndarray) -> np.ndarray:
        """The teacher's multiplier for a batch of env observations `(B, D)`."""
        c, r = self.columns, self.rules
        stress = (
            (env_obs[:, c["spread_bps"]] > r.spread_ratio * self.calm_spread_bps)
            | (env_obs[:, c["anomaly_score"]] > r.anomaly_score)
            | (env_obs[:, c["perp_margin_buffer"]] < r.margin_buffer)
            | (env_obs[:, c["stale"]] > 0.5)
            | (env_obs[:, c["halted"]] > 0.5)
        )
        return np.where(stress, 0.0, 1.0)


@dataclass(frozen=True, eq=False)
class TeacherData:
    """Observations of the teacher's rollouts with its labels."""

    obs: dict[str, np.ndarray]
    """Dict observations, `(S, ...)` per key."""
    target: np.ndarray
    """`(S, N)` the teacher's action `2 m - 1` in {-1, 1}."""
    returns: np.ndarray
    """`(S,)` discounted return of the rollout from each observation (0 after its last step)."""


def collect_teacher_data(
    rules: WarmStart,
    market: MarketData,
    windows: WindowSet,
    spec: ObservationSpec,
    config: EnvConfig,
    n_envs: int,
    *,
    gamma: float,
    seed: int,
    band: ExposureBand | None = None,
) -> TeacherData:
    """Roll the teacher (with `rules.explore` random steps) over `market` in `n_envs` envs, its
    book re-trading past `band` as the expert's does, and label each observation with the
    teacher's action."""
    env = make_expert_env(market, windows, spec, config, n_envs, output="exposure", band=band)
    base = base_vector_env(env)
    teacher = RiskTeacher.build(
        rules, base.market, base.observation_names, config.default_spread_bps
    )
    rng = np.random.default_rng(seed)
    env.seed(seed)
    obs: Any = env.reset()  # a Dict observation (ExpertVecEnv)
    n_rounds = max(1, -(-rules.steps // n_envs))
    frames: list[dict[str, np.ndarray]] = []
    targets, rewards, dones = [], [], []
    for _ in range(n_rounds):
        m_teacher = teacher.multiplier(env.raw_observation)
        random_m = rng.uniform(0.0, 1.0, m_teacher.shape)
        explore = rng.uniform(0.0, 1.0, (n_envs, 1)) < rules.explore
        acted = np.where(explore, random_m, m_teacher)
        frames.append(obs)
        targets.append(2.0 * m_teacher - 1.0)
        obs, reward, done, _ = env.step(2.0 * acted - 1.0)
        rewards.append(reward)
        dones.append(done)
    env.close()
    returns = _discounted_returns(np.array(rewards), np.array(dones), gamma)
    stacked = {key: np.concatenate([f[key] for f in frames]) for key in frames[0]}
    return TeacherData(
        obs=stacked,
        target=np.concatenate(targets).astype(np.float32),
        returns=returns.reshape(-1).astype(np.float32),
    )


def warm_start(
    model: Any,
    rules: WarmStart,
    market: MarketData,
    windows: WindowSet,
    spec: ObservationSpec,
    config: EnvConfig,
    n_envs: int,
    *,
    seed: int,
    band: ExposureBand | None = None,
) -> dict[str, Any]:
    """Fit `model`'s policy (an SB3 PPO with a Gaussian policy) to the teacher; return a summary:
    observations, the teacher's cut share, first and last epoch loss, and the share of
    observations where the deterministic student's multiplier is within 0.5 of the teacher's."""
    started = time.perf_counter()
    data = collect_teacher_data(
        rules, market, windows, spec, config, n_envs, gamma=model.gamma, seed=seed, band=band
    )
    policy = model.policy
    policy.set_training_mode(True)
    optimiser = torch.optim.Adam(policy.parameters(), lr=rules.learning_rate)
    obs = {key: torch.as_tensor(value, device=model.device) for key, value in data.obs.items()}
    target = torch.as_tensor(data.target, device=model.device)
    returns = torch.as_tensor(data.returns, device=model.device)
    order = np.random.default_rng(seed)
    n = target.shape[0]
    losses = []
    for _ in range(rules.epochs):
        total = 0.0
        for idx in np.array_split(order.permutation(n), max(1, n // rules.batch_size)):
            batch = {key: value[idx] for key, value in obs.items()}
            mean = policy.get_distribution(batch).distribution.mean
            loss = torch.mean((mean - target[idx]) ** 2)
            if rules.value_weight > 0:
                values = policy.predict_values(batch).flatten()
                loss = loss + rules.value_weight * torch.mean((values - returns[idx]) ** 2)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), model.max_grad_norm)
            optimiser.step()
            total += loss.item() * len(idx)
        losses.append(total / n)
    policy.set_training_mode(False)
    with torch.no_grad():
        student = policy.get_distribution(obs).distribution.mean.cpu().numpy()
    agree = np.abs(np.clip(student, -1.0, 1.0) - data.target) < 1.0  # |m - m_teacher| < 0.5
    return {
        "observations": int(n),
        "teacher_cut_share": float(np.mean(data.target < 0)),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "agreement": float(np.mean(agree)),
        "wall_seconds": time.perf_counter() - started,
    }


def _discounted_returns(rewards: np.ndarray, dones: np.ndarray, gamma: float) -> np.ndarray:
    # rewards, dones: (steps, envs); an episode's return stops at its done; the rollout's last
    # steps are not bootstrapped (their returns are short by the rest of the episode).
    out = np.zeros_like(rewards, dtype=np.float64)
    running = np.zeros(rewards.shape[1])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * running * (1.0 - dones[t])
        out[t] = running
    return out
