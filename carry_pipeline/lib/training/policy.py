"""The one policy interface of a trained expert, for validation, the backtest and the paper trader.

`load_expert(folder)` reads what `train.save_expert` wrote (`model.zip`, `spec.json`,
`env_config.json`, `normalisation_stats.parquet`, `record.json`) and returns an `ExpertPolicy`:
Dict observation in (as `observation.ExpertVecEnv` builds it), action out, recurrent state handled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO, RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.utils import is_vectorized_observation

from carry_env.config import EnvConfig
from carry_pipeline.lib.training.observation import exposure_multiplier
from carry_pipeline.lib.training.specs import ExpertSpec

ALGORITHM_CLASSES: dict[str, type[PPO] | type[RecurrentPPO] | type[MaskablePPO]] = {
    "PPO": PPO,
    "RecurrentPPO": RecurrentPPO,
    "MaskablePPO": MaskablePPO,
}


@dataclass(frozen=True)
class PolicyOutput:
    """One decision for a batch of B observations."""

    action: np.ndarray
    """What the expert's env wrapper takes: `(B, N)` in [-1, 1], or `(B,)` discrete choices."""
    output: np.ndarray
    """The expert's meaning of it: weights per asset, exposure multipliers in [0, 1], or
    choices."""
    state: Any
    """Recurrent state to pass back with the next observation (None for feed-forward experts)."""


@contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """Pin torch to `n` CPU threads for the block, then restore the previous count.

    Training pins the count it records with the seed (1 vs 2 threads give different weights);
    inference pins one, since a bar-by-bar decision is a few small matrix products that a second
    thread cannot speed up but competing threads slow down many times over.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def eval_predict(model: BaseAlgorithm, obs: Any, deterministic: bool = True) -> np.ndarray:
    """`model.predict(obs, deterministic)` of a feed-forward policy, for inference loops.

    The same computation as stable-baselines3's `BasePolicy.predict` (observation to tensor,
    `_predict` under `no_grad`, reshape, unscale or clip to the action space), except that the
    policy is switched to eval mode only when it is in training mode: SB3 switches every module on
    every call, about 0.4 ms of a 1.4 ms decision of the cross-asset extractor, which a backtest
    or a paper session pays once per bar and expert. A deterministic action of a Gaussian
    actor-critic policy (PPO's on a Box action space) over Box observations also skips SB3's deep
    copy of the observation and the torch distribution whose mode is the action head's output
    (`_gaussian_mean`); every other case takes SB3's `obs_to_tensor` and `_predict`.
    """
    policy = model.policy
    if policy.training:
        policy.set_training_mode(False)
    fast_obs = None
    with torch.no_grad():
        if deterministic and _gaussian_mean_policy(policy):
            fast_obs, vectorized = _box_obs_tensor(policy, obs)
            if fast_obs is not None:
                # What `_predict(obs, deterministic=True)` returns (the mode of a diagonal
                # Gaussian is the mean it is built from), without building the distribution.
                actions = _gaussian_mean(policy, fast_obs)
        if fast_obs is None:
            obs_tensor, vectorized = policy.obs_to_tensor(obs)
            actions = policy._predict(obs_tensor, deterministic=deterministic)
    shape = policy.action_space.shape
    if shape is None:
        raise TypeError(f"{type(policy.action_space).__name__} action space has no shape")
    out = actions.cpu().numpy().reshape((-1, *shape))
    if isinstance(policy.action_space, spaces.Box):
        if policy.squash_output:
            out = policy.unscale_action(out)
        else:
            out = np.clip(out, policy.action_space.low, policy.action_space.high)
    return out if vectorized else out.squeeze(axis=0)


def _gaussian_mean(policy: ActorCriticPolicy, obs: Any) -> torch.Tensor:
    """`policy.get_distribution(obs).mode()`, computed as SB3 computes it (features of the actor's
    extractor, the actor's latent, the action head), for a `_gaussian_mean_policy`."""
    features = BaseModel.extract_features(policy, obs, policy.pi_features_extractor)  # type: ignore[arg-type]
    return policy.action_net(policy.mlp_extractor.forward_actor(features))  # type: ignore[operator,union-attr]


def _gaussian_mean_policy(policy: Any) -> TypeGuard[ActorCriticPolicy]:
    """An actor-critic policy whose deterministic action is its action head's output: a plain
    (unsquashed) diagonal Gaussian, as PPO's on a Box action space."""
    return (
        isinstance(policy, ActorCriticPolicy)
        and type(policy.action_dist) is DiagGaussianDistribution
        and not policy.squash_output
    )


def _box_tensor(value: Any, space: spaces.Box, device: torch.device) -> tuple[torch.Tensor, bool]:
    # As SB3 batches one Box observation: its shape checked (a ValueError naming both shapes),
    # then viewed as `(-1, *space.shape)`; the tensor shares the caller's array unless that is
    # read-only (torch warns on those; SB3 copies every array).
    array = np.asarray(value)
    if not array.flags.writeable:
        array = array.copy()
    vectorized = is_vectorized_observation(array, space)
    return torch.as_tensor(array.reshape((-1, *space.shape)), device=device), vectorized


def _box_obs_tensor(policy: Any, obs: Any) -> tuple[Any, bool]:
    """`policy.obs_to_tensor(obs)` for an array, or a dict of arrays, over Box spaces without
    images: the same tensors, without SB3's deep copy of the observation dict. `(None, False)`
    for any other observation, which SB3's own path then takes."""
    space = policy.observation_space
    if isinstance(space, spaces.Dict) and isinstance(obs, dict):
        boxes: dict[str, spaces.Box] = {}
        for key, sub in space.spaces.items():
            if not isinstance(sub, spaces.Box) or is_image_space(sub):
                return None, False
            boxes[key] = sub
        if set(obs) != set(boxes):
            return None, False
        pairs = {key: _box_tensor(obs[key], box, policy.device) for key, box in boxes.items()}
        tensors = {key: tensor for key, (tensor, _) in pairs.items()}
        return tensors, any(vectorized for _, vectorized in pairs.values())
    if isinstance(space, spaces.Box) and not is_image_space(space) and not isinstance(obs, dict):
        return _box_tensor(obs, space, policy.device)
    return None, False


class ExpertPolicy:
    """A trained expert: `act(obs, state, episode_start)` -> `PolicyOutput`.

    Calling the object (`policy(obs, episode_start, masks)`) acts deterministically and keeps the
    recurrent state itself, for a single rollout at a time.
    """

    def __init__(self, model: BaseAlgorithm, spec: ExpertSpec, env_config: EnvConfig) -> None:
        self.model = model
        self.spec = spec
        self.env_config = env_config
        self.recurrent = spec.algorithm == "RecurrentPPO"
        self._state: Any = None

    def act(
        self,
        obs: dict[str, np.ndarray],
        state: Any = None,
        episode_start: np.ndarray | None = None,
        action_masks: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> PolicyOutput:
        """Decide for a batch of observations.

        Args:
            obs: Dict observation batch (`window`, `asset`, `global`).
            state: the previous call's `PolicyOutput.state` (recurrent experts), None at the start.
            episode_start: `(B,)` bools, True where an episode begins (resets the LSTM state).
            action_masks: `(B, n_actions)` allowed actions (MaskablePPO experts).
            deterministic: the mean/argmax action instead of a sample.
        """
        n = obs["asset"].shape[0]
        starts = np.ones(n, dtype=bool) if episode_start is None else np.asarray(episode_start)
        if self.recurrent:
            action, state = self.model.predict(
                obs, state=state, episode_start=starts, deterministic=deterministic
            )
        elif self.spec.algorithm == "MaskablePPO":
            if not isinstance(self.model, MaskablePPO):
                raise TypeError(
                    f"expert {self.spec.name!r} is a MaskablePPO spec with a "
                    f"{type(self.model).__name__} model"
                )
            action, state = self.model.predict(
                obs, action_masks=action_masks, deterministic=deterministic
            )
        else:
            action, state = eval_predict(self.model, obs, deterministic), None
        output = exposure_multiplier(action) if self.spec.output == "exposure" else action
        return PolicyOutput(action=action, output=output, state=state)

    def __call__(
        self,
        obs: dict[str, np.ndarray],
        episode_start: np.ndarray | None = None,
        action_masks: np.ndarray | None = None,
    ) -> np.ndarray:
        """Deterministic action, keeping the recurrent state between calls."""
        out = self.act(obs, self._state, episode_start, action_masks)
        self._state = out.state
        return out.action


def load_expert(folder: str | Path, device: str = "auto") -> ExpertPolicy:
    """The expert saved in `folder` (`<models_root>/<expert>/<fold>/`).

    Raises:
        FileNotFoundError: the folder lacks `spec.json` or `model.zip`.
    """
    folder = Path(folder)
    for name in ("spec.json", "model.zip", "env_config.json"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder} holds no {name}: not a saved expert")
    spec = ExpertSpec.from_dict(json.loads((folder / "spec.json").read_text()))
    env_config = EnvConfig(**json.loads((folder / "env_config.json").read_text()))
    model = ALGORITHM_CLASSES[spec.algorithm].load(folder / "model.zip", device=device)
    return ExpertPolicy(model, spec, env_config)
