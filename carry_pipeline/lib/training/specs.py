"""Expert specifications: algorithm, network, observation, reward shaping and budgets per expert.

`EXPERT_SPECS` holds the four defaults (`anomaly`, `short_term`, `long_term`, `sentiment`);
`expert_spec(name, **overrides)` returns one with fields replaced (the Dagster config's path), and
`LONG_TERM_RECURRENT` is the long-term expert with an LSTM (sb3-contrib RecurrentPPO).

Every spec is checked when built: an unknown algorithm, extractor, output, EnvConfig override or a
bad number fails at once with a message naming the expert and the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from carry_env.config import EnvConfig
from carry_pipeline.lib.env_config import PIPELINE_ENV_CONFIG
from carry_pipeline.lib.training.cadence import episode_problems
from carry_pipeline.lib.training.extractors import EXTRACTORS
from carry_pipeline.lib.training.imitation import WarmStart
from carry_pipeline.lib.training.observation import ExposureBand, ObservationSpec, Output

ALGORITHMS = ("PPO", "RecurrentPPO", "MaskablePPO")
OUTPUTS = ("weights", "exposure")
PROFILES = ("demo", "full")


@dataclass(frozen=True)
class ExpertSpec:
    """Everything that defines how one expert trains (JSON via `to_dict` / `from_dict`)."""

    name: str
    """Expert name; the models folder is `<models_root>/<name>/<fold>/`."""
    algorithm: str = "PPO"
    """`PPO`, `RecurrentPPO` (sb3-contrib, LSTM) or `MaskablePPO` (sb3-contrib, the discrete masked
    env `CarryTradeDiscreteVectorEnv`)."""
    output: Output = "weights"
    """`weights`: the action is the env's weight per asset. `exposure`: a multiplier in [0, 1] per
    asset that scales a reference book (`observation.ExpertVecEnv`)."""
    band_cut: float = 0.1
    """Exposure experts: the smallest cut of a held book that trades, as a fraction of its size
    (`observation.ExposureBand`); a cut to flat always trades."""
    band_add: float = 0.25
    """Exposure experts: the smallest addition to a held book that trades, as a fraction of the
    target size (`observation.ExposureBand`)."""
    extractor: str = "cross_asset"
    """`cross_asset` (shared encoder + attention across assets) or `mlp` (flattened input)."""
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden layers of the actor and of the critic heads (each its own), after the extractor."""
    embed_dim: int = 32
    """Per-asset embedding size of the cross-asset extractor."""
    attention_heads: int = 2
    """Attention heads of the cross-asset extractor (divides `embed_dim`)."""
    lstm_hidden_size: int = 64
    """LSTM size (RecurrentPPO only)."""
    observation: ObservationSpec = field(default_factory=ObservationSpec)
    """What the expert sees."""
    env_overrides: Mapping[str, Any] = field(default_factory=dict)
    """`EnvConfig` fields replaced for this expert's training: its reward shaping."""
    timesteps: Mapping[str, int] = field(default_factory=lambda: {"demo": 8_192, "full": 1_000_000})
    """Environment steps per training profile (`demo`, `full`)."""
    n_envs: int = 16
    """Envs in the batched env."""
    n_steps: int = 64
    """Rollout steps per env per update."""
    batch_size: int = 512
    """Minibatch size (the lever on PPO's speed: STACK_FACTS.md)."""
    n_epochs: int = 4
    learning_rate: float = 1e-3
    gamma: float = 0.99
    ent_coef: float = 0.0
    log_std_init: float = -1.0
    """Initial log std of the Gaussian actions (continuous algorithms): exploration that churns
    the book pays trading costs at every step, so it starts narrow."""
    episode_length: int = 256
    """Bars per training episode (each starts at a random bar of the fit span); at least two
    decisions (`2 * decision_bars`)."""
    decision_bars: int = 1
    """Bars per decision: the expert decides once every this many bars and holds its book in
    between (`cadence`); its rewards are summed over them and `gamma` is per decision. In the
    backtest and paper trading decisions fall on the UTC periods of this many bars (32 fifteen-
    minute bars: at each 8-hour funding settlement)."""
    seed: int = 0
    threads: int = 1
    """torch CPU threads, pinned while training and recorded (1 vs 2 give different weights)."""
    validation_fraction: float = 0.2
    """Held-out tail of the train span used for validation metrics (never the test span)."""
    progress_every: int = 2_048
    """Log a progress line every this many timesteps."""
    warm_start: WarmStart | None = None
    """Imitation of the rule-based risk teacher before PPO (`imitation.WarmStart`: collection
    steps, epochs, batch size, learning rate, the teacher's thresholds); None trains PPO from
    scratch. Exposure experts on PPO only."""

    def __post_init__(self) -> None:
        if isinstance(self.warm_start, Mapping):
            object.__setattr__(self, "warm_start", _warm_start(self.warm_start))
        problems = self.problems()
        if problems:
            raise ValueError(f"expert {self.name!r}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid field, named, with what it must be."""
        out = []
        if self.algorithm not in ALGORITHMS:
            out.append(f"algorithm {self.algorithm!r} is not one of {list(ALGORITHMS)}")
        if self.output not in OUTPUTS:
            out.append(f"output {self.output!r} is not one of {list(OUTPUTS)}")
        if self.output == "exposure" and self.algorithm == "MaskablePPO":
            out.append("output 'exposure' needs a continuous algorithm, not MaskablePPO")
        if self.extractor not in EXTRACTORS:
            out.append(f"extractor {self.extractor!r} is not one of {list(EXTRACTORS)}")
        if not self.net_arch or any(int(x) < 1 for x in self.net_arch):
            out.append(f"net_arch {list(self.net_arch)} must be positive layer sizes")
        for name in (
            "embed_dim",
            "attention_heads",
            "lstm_hidden_size",
            "n_envs",
            "n_epochs",
            "episode_length",
            "decision_bars",
            "threads",
            "progress_every",
        ):
            if getattr(self, name) < 1:
                out.append(f"{name}={getattr(self, name)} must be >= 1")
        out += episode_problems(self.episode_length, self.decision_bars)
        for name in ("band_cut", "band_add"):
            if not 0.0 <= getattr(self, name) < 1.0:
                out.append(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.decision_bars > 1 and self.output == "exposure":
            out.append(
                f"decision_bars={self.decision_bars}: an exposure expert cuts risk at the bar it "
                "sees stress, so it decides every bar (decision_bars 1)"
            )
        if self.embed_dim % max(self.attention_heads, 1):
            out.append(f"embed_dim={self.embed_dim} is not divisible by attention_heads")
        if self.n_steps < 2:
            out.append(f"n_steps={self.n_steps} must be >= 2")
        if not 1 < self.batch_size <= self.n_envs * self.n_steps:
            out.append(
                f"batch_size={self.batch_size} must be in [2, n_envs * n_steps = "
                f"{self.n_envs * self.n_steps}]"
            )
        if not self.learning_rate > 0:
            out.append(f"learning_rate={self.learning_rate} must be > 0")
        if not 0 < self.gamma <= 1:
            out.append(f"gamma={self.gamma} must be in (0, 1]")
        if self.ent_coef < 0:
            out.append(f"ent_coef={self.ent_coef} must be >= 0")
        if not 0 < self.validation_fraction <= 0.5:
            out.append(f"validation_fraction={self.validation_fraction} must be in (0, 0.5]")
        missing = [p for p in PROFILES if p not in self.timesteps]
        if missing or any(int(v) < 1 for v in self.timesteps.values()):
            out.append(f"timesteps {dict(self.timesteps)} needs positive {list(PROFILES)}")
        out += [f"observation: {p}" for p in self.observation.problems()]
        if self.warm_start is not None:
            if self.output != "exposure" or self.algorithm != "PPO":
                out.append(
                    "warm_start imitates the risk teacher's exposure multiplier: it needs "
                    f"output 'exposure' and algorithm 'PPO', not {self.output!r} on "
                    f"{self.algorithm!r}"
                )
            out += self.warm_start.problems()
        known = {f.name for f in fields(EnvConfig)}
        unknown = sorted(set(self.env_overrides) - known)
        if unknown:
            out.append(f"env_overrides {unknown} are not EnvConfig fields")
        else:
            try:
                self.env_config()
            except ValueError as err:
                out.append(f"env_overrides: {err}")
        return out

    def band(self) -> ExposureBand | None:
        """The re-trade band of an exposure expert's book; None for a `weights` expert."""
        if self.output != "exposure":
            return None
        return ExposureBand(cut=self.band_cut, add=self.band_add)

    def env_config(self, base: EnvConfig | None = None) -> EnvConfig:
        """The training env's config: `base` (default `PIPELINE_ENV_CONFIG`) with random starts,
        this expert's episode length and its overrides."""
        return replace(
            base or PIPELINE_ENV_CONFIG,
            random_start=True,
            episode_length=self.episode_length,
            **dict(self.env_overrides),
        )

    def total_timesteps(self, profile: str) -> int:
        """Timesteps of a profile.

        Raises:
            ValueError: unknown profile (naming the expert).
        """
        if profile not in self.timesteps:
            raise ValueError(
                f"expert {self.name!r}: profile {profile!r} is not one of {sorted(self.timesteps)}"
            )
        return int(self.timesteps[profile])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values."""
        d = asdict(self)
        d["env_overrides"] = dict(self.env_overrides)
        d["timesteps"] = dict(self.timesteps)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExpertSpec:
        """Inverse of `to_dict`."""
        d = dict(d)
        warm = d.pop("warm_start", None)
        obs = dict(d.pop("observation", {}))
        for key in ("window_features", "asset_fields", "global_fields"):
            if obs.get(key) is not None:
                obs[key] = tuple(obs[key])
        return cls(
            **{**d, "net_arch": tuple(d.get("net_arch", (64, 64)))},
            observation=ObservationSpec(**obs),
            warm_start=_warm_start(warm),
        )


def _warm_start(value: WarmStart | Mapping[str, Any] | None) -> WarmStart | None:
    if value is None or isinstance(value, WarmStart):
        return value
    known = {f.name for f in fields(WarmStart)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"warm_start: {unknown} are not WarmStart fields {sorted(known)}")
    return WarmStart(**value)


# Anomaly expert: crashes, halts, outages and funding spikes at far higher rates than the default
# market, with drawdown and liquidation weighted heavily, so cutting exposure in stress pays.
# Rewards in tenths of a percent of equity (`reward_scale` 10, not the env's basis points): a
# liquidation costs about 80 % of equity with its penalty, -8,000 in bp, and PPO's value loss on
# returns of that size is ~1e7, whose gradient swamps the policy's under SB3's global gradient-norm
# clip (0.5), so the policy never moved (a constant multiplier of 0.3, cutting ahead of 0 of 6
# held-out crashes; at 10 it cuts ahead of 6 of 6). Warm-started by imitation of the risk teacher
# (`imitation.WarmStart`): PPO alone learns to cut but not to cut to exactly 0 (any exposure left
# is liquidated by a squeeze) nor to hold the full book in calm markets (`test_learning_anomaly`).
ANOMALY = ExpertSpec(
    name="anomaly",
    output="exposure",
    net_arch=(128, 64),
    observation=ObservationSpec(
        asset_fields=(
            "anomaly_score",
            "stale",
            "spread_bps",
            "realised_vol",
            "max_leverage",
            "basis_10bp",
            "spot_exposure",
            "perp_exposure",
            "perp_margin_buffer",
        ),
        global_fields=("drawdown", "margin_buffer", "gross_leverage", "halted"),
    ),
    env_overrides={
        "flash_crash_per_day": 0.5,
        "halt_per_day": 0.2,
        "feed_outage_per_day": 0.3,
        "funding_spike_prob": 0.05,
        "drawdown_threshold": 0.01,
        "drawdown_penalty": 0.3,
        "liquidation_penalty": 0.5,
        "reward_scale": 10.0,
    },
    timesteps={"demo": 8_192, "full": 2_000_000},
    warm_start=WarmStart(),
)
# The weights experts decide on a cadence (`cadence`): one decision per 8-hour funding interval
# (32 fifteen-minute bars) for the slow experts, every 2 hours for the intraday one. Deciding every
# bar, each expert traded small books that its exploration re-traded bar after bar, and entering
# a book (about 11 bp of equity) paid back only after ~1,140 bars of the demo market's funding,
# beyond a 256-bar episode at gamma 0.99 (README, "Why ..."). Per decision, gamma 0.99 looks
# about 100 decisions ahead: 33 days at 32 bars.
SHORT_TERM = ExpertSpec(
    name="short_term",
    decision_bars=8,
    episode_length=512,
    net_arch=(32, 16),
    observation=ObservationSpec(
        asset_fields=(
            "funding_bp",
            "funding_countdown_8h",
            "basis_10bp",
            "spread_bps",
            "spot_exposure",
            "perp_exposure",
            "net_delta",
            "perp_margin_buffer",
        ),
    ),
    # Turnover-aware: 1 bp of equity per unit of equity traded on top of the booked costs.
    env_overrides={"turnover_penalty": 1e-4},
    timesteps={"demo": 8_192, "full": 1_000_000},
)
# Long-term expert, default form: PPO over a frame-stacked history (4 consecutive windows thinned
# to every 4th bar: 4 x 64 fifteen-minute bars = 2.7 days of trend in 64 rows). RecurrentPPO
# (LONG_TERM_RECURRENT) is the same expert with memory, but runs about 10x slower per timestep on
# CPU (STACK_FACTS.md: ~1k fps at batch 1,024 against PPO's ~13k), which the demo budget (four
# experts and the meta-controller in 3 minutes on 2 cores) cannot afford.
LONG_TERM = ExpertSpec(
    name="long_term",
    net_arch=(128, 64),
    observation=ObservationSpec(
        history_windows=4,
        history_stride=4,
        asset_fields=(
            "funding_sma3_bp",
            "realised_vol",
            "spot_exposure",
            "perp_exposure",
            "perp_margin_buffer",
        ),
    ),
    decision_bars=32,
    episode_length=1_024,
    timesteps={"demo": 8_192, "full": 2_000_000},
)
LONG_TERM_RECURRENT = replace(
    LONG_TERM,
    algorithm="RecurrentPPO",
    observation=replace(LONG_TERM.observation, history_windows=1, history_stride=1),
    batch_size=256,
)
SENTIMENT = ExpertSpec(
    name="sentiment",
    decision_bars=32,
    episode_length=1_024,
    net_arch=(32, 16),
    observation=ObservationSpec(
        window_features=("f_sent_", "f_funding"),
        asset_fields=(
            "sentiment",
            "funding_bp",
            "funding_sma3_bp",
            "spot_exposure",
            "perp_exposure",
        ),
    ),
    timesteps={"demo": 8_192, "full": 1_000_000},
)
EXPERT_SPECS: dict[str, ExpertSpec] = {
    s.name: s for s in (ANOMALY, SHORT_TERM, LONG_TERM, SENTIMENT)
}


def expert_spec(name: str, **overrides: Any) -> ExpertSpec:
    """A default spec with fields replaced.

    Raises:
        ValueError: unknown expert or field, or an invalid value (naming the expert and field).
    """
    if name not in EXPERT_SPECS:
        raise ValueError(f"unknown expert {name!r}; experts are {sorted(EXPERT_SPECS)}")
    known = {f.name for f in fields(ExpertSpec)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"expert {name!r}: {unknown} are not ExpertSpec fields")
    return replace(EXPERT_SPECS[name], **overrides)
