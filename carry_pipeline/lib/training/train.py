"""Train one expert on one walk-forward fold's train span, validate it, save it atomically.

`train_expert(spec, market, windows, fold, models_root=...)`:
1. checks the inputs (every market bar inside the fold's train span, windows of the same fold,
   symbols and features, enough bars) and fails at once naming the fold and the problem;
2. splits the train span into a fit part and a held-out tail (`spec.validation_fraction`);
3. pins torch's CPU threads to `spec.threads` (restored afterwards), picks CUDA when available;
4. trains `spec.algorithm` on the batched env (`CarryTradeVectorEnv` -> `SB3VecEnv` ->
   `ExpertVecEnv` -> `VecMonitor`), logging a progress line every `spec.progress_every` steps;
5. rolls the deterministic policy over the held-out tail (validation metrics);
6. writes `<models_root>/<expert>/fold<k>/` through a temporary folder renamed into place, so a
   failed training never replaces a good model, and returns the registry row.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecMonitor

from carry_env.config import EnvConfig
from carry_env.market import MarketData
from carry_pipeline.lib.training.code_version import code_version
from carry_pipeline.lib.training.extractors import EXTRACTORS
from carry_pipeline.lib.training.imitation import warm_start
from carry_pipeline.lib.training.observation import WindowSet, make_expert_env, window_index
from carry_pipeline.lib.training.policy import ALGORITHM_CLASSES, ExpertPolicy, pinned_threads
from carry_pipeline.lib.training.rollout import rollout
from carry_pipeline.lib.training.specs import ExpertSpec

MIN_FIT_BARS = 32
"""Fewest bars (with a window) the fit part of a train span may have."""
MIN_VALIDATION_BARS = 8
"""Fewest bars of the held-out tail."""


class Logger(Protocol):
    """Anything with `info(str)`: a `logging.Logger`, Dagster's `context.log`."""

    def info(self, msg: str) -> Any: ...


@dataclass(frozen=True)
class FoldSpan:
    """A fold's train span (half-open on bar close times, UTC)."""

    fold: int
    train_start: datetime
    train_end: datetime

    @classmethod
    def from_row(cls, row: dict) -> FoldSpan:
        """From a `walk_forward_folds` row."""
        return cls(int(row["fold"]), row["train_start"], row["train_end"])

    @property
    def name(self) -> str:
        """Folder name of the fold, `fold<k>`."""
        return f"fold{self.fold}"


@dataclass(frozen=True)
class TrainingRecord:
    """One row of `models.registry`."""

    expert: str
    fold: int
    train_start: datetime
    train_end: datetime
    fit_end: datetime
    """First bar of the held-out validation tail (the fit part ends before it)."""
    algorithm: str
    seed: int
    threads: int
    device: str
    profile: str
    timesteps: int
    wall_seconds: float
    fps: float
    data_sha256: str
    """sha256 of the windows (values, times, lookback) and the market arrays trained on."""
    model_path: str
    spec: dict[str, Any]
    env_config: dict[str, Any]
    curve: dict[str, Any]
    """Training-curve summary: points `(timesteps, mean episode reward)`, first/last/best, and the
    warm start's imitation summary (None without one)."""
    validation: dict[str, Any]
    code_version: str = field(default_factory=code_version)
    """`code_version.code_version()` of the process that trained (sources and libraries)."""
    trained_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (datetimes as ISO strings), for JSON and metadata."""
        d = asdict(self)
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in d.items()}


class ProgressCallback(BaseCallback):
    """Logs `timesteps, fps, mean episode reward` every `every` timesteps and keeps the curve."""

    def __init__(self, logger: Logger, every: int, expert: str) -> None:
        super().__init__()
        self.log, self.every, self.expert = logger, every, expert
        self.points: list[tuple[int, float]] = []
        self.warm_start: dict[str, Any] | None = None
        """The imitation summary (`imitation.warm_start`) when the expert was warm-started."""
        self._next = every
        self._t0 = time.perf_counter()

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next += self.every
            if self.model.ep_info_buffer is None:
                raise RuntimeError(f"{self.expert}: ProgressCallback runs outside model.learn()")
            rewards = [ep["r"] for ep in self.model.ep_info_buffer]
            mean = float(np.mean(rewards)) if rewards else float("nan")
            fps = self.num_timesteps / max(time.perf_counter() - self._t0, 1e-9)
            self.points.append((int(self.num_timesteps), mean))
            self.log.info(
                f"{self.expert}: {self.num_timesteps} timesteps, {fps:,.0f} fps, "
                f"mean episode reward {mean:.2f} over {len(rewards)} episodes"
            )
        return True

    def summary(self) -> dict[str, Any]:
        """First, last and best mean episode reward, every point, and the warm start's summary
        (None without one)."""
        finite = [(t, r) for t, r in self.points if np.isfinite(r)]
        return {
            "points": self.points,
            "first": finite[0][1] if finite else None,
            "last": finite[-1][1] if finite else None,
            "best": max(r for _, r in finite) if finite else None,
            "warm_start": self.warm_start,
        }


def train_span_market(market: MarketData, fold: FoldSpan) -> MarketData:
    """The bars of `market` inside the fold's train span."""
    lo = int(np.searchsorted(market.ts, _ns(fold.train_start), side="left"))
    hi = int(np.searchsorted(market.ts, _ns(fold.train_end), side="left"))
    if hi - lo < 2:
        raise ValueError(
            f"fold {fold.fold}: the market has {max(hi - lo, 0)} bars in its train span "
            f"{fold.train_start}..{fold.train_end}"
        )
    return market.window(_dt(market.ts[lo]), _dt(market.ts[hi - 1]))


def train_expert(
    spec: ExpertSpec,
    market: MarketData,
    windows: WindowSet,
    fold: FoldSpan,
    *,
    models_root: str | Path,
    stats: pl.DataFrame | None = None,
    profile: str = "demo",
    timesteps: int | None = None,
    base_config: EnvConfig | None = None,
    logger: Logger | None = None,
    tensorboard_dir: str | Path | None = None,
) -> TrainingRecord:
    """Train, validate and save one expert on one fold (see the module docstring).

    Args:
        spec: the expert.
        market: the fold's market restricted to its train span (`train_span_market`).
        windows: the fold's `train` windows.
        fold: the fold's train span.
        models_root: the model store (e.g. `data/models`).
        stats: the fold's `normalisation_stats` rows, saved beside the model.
        profile: `demo` or `full` (`spec.timesteps`); `timesteps` overrides it.
        base_config: env config under the expert's overrides (default `PIPELINE_ENV_CONFIG`).
        logger: receives the progress lines (default: this module's `logging` logger).
        tensorboard_dir: TensorBoard log folder, or None.

    Raises:
        ValueError: bad input, naming the fold and the problem.
    """
    log = logger or logging.getLogger(__name__)
    total = int(timesteps) if timesteps is not None else spec.total_timesteps(profile)
    first, split = check_inputs(spec, market, windows, fold)
    config = spec.env_config(base_config)
    fit = market.window(_dt(market.ts[first]), _dt(market.ts[split - 1]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with pinned_threads(spec.threads):
        started = time.perf_counter()
        model, progress = _learn(spec, fit, windows, config, total, device, log, tensorboard_dir)
        wall = time.perf_counter() - started
        policy = ExpertPolicy(model, spec, config)
        validation = rollout(
            policy,
            market,
            windows,
            spec.observation,
            config,
            start=split,
            end=market.n_bars - 1,
            output=spec.output,
            discrete=spec.algorithm == "MaskablePPO",
            seed=spec.seed,
            decision_bars=spec.decision_bars,
            band=spec.band(),
        )
    target = Path(models_root) / spec.name / fold.name
    record = TrainingRecord(
        expert=spec.name,
        fold=fold.fold,
        train_start=fold.train_start,
        train_end=fold.train_end,
        fit_end=_dt(market.ts[split]),
        algorithm=spec.algorithm,
        seed=spec.seed,
        threads=spec.threads,
        device=device,
        profile=profile,
        timesteps=int(model.num_timesteps),
        wall_seconds=wall,
        fps=model.num_timesteps / wall,
        data_sha256=data_sha256(windows, market),
        model_path=str(target),
        spec=spec.to_dict(),
        env_config=config.to_dict(),
        curve=progress.summary(),
        validation=validation.to_dict(),
    )
    save_expert(target, model, record, stats)
    log.info(
        f"{spec.name} fold {fold.fold}: {record.timesteps} timesteps in {wall:.1f} s on {device}; "
        f"validation net carry {validation.net_carry:.2f} USDT over {validation.steps} bars"
    )
    return record


def check_inputs(
    spec: ExpertSpec, market: MarketData, windows: WindowSet, fold: FoldSpan
) -> tuple[int, int]:
    """Check the training inputs; return the first bar with a window (the fit part starts there)
    and the first bar of the held-out validation tail.

    Raises:
        ValueError: naming the fold and the problem.
    """
    where = f"fold {fold.fold} ({spec.name})"
    if windows.fold not in (-1, fold.fold):
        raise ValueError(f"{where}: the windows belong to fold {windows.fold}")
    if windows.segment != "train":
        raise ValueError(f"{where}: the windows are the {windows.segment!r} segment, not 'train'")
    lo, hi = _ns(fold.train_start), _ns(fold.train_end)
    outside = int(((market.ts < lo) | (market.ts >= hi)).sum())
    if outside:
        raise ValueError(
            f"{where}: {outside} market bars lie outside the train span "
            f"{fold.train_start}..{fold.train_end}; pass train_span_market(market, fold)"
        )
    ends = windows.end_ts_us.astype(np.int64) * 1_000
    if ends.size and ends[-1] >= hi:
        raise ValueError(f"{where}: windows end after the train span ({_dt(ends[-1])})")
    if tuple(windows.symbols) != tuple(market.symbols):
        raise ValueError(
            f"{where}: window symbols {list(windows.symbols)} differ from the market frame's "
            f"{list(market.symbols)}"
        )
    if set(windows.features) != set(market.feature_names):
        missing = sorted(set(market.feature_names) - set(windows.features))
        extra = sorted(set(windows.features) - set(market.feature_names))
        raise ValueError(
            f"{where}: window features differ from the market frame's (in the market only: "
            f"{missing}; in the windows only: {extra})"
        )
    has_window = np.flatnonzero(window_index(market.ts, windows.end_ts_us) >= 0)
    usable = int(has_window.size)
    n_val = max(MIN_VALIDATION_BARS, int(round(usable * spec.validation_fraction)))
    if usable - n_val < MIN_FIT_BARS:
        raise ValueError(
            f"{where}: too few train bars: {market.n_bars} bars in "
            f"{fold.train_start}..{fold.train_end}, {usable} of them with a window; need at "
            f"least {MIN_FIT_BARS} to fit + {MIN_VALIDATION_BARS} to validate"
        )
    return int(has_window[0]), market.n_bars - n_val


def data_sha256(windows: WindowSet, market: MarketData) -> str:
    """sha256 of the windows (values, times, lookback, names) and the market's arrays."""
    h = hashlib.sha256()
    h.update(json.dumps([windows.lookback, windows.symbols, windows.features]).encode())
    for arr in (windows.values, windows.ts_us):
        h.update(np.ascontiguousarray(arr).tobytes())
    for name in (
        "ts",
        "spot",
        "perp",
        "funding",
        "spot_depth",
        "perp_depth",
        "spread_bps",
        "sentiment",
        "stale",
        "features",
    ):
        h.update(np.ascontiguousarray(getattr(market, name)).tobytes())
    return h.hexdigest()


def save_expert(
    target: Path, model: Any, record: TrainingRecord, stats: pl.DataFrame | None
) -> None:
    """Write the model, spec, env config, statistics and record into `target` atomically: a
    sibling temporary folder is filled, then swapped in (the previous model is removed only after
    the new one is in place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    old = target.parent / f".{target.name}.old"
    try:
        model.save(staging / "model.zip")
        (staging / "spec.json").write_text(json.dumps(record.spec, indent=2))
        (staging / "env_config.json").write_text(json.dumps(record.env_config, indent=2))
        (staging / "record.json").write_text(json.dumps(record.to_dict(), indent=2, default=str))
        if stats is not None:
            stats.filter(pl.col("fold") == record.fold).write_parquet(
                staging / "normalisation_stats.parquet"
            )
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def policy_kwargs(spec: ExpertSpec) -> dict[str, Any]:
    """SB3 policy kwargs of the spec: extractor, heads, (LSTM size, initial log std)."""
    kwargs: dict[str, Any] = {
        "features_extractor_class": EXTRACTORS[spec.extractor],
        "net_arch": {"pi": list(spec.net_arch), "vf": list(spec.net_arch)},
    }
    if spec.extractor == "cross_asset":
        kwargs["features_extractor_kwargs"] = {
            "embed_dim": spec.embed_dim,
            "attention_heads": spec.attention_heads,
        }
    if spec.algorithm == "RecurrentPPO":
        kwargs["lstm_hidden_size"] = spec.lstm_hidden_size
    if spec.algorithm != "MaskablePPO":
        kwargs["log_std_init"] = spec.log_std_init
    return kwargs


def _learn(
    spec: ExpertSpec,
    fit: MarketData,
    windows: WindowSet,
    config: EnvConfig,
    total: int,
    device: str,
    log: Logger,
    tensorboard_dir: str | Path | None,
) -> tuple[Any, ProgressCallback]:
    env = make_expert_env(
        fit,
        windows,
        spec.observation,
        config,
        spec.n_envs,
        output=spec.output,
        discrete=spec.algorithm == "MaskablePPO",
        decision_bars=spec.decision_bars,
        band=spec.band(),
    )
    vec = VecMonitor(env)
    vec.seed(spec.seed)
    policy_name = "MultiInputLstmPolicy" if spec.algorithm == "RecurrentPPO" else "MultiInputPolicy"
    model = ALGORITHM_CLASSES[spec.algorithm](
        policy_name,
        vec,
        n_steps=spec.n_steps,
        batch_size=spec.batch_size,
        n_epochs=spec.n_epochs,
        learning_rate=spec.learning_rate,
        gamma=spec.gamma,
        ent_coef=spec.ent_coef,
        policy_kwargs=policy_kwargs(spec),
        seed=spec.seed,
        device=device,
        tensorboard_log=str(tensorboard_dir) if tensorboard_dir else None,
        verbose=0,
    )
    progress = ProgressCallback(log, spec.progress_every, spec.name)
    if spec.warm_start is not None:
        progress.warm_start = warm_start(
            model,
            spec.warm_start,
            fit,
            windows,
            spec.observation,
            config,
            spec.n_envs,
            seed=spec.seed,
            band=spec.band(),
        )
        ws = progress.warm_start
        log.info(
            f"{spec.name}: warm start on {ws['observations']} teacher-labelled observations "
            f"(teacher cuts {ws['teacher_cut_share']:.1%}), imitation loss "
            f"{ws['loss_first']:.3f} -> {ws['loss_last']:.3f}, agreement {ws['agreement']:.1%}, "
            f"{ws['wall_seconds']:.1f} s"
        )
    model.learn(total_timesteps=total, callback=progress, progress_bar=False)
    return model, progress


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ns(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _dt(ns: int | np.integer) -> datetime:
    return datetime.fromtimestamp(int(ns) // 1_000_000_000, UTC).replace(
        microsecond=(int(ns) % 1_000_000_000) // 1_000
    )
