"""Model assets (DuckDB schema `models`): `anomaly_expert`, `short_term_expert`,
`long_term_expert`, `sentiment_expert` and `meta_controller`.

Each trains once per walk-forward fold, on that fold's train span only, and once on the latest
window, through `lib.training` (`train_expert`, `train_meta_controller`), saving under
`<models_root>/<expert>/fold<k>/`. Before any training the asset builds its spec and checks every
fold's inputs, so bad config or data fails the run at once, naming the expert, with nothing written.
After each fold its registry row is appended to `models.registry` (append-only: the history of
every training); the asset's own table `models.<asset>` holds this materialisation's rows (the
meta-controller reads the experts' folders from them). A fold that fails mid-training leaves its
previous model folder as it was (atomic save) and adds no row.

Reuse (`lib.training.reuse`, on unless `model_settings.reuse` is false): a fold whose training
would repeat one in `models.registry` (same spec, env config, seed, threads, device, profile,
timesteps, train span and data hash; for the meta-controller also experts no newer than it) and
whose model folder still holds that training is not retrained: its registry row goes into this
materialisation's table as it is (`run_id` and `trained_at` of the run that trained it), nothing
is appended to `models.registry`, and the metadata counts it under `reused`.

No pool: under Dagster's multiprocess executor the four experts of a fold train side by side,
each step a process with its own pinned torch threads (`model_settings.threads`, default 1, so
four trainings on a small box do not fight over its cores). Only their DuckDB accesses are
serialised, by the file's lock (`lib/duckdb_lock.py`): reading the inputs (shared), appending each
registry row and writing the asset's table (exclusive), each for that connection only. The
meta-controller, which waits for all four, does the same. See the README ("Beyond one machine")
for running them on more machines.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext
from dagster_duckdb import DuckDBResource

from carry_pipeline.defs.models.resources import ModelSettings
from carry_pipeline.lib.training.meta import train_meta_controller
from carry_pipeline.lib.training.registry import (
    REGISTRY_SCHEMA,
    FoldData,
    append_registry,
    fold_inputs,
    market_data,
    registry_frame,
)
from carry_pipeline.lib.training.reuse import (
    TrainingKey,
    expert_key,
    meta_key,
    read_registry,
    reusable_row,
)
from carry_pipeline.lib.training.train import TrainingRecord, check_inputs, train_expert

SCHEMA = "models"
GROUP = "models"
GATED = ("short_term", "long_term", "sentiment")
UPSTREAM = {
    "market_bars": dg.AssetKey(["features", "market_bars"]),
    "carry_features": dg.AssetKey(["features", "carry_features"]),
    "sentiment_windows": dg.AssetKey(["features", "sentiment_windows"]),
    "walk_forward_folds": dg.AssetKey(["datasets", "walk_forward_folds"]),
    "normalisation_stats": dg.AssetKey(["datasets", "normalisation_stats"]),
    "training_windows": dg.AssetKey(["datasets", "training_windows"]),
}
EXPERT_KEYS = {
    f"{name}_expert": dg.AssetKey([SCHEMA, f"{name}_expert"]) for name in ("anomaly", *GATED)
}


@contextmanager
def failing_for(expert: str) -> Iterator[None]:
    """Turn a lib `ValueError` / `FileNotFoundError` into a non-retried `dg.Failure` naming the
    expert."""
    try:
        yield
    except (ValueError, FileNotFoundError) as exc:
        raise dg.Failure(description=f"{expert}: {exc}", allow_retries=False) from exc


def _folds(settings: ModelSettings, inputs: dict[str, pl.DataFrame]) -> list[FoldData]:
    market = market_data(
        inputs["market_bars"], inputs["carry_features"], inputs["sentiment_windows"]
    )
    return fold_inputs(
        market, inputs["walk_forward_folds"], inputs["training_windows"], settings.folds
    )


Reuse = Callable[[FoldData], dict[str, Any] | None]
"""Per fold: the registry row of a saved model to reuse instead of training, or None."""


def _reuse(
    settings: ModelSettings,
    duckdb: DuckDBResource,
    key_of: Callable[[FoldData], TrainingKey],
    not_before: Callable[[FoldData], datetime | None] = lambda _: None,
) -> Reuse:
    """Each fold's reusable registry row (`lib.training.reuse`); never one when reuse is off."""
    if not settings.reuse:
        return lambda _: None
    with duckdb.get_connection() as con:
        registry = read_registry(con)
    return lambda data: reusable_row(registry, key_of(data), not_before=not_before(data))


def _train_folds(
    context: AssetExecutionContext,
    duckdb: DuckDBResource,
    name: str,
    folds: list[FoldData],
    train_one: Callable[[FoldData], TrainingRecord],
    reuse: Reuse,
) -> dg.Output[pl.DataFrame]:
    """Train each fold (or reuse its saved model), append the registry rows of the trainings,
    and return this run's rows with metadata."""
    rows, reused = [], []
    for data in folds:
        found = reuse(data)
        if found is not None:
            context.log.info(
                f"{name}: fold {data.fold.fold} reuses {found['model_path']} (trained by run "
                f"{found['run_id']} at {found['trained_at']:%Y-%m-%d %H:%M:%S} UTC on the same "
                "spec, seed, threads and data); not retrained, no registry row added"
            )
            rows.append(pl.DataFrame([found], schema=REGISTRY_SCHEMA))
            reused.append(data.fold.fold)
            continue
        context.log.info(
            f"{name}: training fold {data.fold.fold}{' (latest window)' if data.is_latest else ''}"
            f" on {data.fold.train_start} .. {data.fold.train_end}, {data.market.n_bars} bars"
        )
        with failing_for(name):
            record = train_one(data)
        row = registry_frame([(record, data.is_latest)], context.run.run_id)
        with duckdb.get_connection() as con:
            total = append_registry(con, row)
        context.log.info(
            f"{name}: fold {data.fold.fold} saved to {record.model_path}; "
            f"models.registry has {total} rows"
        )
        rows.append(row)
    frame = pl.concat(rows)
    return dg.Output(frame, metadata=_metadata(frame, reused))


def _metadata(frame: pl.DataFrame, reused: list[int]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "trainings": frame.height - len(reused),
        "reused": len(reused),
        "reused_folds": ", ".join(str(f) for f in reused) or "none",
        "timesteps": int(frame["timesteps"].sum()),
        "wall_seconds": float(frame["wall_seconds"].sum()),
        "mean_fps": float(frame["fps"].mean()),  # type: ignore[arg-type]
        "mean_val_net_carry": float(frame["val_net_carry"].mean()),  # type: ignore[arg-type]
        "models": dg.MetadataValue.md(
            "\n".join(
                [
                    "| fold | latest | reused | timesteps | wall s | val net carry | path |",
                    "| --- | --- | --- | --- | --- | --- | --- |",
                ]
                + [
                    f"| {r['fold']} | {r['is_latest']} | {r['fold'] in reused} | "
                    f"{r['timesteps']} | {r['wall_seconds']:.1f} | {r['val_net_carry']:.2f} | "
                    f"{r['model_path']} |"
                    for r in frame.iter_rows(named=True)
                ]
            )
        ),
    }
    for r in frame.iter_rows(named=True):
        tag = "latest" if r["is_latest"] else f"fold{r['fold']}"
        meta[f"{tag}_val_net_carry"] = float(r["val_net_carry"])
        meta[f"{tag}_val_max_drawdown"] = float(r["val_max_drawdown"])
        meta[f"{tag}_wall_seconds"] = float(r["wall_seconds"])
        meta[f"{tag}_reused"] = r["fold"] in reused
    return meta


def _tensorboard(settings: ModelSettings, name: str) -> str | None:
    return str(Path(settings.tensorboard_root) / name) if settings.tensorboard else None


def make_expert_asset(name: str) -> dg.AssetsDefinition:
    """The `models/<name>_expert` asset (see the module docstring)."""

    @dg.asset(
        name=f"{name}_expert",
        key_prefix=SCHEMA,
        group_name=GROUP,
        ins={arg: dg.AssetIn(key=key) for arg, key in UPSTREAM.items()},
        kinds={"duckdb", "polars", "pytorch"},
        description=f"The {name} expert trained on each fold's train span and on the latest "
        "window; this run's registry rows (history in models.registry).",
    )
    def _asset(
        context: AssetExecutionContext,
        model_settings: ModelSettings,
        duckdb: DuckDBResource,
        **inputs: pl.DataFrame,
    ) -> dg.Output[pl.DataFrame]:
        with failing_for(name):
            spec = model_settings.expert(name)
            folds = _folds(model_settings, inputs)
            for data in folds:
                check_inputs(spec, data.market, data.windows, data.fold)
        stats = inputs["normalisation_stats"]

        def train_one(data: FoldData) -> TrainingRecord:
            return train_expert(
                spec,
                data.market,
                data.windows,
                data.fold,
                models_root=model_settings.models_root,
                stats=stats,
                profile=model_settings.profile,
                timesteps=model_settings.timesteps,
                logger=context.log,
                tensorboard_dir=_tensorboard(model_settings, name),
            )

        def key_of(data: FoldData) -> TrainingKey:
            return expert_key(
                spec, data, profile=model_settings.profile, timesteps=model_settings.timesteps
            )

        reuse = _reuse(model_settings, duckdb, key_of)
        return _train_folds(context, duckdb, name, folds, train_one, reuse)

    return _asset


anomaly_expert = make_expert_asset("anomaly")
short_term_expert = make_expert_asset("short_term")
long_term_expert = make_expert_asset("long_term")
sentiment_expert = make_expert_asset("sentiment")


@dg.asset(
    key_prefix=SCHEMA,
    group_name=GROUP,
    ins={
        **{arg: dg.AssetIn(key=key) for arg, key in UPSTREAM.items()},
        **{arg: dg.AssetIn(key=key) for arg, key in EXPERT_KEYS.items()},
    },
    kinds={"duckdb", "polars", "pytorch"},
)
def meta_controller(
    context: AssetExecutionContext,
    model_settings: ModelSettings,
    duckdb: DuckDBResource,
    **inputs: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """The meta-controller gating the short-term, long-term and sentiment experts of each fold
    (the anomaly expert's multiplier on top), trained on that fold's train span; this run's
    registry rows (history in models.registry)."""
    name = "meta_controller"
    with failing_for(name):
        spec = model_settings.meta_spec()
        folds = _folds(model_settings, inputs)
        paths = {data.fold.fold: _expert_paths(inputs, data.fold.fold) for data in folds}
        for data in folds:
            check_inputs(spec, data.market, data.windows, data.fold)  # type: ignore[arg-type]
    stats = inputs["normalisation_stats"]

    def train_one(data: FoldData) -> TrainingRecord:
        experts = paths[data.fold.fold]
        return train_meta_controller(
            spec,
            {k: experts[k] for k in GATED},
            data.market,
            data.windows,
            data.fold,
            models_root=model_settings.models_root,
            anomaly=experts["anomaly"],
            stats=stats,
            profile=model_settings.profile,
            timesteps=model_settings.timesteps,
            logger=context.log,
            tensorboard_dir=_tensorboard(model_settings, spec.name),
        )

    def key_of(data: FoldData) -> TrainingKey:
        experts = paths[data.fold.fold]
        return meta_key(
            spec,
            data,
            {k: experts[k] for k in GATED},
            experts["anomaly"],
            profile=model_settings.profile,
            timesteps=model_settings.timesteps,
        )

    def experts_trained(data: FoldData) -> datetime:
        # A meta-controller older than one of its experts' models was trained over another one.
        times: list[datetime] = [
            inputs[arg].filter(pl.col("fold") == data.fold.fold)["trained_at"][0]
            for arg in EXPERT_KEYS
        ]
        return max(times)

    reuse = _reuse(model_settings, duckdb, key_of, experts_trained)
    return _train_folds(context, duckdb, name, folds, train_one, reuse)


def _expert_paths(inputs: dict[str, pl.DataFrame], fold: int) -> dict[str, str]:
    """Folder of each expert's model of `fold`, from the experts' tables.

    Raises:
        ValueError: an expert has no model of the fold.
    """
    out = {}
    for arg in EXPERT_KEYS:
        rows = inputs[arg].filter(pl.col("fold") == fold)
        if rows.height != 1:
            raise ValueError(
                f"fold {fold}: models.{arg} has {rows.height} rows for it; materialise {arg} "
                "for the same folds first"
            )
        out[arg.removesuffix("_expert")] = rows["model_path"][0]
    return out
