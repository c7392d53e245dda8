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

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

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

    Every array `reset` and `step` return is the caller's: fresh each call, never written again
    (gymnasium's `SyncVectorEnv` default, and stable-baselines3 keeps the last observation across
    a step); each info key is a view into one of three arrays (info, flags, legs). A step writes
    reward, flags, info and legs into arrays the engine allocates for that step alone
    (`Engine.renew_outputs`) and hands out without copying them; the observation, which a feed
    outage carries over from the last step, is copied.
    `step_arrays` is `step` without the batch-wide `infos` (only ended envs report theirs), the
    path `SB3VecEnv` takes.

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
        self._action_shape = (num_envs, n)
        none = np.zeros(0, dtype=np.int64)
        self._no_ends = _read_only(EpisodeEnds(none, self.engine.obs[none], self._infos(none)))
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
        mask = np.asarray(opts.pop("reset_mask", self._mask))
        if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
            raise ValueError(
                f"reset_mask must be a bool array of shape ({self.num_envs},), got "
                f"{mask.dtype} {mask.shape}"
            )
        envs = np.flatnonzero(mask)
        for b in envs:
            if seeds[b] is not None:
                self._rngs[b] = seeding.np_random(seeds[b])[0]
        eng = self.engine
        eng.renew_outputs(keep=True)  # the last step's arrays are the caller's
        eng.reset_envs(envs, [self._rngs[b] for b in envs], opts)
        self._needs_reset = False
        infos = self._infos()
        infos.update(self._masks)
        return eng.obs.copy(), infos

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env; finished envs are reset in the same call."""
        terminated, truncated, ended = self._advance(actions)
        eng = self.engine
        if ended.size:
            final_obs = np.full(self.num_envs, None, dtype=object)
            for b, row in zip(ended.tolist(), eng.obs[ended], strict=True):
                final_obs[b] = row
            final_info = self._infos(copy=True)  # the reset below writes the ended envs' rows
            self._reset_ended(ended)
            done = terminated | truncated
            infos: dict[str, Any] = self._infos()
            infos.update(final_obs=final_obs, _final_obs=done, _final_info=done)
            infos["final_info"] = final_info
        else:
            infos = self._infos()
        infos.update(self._masks)
        return eng.obs.copy(), eng.rew, terminated, truncated, infos

    def step_arrays(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, EpisodeEnds]:
        """`step` without the batch-wide `infos`: only the envs whose episode ended report theirs.

        Returns `(obs, reward, terminated, truncated, ends)`, the first four as `step` returns
        them (same-step autoreset included) and `ends` the ended envs' last observations and
        info (see `EpisodeEnds`). Copying and splitting the batch's info is most of `step`'s
        time outside the kernel, and a trainer such as stable-baselines3 reads only the ended
        envs' (`SB3VecEnv` uses this).
        """
        terminated, truncated, ended = self._advance(actions)
        eng = self.engine
        if ended.size:
            ends = EpisodeEnds(ended, eng.obs[ended], self._infos(ended))
            self._reset_ended(ended)
        else:
            ends = self._no_ends
        return eng.obs.copy(), eng.rew, terminated, truncated, ends

    def set_expert_context(self, values: np.ndarray) -> None:
        """Fill the expert-context slot of every env (`[num_envs, expert_context_dim]`)."""
        v = np.asarray(values, dtype=np.float32)
        expected = (self.num_envs, self.config.expert_context_dim)
        if v.shape != expected:
            raise ValueError(f"expert context has shape {v.shape}; expected {expected}")
        self.engine.ctx[:] = v

    def _as_weights(self, actions: Any) -> np.ndarray:
        # The per-asset weights `actions` stand for (a subclass maps other action spaces here).
        return checked_action(actions, self._action_shape)

    def _advance(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # One kernel call, into fresh output arrays (every env is live: ended envs were reset in
        # the step that ended them): `terminated`, `truncated` and the indices of the ended envs,
        # which still hold their last step (`_reset_ended` resets them).
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        eng = self.engine
        eng.act[:] = self._as_weights(actions)
        eng.renew_outputs()
        eng.step()
        return eng.term, eng.trunc, (eng.term | eng.trunc).nonzero()[0]

    def _reset_ended(self, ended: np.ndarray) -> None:
        # Same-step autoreset of the ended envs, together (one kernel call for their first obs).
        rngs = self._rngs
        self.engine.reset_envs(ended, [rngs[b] for b in ended.tolist()], None)

    def _infos(
        self, envs: np.ndarray | None = None, *, copy: bool = False
    ) -> dict[str, np.ndarray]:
        # Every info key of all envs (or of `envs`, in their order), without the `_key` masks, each
        # key a view into the engine's arrays (the step's own, which no later step writes) or,
        # with `copy` or `envs`, into a copy of them.
        eng = self.engine
        if envs is None:
            info, flags, legs = eng.info, eng.flags, eng.legs
            if copy:
                info, flags, legs = info.copy(), flags.copy(), legs.copy()
        else:
            info, flags, legs = eng.info[envs], eng.flags[envs], eng.legs[envs]
        infos = dict(zip(k.INFO_NAMES, info.T, strict=True))
        infos.update(zip(k.FLAG_NAMES, flags.T, strict=True))
        infos.update(zip(_LEG_NAMES, legs.transpose(1, 0, 2), strict=True))
        return infos


class EpisodeEnds(NamedTuple):
    """The envs whose episode ended in a `step_arrays` call, as they were before their reset."""

    envs: np.ndarray
    """Their indices in the batch, ascending (int64)."""
    obs: np.ndarray
    """Their last observations, `[len(envs), obs_dim]` (row j is env `envs[j]`'s)."""
    info: Mapping[str, np.ndarray]
    """Their last info, every `step` info key as `[len(envs)]` (per-asset keys
    `[len(envs), N]`)."""


def _read_only(ends: EpisodeEnds) -> EpisodeEnds:
    # The empty `EpisodeEnds` every step without an ended episode returns (shared, so frozen).
    for arr in (ends.envs, ends.obs, *ends.info.values()):
        arr.flags.writeable = False
    return ends._replace(info=MappingProxyType(dict(ends.info)))


_LEG_NAMES = ("spot_qty", "perp_qty", "collateral")
assert len(_LEG_NAMES) == k.N_LEGS and (k.L_SPOT, k.L_PERP, k.L_COLL) == (0, 1, 2)
_INFO_KEYS = (*k.INFO_NAMES, *k.FLAG_NAMES, *_LEG_NAMES)


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
