"""stable-baselines3 adapter of the batched env: imported only by code that uses SB3.

`carry_env.vector.SB3VecEnv` resolves to this class on first use, so `import carry_env` never loads
stable-baselines3 or torch.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from carry_env.vector import CarryTradeVectorEnv


class SB3VecEnv(VecEnv):
    """stable-baselines3 `VecEnv` over a `CarryTradeVectorEnv` (no subprocesses: the batch is one
    kernel call)."""

    def __init__(self, venv: CarryTradeVectorEnv) -> None:
        self.venv = venv
        self.render_mode = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        """Reset all envs with the seeds/options set through `seed()` / `set_options()`, if any."""
        seeds = self._seeds if any(s is not None for s in self._seeds) else None
        options = self._options[0] if self._options and self._options[0] else None
        obs, _ = self.venv.reset(seed=seeds, options=options)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        """Remember the actions for `step_wait`."""
        self._actions = np.asarray(actions)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Step the batch; done envs report `terminal_observation`, `TimeLimit.truncated` and
        their final `equity` and `liquidated` (the others an empty dict: the batch's info arrays
        are not built, see `CarryTradeVectorEnv.step_arrays`)."""
        if self._actions is None:
            raise RuntimeError("step_async() must come before step_wait()")
        obs, rew, term, trunc, ends = self.venv.step_arrays(self._actions)
        out: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if ends.envs.size:
            truncated = (trunc[ends.envs] & ~term[ends.envs]).tolist()
            equity = ends.info["equity"].tolist()
            liquidated = ends.info["liquidated"].tolist()
            for j, b in enumerate(ends.envs.tolist()):
                out[b] = {
                    "terminal_observation": ends.obs[j],
                    "TimeLimit.truncated": truncated[j],
                    "equity": equity[j],
                    "liquidated": liquidated[j],
                }
        return obs, rew.astype(np.float32), term | trunc, out

    def close(self) -> None:
        """Nothing to release: there are no subprocesses."""

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        """The attribute of the shared vector env, once per selected index."""
        return [getattr(self.venv, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        """Set an attribute on the shared vector env (all sub-envs share it)."""
        setattr(self.venv, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call a method of the shared vector env once per selected index.

        A method the vector env lists in `per_env_methods` returns one row per env (e.g.
        `action_masks`): it is called once and env i gets row i.
        """
        method = getattr(self.venv, method_name)
        if method_name in getattr(self.venv, "per_env_methods", ()):
            rows = method(*method_args, **method_kwargs)
            return [rows[i] for i in self._get_indices(indices)]
        return [method(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: Any = None) -> list[bool]:
        """Sub-envs are never wrapped."""
        return [False for _ in self._get_indices(indices)]
