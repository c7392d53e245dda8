"""The `model_settings` resource: training profile, seed, threads, store and per-expert overrides
shared by the `models` assets (the meta-controller must find the experts where they were saved).

Change them in the run config under `resources.model_settings.config`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from carry_pipeline.lib.training.meta import MetaSpec
from carry_pipeline.lib.training.specs import ExpertSpec, expert_spec

REPO_ROOT = Path(__file__).resolve().parents[3]
EXPERTS = ("anomaly", "short_term", "long_term", "sentiment")


class ModelSettings(dg.ConfigurableResource):
    """Settings of `anomaly_expert`, `short_term_expert`, `long_term_expert`, `sentiment_expert`
    and `meta_controller`."""

    profile: Literal["demo", "full"] = Field(
        default="demo",
        description="Timesteps per training: demo (make run, minutes on 2 cores) or full.",
    )
    timesteps: int | None = Field(
        default=None,
        description="Timesteps of every training, overriding the profile; None: profile.",
    )
    seed: int = Field(default=0, description="Seed of every training (recorded in the registry).")
    threads: int = Field(
        default=1, description="torch CPU threads per training (pinned; changes the weights)."
    )
    models_root: str = Field(
        default=str(REPO_ROOT / "data" / "models"),
        description="Model store: <models_root>/<expert>/fold<k>/.",
    )
    folds: list[int] | None = Field(
        default=None,
        description="Folds to train (walk_forward_folds.fold; the latest window is the last one); "
        "None trains every fold and the latest window.",
    )
    reuse: bool = Field(
        default=True,
        description="Reuse a saved model instead of retraining when models.registry holds the "
        "same training (spec, seed, threads, data hash; lib.training.reuse); false retrains all.",
    )
    tensorboard: bool = Field(
        default=False, description="Write TensorBoard logs under tensorboard_root."
    )
    tensorboard_root: str = Field(
        default=str(REPO_ROOT / "data" / "tensorboard"), description="TensorBoard log folder."
    )
    anomaly: str = Field(
        default="{}",
        description='JSON object of ExpertSpec fields for the anomaly expert, e.g. {"net_arch": '
        '[64, 32], "env_overrides": {"flash_crash_per_day": 1.0}, "warm_start": {"epochs": 8, '
        '"learning_rate": 3e-4}} (warm_start: the imitation of the risk teacher before PPO, '
        "fields of imitation.WarmStart; null trains PPO alone).",
    )
    short_term: str = Field(
        default="{}", description="JSON object of ExpertSpec fields for the short-term expert."
    )
    long_term: str = Field(
        default="{}",
        description='JSON object of ExpertSpec fields for the long-term expert; {"algorithm": '
        '"RecurrentPPO", "observation": {"history_windows": 1}} gives the LSTM form.',
    )
    sentiment: str = Field(
        default="{}", description="JSON object of ExpertSpec fields for the sentiment expert."
    )
    meta: str = Field(
        default="{}",
        description='JSON object of MetaSpec fields for the meta-controller, e.g. {"gating": '
        '"top1", "balance_weight": 0.2}.',
    )

    def expert(self, name: str) -> ExpertSpec:
        """The expert's spec: its defaults, then seed/threads, then its JSON overrides.

        Raises:
            ValueError: bad JSON or field, naming the expert.
        """
        overrides = _overrides(getattr(self, name), name)
        defaults = expert_spec(name).to_dict()
        # Nested specs merge key by key over the expert's defaults (an `env_overrides` entry
        # changes that EnvConfig field and keeps the expert's other overrides, such as its reward
        # scale); `"warm_start": null` turns the warm start off.
        for nested in ("observation", "env_overrides", "warm_start"):
            value = overrides.get(nested)
            if isinstance(value, dict):
                overrides[nested] = {**(defaults[nested] or {}), **value}
        d = {**defaults, "seed": self.seed, "threads": self.threads}
        known = set(d)
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"expert {name!r}: {unknown} are not ExpertSpec fields")
        return ExpertSpec.from_dict({**d, **overrides})

    def meta_spec(self) -> MetaSpec:
        """The meta-controller's spec (defaults, seed/threads, JSON overrides)."""
        overrides = _overrides(self.meta, "meta")
        d = {**MetaSpec().to_dict(), "seed": self.seed, "threads": self.threads}
        unknown = sorted(set(overrides) - set(d))
        if unknown:
            raise ValueError(f"meta-controller: {unknown} are not MetaSpec fields")
        return MetaSpec.from_dict({**d, **overrides})


def _overrides(text: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"expert {name!r}: overrides are not JSON ({err})") from err
    if not isinstance(value, dict):
        raise ValueError(f"expert {name!r}: overrides must be a JSON object, got {text!r}")
    return value


@dg.definitions
def resources() -> dg.Definitions:
    """The `model_settings` resource with the demo profile."""
    return dg.Definitions(resources={"model_settings": ModelSettings()})
