"""Batched carry-trade envs: B accounts stepped by one numba call, for gymnasium and for
stable-baselines3.

`CarryTradeVectorEnv` is a gymnasium `VectorEnv` with same-step autoreset (a finished env is reset
inside the step that ended it; its last observation and info are in `infos["final_obs"]` /
`infos["final_info"]`). `SB3VecEnv` (in `carry_env.sb3`, importable from here too) adapts it to
stable-baselines3's `VecEnv` (`terminal_observation`, `TimeLimit.truncated`); stable-baselines3 and
torch load only when it is first used, so `import carry_env` stays light. Env i seeded with
`seed + i` behaves exactly as a `CarryTradeEnv` reset with `seed + i`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from carry_env import kernel as k
from carry_env.config import EnvConfig
from carry_env.engine import Engine
from carry_env.env import checked_action
from carry_env.market import MarketData

PARALLEL_MIN_ENVS = 256
"""From this batch size on, the kernel spreads envs over all cores (numba prange)."""


class CarryTradeVectorEnv(VectorEnv):
    """`num_envs` independent carry-trade accounts over one market, stepped together.

    Observation, action, reward and episode semantics are those of `CarryTradeEnv` (see its
    docstring); actions are `[num_envs, N]`, and any other shape is an error. `infos` is a dict
    of `[num_envs]` arrays (one per `CarryTradeEnv` info key,
    `spot_qty`/`perp_qty`/`collateral` as `[num_envs, N]`), each with its `_key` mask as gymnasium's
    vector API expects.

    Args:
        market: `MarketData` or a market frame.
        config: shared `EnvConfig`.
        num_envs: batch size B.
        parallel: spread the kernel over cores; default when `num_envs >= PARALLEL_MIN_ENVS`.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        market: MarketData | Any,
        config: EnvConfig | None = None,
        num_envs: int = 1,
        *,
        parallel: bool | None = None,
    ) -> None:
        data = market if isinstance(market, MarketData) else MarketData.from_frame(market)
        self.config = config if config is not None else EnvConfig()
        use_parallel = num_envs >= PARALLEL_MIN_ENVS if parallel is None else parallel
        self.engine = Engine(data, self.config, num_envs, parallel=use_parallel)
        self.market = self.engine.market
        self.num_envs = num_envs
        n = self.market.n_symbols
        self.single_action_space = spaces.Box(-1.0, 1.0, shape=(n,), dtype=np.float32)
        self.single_observation_space = spaces.Box(
            -k.OBS_LIMIT, k.OBS_LIMIT, shape=(self.engine.obs_dim,), dtype=np.float32
        )
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.observation_names = self.engine.names
        self.render_mode = None
        self._rngs: list[np.random.Generator] = [seeding.np_random()[0] for _ in range(num_envs)]
        self._mask = np.ones(num_envs, dtype=np.bool_)
        self._mask.flags.writeable = False
        self._masks = {"_" + key: self._mask for key in _INFO_KEYS}
        self._needs_reset = True

    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all envs (or those in `options["reset_mask"]`); env i is seeded with `seed + i`."""
        seeds = _env_seeds(seed, self.num_envs)
        opts = dict(options or {})
        mask = np.asarray(opts.pop("reset_mask", self._mask), dtype=np.bool_)
        for b in np.flatnonzero(mask):
            if seeds[b] is not None:
                self._rngs[b] = seeding.np_random(seeds[b])[0]
            self.engine.reset_env(int(b), self._rngs[b], opts)
        self._needs_reset = False
        return self.engine.obs.copy(), self._infos()

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env; finished envs are reset in the same call."""
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        eng = self.engine
        eng.act[:] = checked_action(actions, (self.num_envs, self.market.n_symbols))
        eng.step()
        infos = self._infos()
        terminated = eng.term.copy()
        truncated = eng.trunc.copy()
        done = terminated | truncated
        if done.any():
            idx = np.flatnonzero(done)
            final_obs = np.full(self.num_envs, None, dtype=object)
            for b in idx:
                final_obs[b] = eng.obs[b].copy()
            infos["final_obs"] = final_obs
            infos["_final_obs"] = done
            infos["final_info"] = {
                key: value for key, value in infos.items() if not key.startswith(("_", "final"))
            }
            infos["_final_info"] = done
            for b in idx:
                self.engine.reset_env(int(b), self._rngs[b], None)
            infos = {
                **infos,
                **{key: v for key, v in self._infos().items() if not key.startswith("_")},
            }
        return eng.obs.copy(), eng.rew.copy(), terminated, truncated, infos

    def set_expert_context(self, values: np.ndarray) -> None:
        """Fill the expert-context slot of every env (`[num_envs, expert_context_dim]`)."""
        v = np.asarray(values, dtype=np.float32)
        expected = (self.num_envs, self.config.expert_context_dim)
        if v.shape != expected:
            raise ValueError(f"expert context has shape {v.shape}; expected {expected}")
        self.engine.ctx[:] = v

    def _infos(self) -> dict[str, Any]:
        eng = self.engine
        # Three contiguous copies; every key is a view of one of them.
        infos: dict[str, Any] = dict(zip(k.INFO_NAMES, eng.info.copy().T, strict=True))
        infos.update(zip(k.FLAG_NAMES, eng.flags.copy().T, strict=True))
        legs = eng.legs.copy()
        infos["spot_qty"] = legs[:, k.L_SPOT]
        infos["perp_qty"] = legs[:, k.L_PERP]
        infos["collateral"] = legs[:, k.L_COLL]
        infos.update(self._masks)
        return infos


_INFO_KEYS = (*k.INFO_NAMES, *k.FLAG_NAMES, "spot_qty", "perp_qty", "collateral")


def _env_seeds(seed: int | Sequence[int | None] | None, n: int) -> list[int | None]:
    if seed is None:
        return [None] * n
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(n)]
    seeds = list(seed)
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} envs")
    return seeds


def __getattr__(name: str) -> Any:
    # `from carry_env.vector import SB3VecEnv` keeps working without importing stable-baselines3
    # (and torch, about 5 s) for every user of the env.
    if name == "SB3VecEnv":
        from carry_env.sb3 import SB3VecEnv

        return SB3VecEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
