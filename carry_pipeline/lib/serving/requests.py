"""What a `POST /action` may ask and what it gets back, as plain functions.

A request names the bar (`latest`, or `ts`: a bar time of the stored features) and either posts
the env observation (`CarryTradeEnv.observation_names` order, `GET /health` lists them) or lets the
service build it from the store; `symbols` picks which assets' numbers come back (default all).
Everything a user can get wrong is a `RequestError` whose message says what and where (the app
answers 422 with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from carry_env import kernel as k

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_LISTED = 5
"""Offending entries named in one message; the rest are counted."""


class RequestError(ValueError):
    """A request the champion cannot answer as asked; the message says what was wrong."""


def check_observation(values: Sequence[float], names: Sequence[str]) -> np.ndarray:
    """The posted observation as the env's float32 vector.

    Args:
        values: the posted numbers.
        names: the champion env's `observation_names` (their count is the size it takes).

    Raises:
        RequestError: another number of values, or values that are NaN, infinite or outside the
            env's observation bounds (+-`OBS_LIMIT`); the message names the first offenders by
            index and name.
    """
    if len(values) != len(names):
        raise RequestError(
            f"observation has {len(values)} values; the champion expects {len(names)} "
            "(CarryTradeEnv observation; GET /health lists observation_names)"
        )
    x = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise RequestError(
            f"observation has {_count(bad.size, 'non-finite value')}: {_listed(x, bad, names)}; "
            "every value must be a finite number"
        )
    out = np.flatnonzero(np.abs(x) > k.OBS_LIMIT)
    if out.size:
        raise RequestError(
            f"observation has {_count(out.size, 'value')} outside the env's bounds "
            f"+-{k.OBS_LIMIT:g}: "
            f"{_listed(x, out, names)}"
        )
    return x.astype(np.float32)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _listed(x: np.ndarray, idx: np.ndarray, names: Sequence[str]) -> str:
    # "3 (BTC/USDT:USDT:funding_bp) = nan, ..." for the first few offenders.
    shown = ", ".join(f"[{i}] ({names[i]}) = {float(x[i])!r}" for i in idx[:MAX_LISTED])
    return shown + (f" and {idx.size - MAX_LISTED} more" if idx.size > MAX_LISTED else "")


def select_symbols(requested: Sequence[str] | None, symbols: Sequence[str]) -> tuple[str, ...]:
    """The assets whose numbers a response carries: `requested` in the champion's order, or all.

    Raises:
        RequestError: an empty list, or a symbol the champion does not trade (all such named).
    """
    if requested is None:
        return tuple(symbols)
    if not requested:
        raise RequestError("symbols is empty; omit it to get every symbol the champion trades")
    unknown = [s for s in dict.fromkeys(requested) if s not in symbols]
    if unknown:
        raise RequestError(
            f"unknown symbols {unknown}; the champion trades {list(symbols)}"
            if len(unknown) > 1
            else f"unknown symbol {unknown[0]!r}; the champion trades {list(symbols)}"
        )
    wanted = set(requested)
    return tuple(s for s in symbols if s in wanted)


def bar_index(ts_ns: np.ndarray, when: datetime, bar_seconds: float) -> int:
    """The index of the stored bar whose time is exactly `when`.

    Args:
        ts_ns: the market's bar times, int64 nanoseconds (`MarketData.ts`).
        when: a timezone-aware time.
        bar_seconds: the bar length (named in the error).

    Raises:
        RequestError: `when` has no time zone, or is not a bar time (the stored range named).
    """
    if when.tzinfo is None:
        raise RequestError(
            f"ts {when.isoformat()} has no time zone; give UTC, e.g. 2024-01-05T10:00:00Z"
        )
    ns = ((when - EPOCH) // timedelta(microseconds=1)) * 1_000
    i = int(np.searchsorted(ts_ns, ns))
    if i < ts_ns.shape[0] and int(ts_ns[i]) == ns:
        return i
    raise RequestError(
        f"ts {iso(ns)} is not a bar of the stored features: {ts_ns.shape[0]} bars of "
        f"{bar_seconds / 3600:g} h from {iso(int(ts_ns[0]))} to {iso(int(ts_ns[-1]))}"
    )


def iso(ts_ns: int) -> str:
    """A UTC time in nanoseconds as ISO 8601 with a `Z`."""
    when = datetime.fromtimestamp(ts_ns / 1e9, tz=UTC)
    return when.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, eq=False)
class Decision:
    """One answer of the champion at one bar (every asset; `payload` picks symbols)."""

    champion_id: str
    bar: int
    ts_ns: int
    symbols: tuple[str, ...]
    observation: np.ndarray
    """The env observation the champion decided on (float32)."""
    action: np.ndarray
    """`(N,)` the env action per asset, in [-1, 1]."""
    expert_outputs: dict[str, list[float]]
    """Each gated expert's suggested weight per asset."""
    gating_weights: dict[str, float]
    """The meta-controller's weight of each gated expert and of `flat`."""
    anomaly_multiplier: list[float]
    """The anomaly expert's exposure multiplier per asset, in [0, 1] (ones without one)."""


def payload(decision: Decision, symbols: Sequence[str], with_observation: bool) -> dict[str, Any]:
    """The JSON answer: per-asset numbers keyed by symbol for `symbols` only; the observation
    when the service built it."""
    idx = [decision.symbols.index(s) for s in symbols]
    out: dict[str, Any] = {
        "champion_id": decision.champion_id,
        "ts": iso(decision.ts_ns),
        "symbols": list(symbols),
        "action": {s: float(decision.action[i]) for s, i in zip(symbols, idx, strict=True)},
        "expert_outputs": {
            name: {s: float(values[i]) for s, i in zip(symbols, idx, strict=True)}
            for name, values in decision.expert_outputs.items()
        },
        "gating_weights": dict(decision.gating_weights),
        "anomaly_multiplier": {
            s: float(decision.anomaly_multiplier[i]) for s, i in zip(symbols, idx, strict=True)
        },
    }
    if with_observation:
        out["observation"] = [float(v) for v in decision.observation]
    return out
