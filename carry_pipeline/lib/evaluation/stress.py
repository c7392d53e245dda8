"""Stress scenarios as market frames, and the policies run on them: one row per scenario x policy.

Injected scenarios are derived from a base market frame (any symbols, one regular bar grid; the
contract of `carry_env.market`), changing only what the scenario names, from the bar `at` on:

- `one_bar_crash`: spot falls by `drop` (default 20 %) in the single bar `at`; the perp moves by
  the same factor (the base's basis ratio is kept) and both keep the base's returns after it.
- `deepening_crash`: spot falls linearly to `1 - drop` of its level before `at` over `hours`
  (default a day), so the trough is the last bar of the crash; then the base's returns resume.
- `funding_flip`: every settlement in `[at, at + hours)` prints `rate` (default -30 bp).
- `exchange_halt`: the venue halts for `hours` (default 6) from bar `at` while spot falls by `drop`
  (default 10 %) over the halt: no fill and no liquidation can happen in it.
- `basis_blowout`: the perp's premium over spot widens linearly to `peak` (default +5 %) over
  `widen_hours`, then reverts linearly to the base's basis over `revert_hours`; spot unchanged.
- `feed_outage`: the market-data feed is out for `hours` (default 4) from bar `at` while spot falls
  by `drop` (default 10 %): the observation freezes, the env keeps trading at the real prices.

Halts and outages use the env's own mechanics (`carry_env.kernel`: `I_HALT` blocks fills and
liquidations and sets the `halted` bit; `I_OUTAGE` freezes each market block and sets `stale`).
The env only starts them by its seeded draw `uniform(key, t, stream) < p` at each bar, so
`ScheduledAnomalies` (a policy wrapper) sets the per-bar probability in the engine's config
vector to 1 for the one step that enters the scheduled first bar and to 0 at every other step: the
draw then fires exactly there (a uniform in [0, 1) is always below 1), with the configured length
replaced by the scenario's. Random halts and outages are therefore off in those runs; run them
under `stress_config` (anomalies on, every random anomaly rate 0) so nothing else moves.

Real crises (`real_crisis`): 12-13 March 2020, 19 May 2021 and 9-11 November 2022, hourly BTC and
ETH on the bar close times from 00:00 UTC of the first day to 00:00 UTC after the last. The price
path is geometric (log-linear) interpolation through anchor points (`CRISIS_ANCHORS`): each day's
open at 00:00, its intraday low (and where it matters its high) stamped at the open time of the
hour it happened in, its close at 24:00. The perp equals spot (no basis history of these days is
in the project). Funding is the real Binance USDT-M settlement prints (00/08/16 UTC), copied from
the MIT-licensed supervik/historical-funding-rates-fetcher (`data/binance_funding_crises.csv`,
its `LICENSE.supervik_funding` beside it; `Date` there is UTC+3, converted to UTC).

Anchor sources:
- BTC: Binance BTCUSDT spot 1 h klines (`api/v3/klines`, the published exchange record), read from
  the copy in `../shared/data/real/kctanglog_spot_1h` (open, high, low, close of each day and the
  hour of the extreme): 12 Mar 2020 7,934.58 / low 4,410.00 (23 h) / 4,800.00; 13 Mar 4,800.01 /
  low 3,782.13 (02 h), high 5,955.00 (13 h) / 5,578.60; 19 May 2021 42,849.78 / low 30,000.00
  (13 h) / 36,690.09; 9 Nov 2022 18,545.38 / low 15,588.00 (23 h) / 15,922.81; 10 Nov 15,922.68 /
  high 18,199.00 (20 h) / 17,601.15; 11 Nov 17,602.45 / low 16,361.60 (14 h) / 17,070.31.
- ETH: approximate, not checked against an exchange record here: lows from reports of the day
  (about $90 on 13 Mar 2020; about $1,900 on 19 May 2021 (Bitstamp figures in the press); $1,083.29
  on 9 Nov 2022, Benzinga citing CoinMarketCap), opens and closes rounded from CoinMarketCap's
  daily history; the lows are placed at BTC's hour. Treat ETH crisis figures as indicative.

`run_stress` backtests named policies on each scenario with `run_backtest` over the whole frame
(the same seed for all) and reports per scenario and policy: max drawdown, liquidations (count and
bool), funding paid (`-sum(funding_pnl)`: positive when the book paid), total return, whether the
episode was terminated, and for policies given an exposure callable (the anomaly expert's
multiplier) whether it cut exposure before the worst bar (`exposure_cut`, defined at
`exposure_cut_before`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from carry_env import CarryTradeEnv, EnvConfig
from carry_env import kernel as k
from carry_env.config import C_HALT_STEPS, C_OUTAGE_STEPS, C_P_HALT, C_P_OUTAGE
from carry_pipeline.lib.env_config import PIPELINE_ENV_CONFIG
from carry_pipeline.lib.evaluation.backtest import BacktestResult, Policy, run_backtest
from carry_pipeline.lib.evaluation.baselines import SpotBuyAndHold
from carry_pipeline.lib.evaluation.metrics import max_drawdown
from carry_pipeline.lib.evaluation.walk_forward import spot_buy_and_hold

FUNDING_FIXTURE = Path(__file__).parent / "data" / "binance_funding_crises.csv"
"""Real Binance funding prints of the three crises (supervik_funding, MIT; see its LICENSE)."""

ExposureFn = Callable[[np.ndarray, np.ndarray], float | np.ndarray]
"""`(observation, action) -> exposure multiplier` (a float or one per asset, averaged)."""


@dataclass(frozen=True, eq=False)
class Scenario:
    """One stress scenario: a market frame and where its shock is.

    Attributes:
        name: short id (`one_bar_crash`, `real_2020_03`, ...).
        frame: the market frame (polars, the env's contract).
        shock_start: first bar the shock touches.
        worst_bar: the bar of the trough (or the widest basis, the last halted/stale bar).
        halts: `(first halted bar, bars)` scheduled through the env's halt mechanics.
        outages: `(first stale bar, bars)` scheduled through the env's feed-outage mechanics.
        description: one line for reports.
    """

    name: str
    frame: pl.DataFrame
    shock_start: datetime
    worst_bar: datetime
    halts: tuple[tuple[datetime, int], ...] = ()
    outages: tuple[tuple[datetime, int], ...] = ()
    description: str = ""


def stress_config(base: EnvConfig | None = None) -> EnvConfig:
    """`base` (default `PIPELINE_ENV_CONFIG`) with anomalies on and every random anomaly rate 0, so
    only the scenario's shocks (and its scheduled halts and outages) happen."""
    return dataclasses.replace(
        base or PIPELINE_ENV_CONFIG,
        anomalies=True,
        flash_crash_per_day=0.0,
        halt_per_day=0.0,
        feed_outage_per_day=0.0,
        funding_spike_prob=0.0,
    )


# ---- injected scenarios ----


def one_bar_crash(base: pl.DataFrame, at: datetime, drop: float = 0.2) -> Scenario:
    """Spot and perp fall by `drop` in bar `at` (a negative `drop` is a squeeze)."""
    _check_fraction(drop, "drop", lo=-10.0)
    frame = _reshape_spot(base, at, lambda n: np.full(1, 1.0 - drop))
    return Scenario(
        "one_bar_crash", frame, at, at, description=f"spot and perp {-drop:+.0%} in one bar"
    )


def deepening_crash(
    base: pl.DataFrame, at: datetime, drop: float = 0.2, hours: float = 24.0
) -> Scenario:
    """Spot falls linearly to `1 - drop` of its pre-crash level over `hours`, trough at the end."""
    _check_fraction(drop, "drop")
    n = _bars(base, hours, "hours")
    frame = _reshape_spot(base, at, lambda _: 1.0 - drop * np.arange(1, n + 1) / n)
    worst = _bar_after(frame, at, n - 1)
    return Scenario(
        "deepening_crash", frame, at, worst, description=f"spot {-drop:+.0%} over {hours:g} h"
    )


def funding_flip(
    base: pl.DataFrame, at: datetime, rate: float = -0.003, hours: float = 24.0
) -> Scenario:
    """Every settlement in `[at, at + hours)` prints `rate` (default -30 bp).

    Raises:
        ValueError: no settlement falls in the window.
    """
    end = at + timedelta(hours=hours)
    window = (pl.col("ts") >= at) & (pl.col("ts") < end) & pl.col("funding_rate").is_not_null()
    if base.filter(window).height == 0:
        raise ValueError(f"funding_flip: no funding settlement in {at.isoformat()}..{end}")
    frame = base.with_columns(
        funding_rate=pl.when(window).then(pl.lit(rate)).otherwise(pl.col("funding_rate"))
    )
    last: datetime = frame.filter(window).get_column("ts").max()  # type: ignore[assignment]
    return Scenario(
        "funding_flip", frame, at, last, description=f"funding {rate * 1e4:+.0f} bp for {hours:g} h"
    )


def exchange_halt(
    base: pl.DataFrame, at: datetime, hours: float = 6.0, drop: float = 0.1
) -> Scenario:
    """The venue halts for `hours` from bar `at` while spot falls linearly by `drop` over it."""
    n = _bars(base, hours, "hours")
    frame = _reshape_spot(base, at, lambda _: 1.0 - drop * np.arange(1, n + 1) / n)
    worst = _bar_after(frame, at, n - 1)
    return Scenario(
        "exchange_halt", frame, at, worst, halts=((at, n),),
        description=f"{hours:g} h halt, spot {-drop:+.0%} during it",
    )  # fmt: skip


def feed_outage(
    base: pl.DataFrame, at: datetime, hours: float = 4.0, drop: float = 0.1
) -> Scenario:
    """The data feed is out for `hours` from bar `at` while spot falls linearly by `drop`."""
    n = _bars(base, hours, "hours")
    frame = _reshape_spot(base, at, lambda _: 1.0 - drop * np.arange(1, n + 1) / n)
    worst = _bar_after(frame, at, n - 1)
    return Scenario(
        "feed_outage", frame, at, worst, outages=((at, n),),
        description=f"{hours:g} h feed outage, spot {-drop:+.0%} during it",
    )  # fmt: skip


def basis_blowout(
    base: pl.DataFrame,
    at: datetime,
    peak: float = 0.05,
    widen_hours: float = 6.0,
    revert_hours: float = 18.0,
) -> Scenario:
    """The perp's premium over spot widens linearly to `peak` over `widen_hours` from bar `at`,
    then reverts linearly to the base's basis over `revert_hours`."""
    _check_fraction(peak, "peak", lo=-0.9)
    w, r = _bars(base, widen_hours, "widen_hours"), _bars(base, revert_hours, "revert_hours")
    extra = np.concatenate([peak * np.arange(1, w + 1) / w, peak * (1.0 - np.arange(1, r + 1) / r)])
    parts = []
    for sym in _symbols(base):
        part = base.filter(pl.col("symbol") == sym).sort("ts")
        i0 = _index(part, at)
        factor = np.ones(part.height)
        size = min(extra.shape[0], part.height - i0)
        factor[i0 : i0 + size] += extra[:size]
        parts.append(_scale_perp(part, factor))
    frame = pl.concat(parts)
    worst = _bar_after(frame, at, w - 1)
    return Scenario(
        "basis_blowout", frame, at, worst,
        description=f"perp premium {peak:+.0%} over {widen_hours:g} h, reverting over "
        f"{revert_hours:g} h",
    )  # fmt: skip


def injected_scenarios(base: pl.DataFrame, at: datetime) -> list[Scenario]:
    """The six injected scenarios at their defaults, each starting at bar `at`."""
    return [
        one_bar_crash(base, at),
        deepening_crash(base, at),
        funding_flip(base, at),
        exchange_halt(base, at),
        basis_blowout(base, at),
        feed_outage(base, at),
    ]


# ---- real crises ----

CRISIS_ANCHORS: dict[str, dict[str, tuple[tuple[str, float], ...]]] = {
    "real_2020_03": {
        "BTC/USDT:USDT": (
            ("2020-03-12T00", 7934.58), ("2020-03-12T23", 4410.00), ("2020-03-13T00", 4800.01),
            ("2020-03-13T02", 3782.13), ("2020-03-13T13", 5955.00), ("2020-03-14T00", 5578.60),
        ),
        "ETH/USDT:USDT": (
            ("2020-03-12T00", 194.7), ("2020-03-13T00", 112.3), ("2020-03-13T02", 90.0),
            ("2020-03-14T00", 133.2),
        ),
    },
    "real_2021_05": {
        "BTC/USDT:USDT": (
            ("2021-05-19T00", 42849.78), ("2021-05-19T13", 30000.00), ("2021-05-20T00", 36690.09),
        ),
        "ETH/USDT:USDT": (
            ("2021-05-19T00", 3382.7), ("2021-05-19T13", 1900.0), ("2021-05-20T00", 2460.7),
        ),
    },
    "real_2022_11": {
        "BTC/USDT:USDT": (
            ("2022-11-09T00", 18545.38), ("2022-11-09T23", 15588.00), ("2022-11-10T00", 15922.68),
            ("2022-11-10T20", 18199.00), ("2022-11-11T00", 17602.45), ("2022-11-11T14", 16361.60),
            ("2022-11-12T00", 17070.31),
        ),
        "ETH/USDT:USDT": (
            ("2022-11-09T00", 1333.0), ("2022-11-09T23", 1083.29), ("2022-11-10T00", 1100.0),
            ("2022-11-10T20", 1300.0), ("2022-11-12T00", 1287.0),
        ),
    },
}  # fmt: skip
"""Per crisis and symbol: `(UTC hour, price)` points of the path (module docstring: sources)."""

CRISIS_DESCRIPTIONS = {
    "real_2020_03": "12-13 Mar 2020 (COVID crash), BTC 7,935 -> 3,782 -> 5,579",
    "real_2021_05": "19 May 2021 (China ban / Tesla), BTC 42,850 -> 30,000 -> 36,690",
    "real_2022_11": "9-11 Nov 2022 (FTX collapse), BTC 18,545 -> 15,588 -> 17,070",
}


def crisis_path(anchors: Sequence[tuple[str, float]]) -> tuple[list[datetime], np.ndarray]:
    """Hourly UTC times from the first anchor to the last and the log-linear price through them.

    Raises:
        ValueError: anchors not strictly increasing in time, off the hour, or not positive.
    """
    times = [datetime.fromisoformat(t).replace(tzinfo=UTC) for t, _ in anchors]
    prices = np.array([p for _, p in anchors], dtype=np.float64)
    hours = np.array([(t - times[0]).total_seconds() / 3600.0 for t in times])
    if np.any(np.diff(hours) <= 0) or np.any(hours % 1 != 0) or np.any(prices <= 0):
        raise ValueError(f"crisis anchors must be positive, on the hour, increasing: {anchors}")
    grid = np.arange(int(hours[-1]) + 1, dtype=np.float64)
    path = np.exp(np.interp(grid, hours, np.log(prices)))
    return [times[0] + timedelta(hours=float(h)) for h in grid], path


def crisis_funding(name: str, fixture: Path = FUNDING_FIXTURE) -> pl.DataFrame:
    """The real funding prints (`symbol`, `ts`, `funding_rate`) of crisis `name`."""
    anchors = CRISIS_ANCHORS[name]
    first = min(datetime.fromisoformat(a[0][0]) for a in anchors.values()).replace(tzinfo=UTC)
    last = max(datetime.fromisoformat(a[-1][0]) for a in anchors.values()).replace(tzinfo=UTC)
    rows = pl.read_csv(fixture, schema_overrides={"funding_rate": pl.Float64})
    return rows.select(
        "symbol",
        ts=pl.col("funding_time").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC"),
        funding_rate="funding_rate",
    ).filter((pl.col("ts") >= first) & (pl.col("ts") <= last))


def real_crisis(name: str, fixture: Path = FUNDING_FIXTURE) -> Scenario:
    """Crisis `name` (a key of `CRISIS_ANCHORS`) as an hourly BTC + ETH market frame.

    The worst bar is BTC's lowest point of the path. Raises:
        KeyError: unknown crisis name.
        ValueError: a symbol's path does not span the same hours as the others.
    """
    if name not in CRISIS_ANCHORS:
        raise KeyError(f"unknown crisis {name!r}; known: {sorted(CRISIS_ANCHORS)}")
    funding = crisis_funding(name, fixture)
    parts, grids = [], []
    for sym, anchors in CRISIS_ANCHORS[name].items():
        ts, path = crisis_path(anchors)
        grids.append((ts[0], ts[-1]))
        parts.append(pl.DataFrame({"ts": ts, "symbol": [sym] * len(ts), "spot_price": path,
                                   "perp_price": path}))  # fmt: skip
    if len(set(grids)) != 1:
        raise ValueError(f"{name}: symbols' anchor paths span different hours: {grids}")
    frame = (
        pl.concat(parts)
        .with_columns(pl.col("ts").dt.cast_time_unit("us").dt.replace_time_zone("UTC"))
        .join(funding.with_columns(pl.col("ts").dt.cast_time_unit("us")), on=["ts", "symbol"],
              how="left")
        .sort("symbol", "ts")
    )  # fmt: skip
    btc = frame.filter(pl.col("symbol") == "BTC/USDT:USDT")
    worst = btc.get_column("ts")[int(btc.get_column("spot_price").arg_min())]  # type: ignore[arg-type]
    first: datetime = frame.get_column("ts").min()  # type: ignore[assignment]
    return Scenario(name, frame, first, worst,
                    description=CRISIS_DESCRIPTIONS[name])  # fmt: skip


def real_crises(fixture: Path = FUNDING_FIXTURE) -> list[Scenario]:
    """The three real crises."""
    return [real_crisis(name, fixture) for name in CRISIS_ANCHORS]


# ---- running ----


class ScheduledAnomalies:
    """Wraps a policy and starts the scenario's halts and outages through the env's own draw.

    Before each step out of bar t it sets the engine's per-bar halt (outage) probability to 1 when
    a halt (outage) is scheduled to begin at bar t + 1 and to 0 otherwise, with the scheduled
    length; `exposure`, when given, is called on every decision and its value recorded.
    """

    def __init__(
        self,
        policy: Policy,
        halts: Sequence[tuple[int, int]] = (),
        outages: Sequence[tuple[int, int]] = (),
        exposure: ExposureFn | None = None,
    ) -> None:
        self.policy = policy
        self.halts = {int(b): int(n) for b, n in halts}
        self.outages = {int(b): int(n) for b, n in outages}
        self.exposure = exposure
        self.observation_space = getattr(policy, "observation_space", None)
        self.bars: list[int] = []
        self.multipliers: list[float] = []
        self._env: CarryTradeEnv | None = None

    def reset(self, env: CarryTradeEnv) -> None:
        """Remember the env and forward the reset hook."""
        self._env = env
        self.bars, self.multipliers = [], []
        inner = getattr(self.policy, "reset", None)
        if callable(inner):
            inner(env)

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """Schedule the next bar's anomalies, then the wrapped policy's action."""
        if self._env is None:
            raise RuntimeError("ScheduledAnomalies.reset(env) must be called before predict()")
        eng = self._env.engine
        t = int(eng.is_[0, k.I_T])
        if self.halts or self.outages:
            eng.cfg[C_P_HALT] = 1.0 if t + 1 in self.halts else 0.0
            eng.cfg[C_HALT_STEPS] = float(self.halts.get(t + 1, 0))
            eng.cfg[C_P_OUTAGE] = 1.0 if t + 1 in self.outages else 0.0
            eng.cfg[C_OUTAGE_STEPS] = float(self.outages.get(t + 1, 0))
        action, state = self.policy.predict(observation, state, episode_start, deterministic)
        if self.exposure is not None:
            self.bars.append(t)
            self.multipliers.append(float(np.mean(self.exposure(observation, action))))
        return action, state


def exposure_cut_before(
    bars: Sequence[int], multipliers: Sequence[float], shock: int, worst: int, cut: float = 0.25
) -> tuple[bool | None, float]:
    """Whether exposure was cut before the worst bar, and the lowest multiplier in the window.

    The window is the decisions at bars `shock .. worst - 1` (each sets the book held into the next
    bar, so the last one sets what is held into the worst bar). Exposure counts as cut when the
    window's lowest multiplier is below `(1 - cut)` times the multiplier decided at the bar before
    `shock` (or 1.0 when the run starts at the shock). None (and NaN) when the window is empty: a
    one-bar crash cannot be seen coming.
    """
    m = dict(zip(bars, multipliers, strict=True))
    window = [m[b] for b in range(shock, worst) if b in m]
    if not window:
        return None, math.nan
    before = m.get(shock - 1, 1.0)
    low = min(window)
    return bool(low < (1.0 - cut) * before), low


STRESS_SCHEMA: dict[str, pl.DataType] = {
    "scenario": pl.String(),
    "policy": pl.String(),
    "bars": pl.Int64(),
    "max_drawdown": pl.Float64(),
    "total_return": pl.Float64(),
    "liquidations": pl.Int64(),
    "liquidated": pl.Boolean(),
    "terminated": pl.Boolean(),
    "funding_paid": pl.Float64(),
    "halted_bars": pl.Int64(),
    "stale_bars": pl.Int64(),
    "exposure_cut": pl.Boolean(),
    "min_exposure_before_worst": pl.Float64(),
}
"""`stress_test_report`: one row per scenario and policy (module docstring)."""


def run_stress(
    policies: Mapping[str, Policy],
    scenarios: Sequence[Scenario],
    config: EnvConfig,
    *,
    seed: int = 0,
    exposure: Mapping[str, ExposureFn] | None = None,
) -> pl.DataFrame:
    """Backtest every policy on every scenario over its whole frame (`STRESS_SCHEMA` rows).

    Args:
        exposure: per policy name, a callable giving its exposure multiplier from each
            observation and action (the anomaly expert); other policies get null `exposure_cut`.

    Raises:
        ValueError: no policies or scenarios, an exposure callable for an unknown policy, or a
            scenario that schedules halts or outages under a config with anomalies off.
    """
    exposure = dict(exposure or {})
    if not policies or not scenarios:
        raise ValueError("run_stress: need at least one policy and one scenario")
    unknown = sorted(set(exposure) - set(policies))
    if unknown:
        raise ValueError(f"run_stress: exposure callables for unknown policies {unknown}")
    rows = []
    for sc in scenarios:
        if (sc.halts or sc.outages) and not config.anomalies:
            raise ValueError(
                f"scenario {sc.name!r} schedules halts/outages, which need config.anomalies=True "
                "(use stress_config)"
            )
        env = CarryTradeEnv(sc.frame, config)
        for name, policy in policies.items():
            rows.append(_stress_row(env, sc, name, policy, exposure.get(name), seed))
    return pl.DataFrame(rows, schema=STRESS_SCHEMA)


def run_scenario(
    env: CarryTradeEnv,
    scenario: Scenario,
    policy: Policy,
    *,
    name: str,
    seed: int = 0,
    exposure: ExposureFn | None = None,
) -> tuple[BacktestResult, ScheduledAnomalies]:
    """One policy over the whole scenario frame in `env`, halts and outages scheduled; the env's
    config vector is restored afterwards."""
    market = env.market
    wrapped = ScheduledAnomalies(
        policy,
        halts=[(market.index_of(t), n) for t, n in scenario.halts],
        outages=[(market.index_of(t), n) for t, n in scenario.outages],
        exposure=exposure,
    )
    saved = env.engine.cfg.copy()
    try:
        result = run_backtest(env, wrapped, name=name, start=0, end=market.n_bars - 1, seed=seed)
    finally:
        env.engine.cfg[:] = saved  # the schedule's probabilities and lengths do not outlive it
    if isinstance(policy, SpotBuyAndHold):
        result = spot_buy_and_hold(env, result)
    return result, wrapped


def _stress_row(
    env: CarryTradeEnv,
    sc: Scenario,
    name: str,
    policy: Policy,
    exposure: ExposureFn | None,
    seed: int,
) -> dict[str, Any]:
    result, wrapped = run_scenario(env, sc, policy, name=name, seed=seed, exposure=exposure)
    cut: bool | None = None
    low = math.nan
    if exposure is not None:
        shock, worst = env.market.index_of(sc.shock_start), env.market.index_of(sc.worst_bar)
        cut, low = exposure_cut_before(wrapped.bars, wrapped.multipliers, shock, worst)
    liqs = int(result.flags[:, k.G_LIQUIDATED].sum())
    return {
        "scenario": sc.name,
        "policy": name,
        "bars": result.n_steps,
        "max_drawdown": max_drawdown(result.equity),
        "total_return": float(result.equity[-1] / result.equity[0] - 1.0),
        "liquidations": liqs,
        "liquidated": liqs > 0,
        "terminated": result.terminated,
        "funding_paid": -float(result.info[:, k.K_FUNDING].sum()),
        "halted_bars": int(result.flags[:, k.G_HALTED].sum()),
        "stale_bars": int(result.flags[:, k.G_STALE].sum()),
        "exposure_cut": cut,
        "min_exposure_before_worst": low,
    }


# ---- frame helpers ----


def _symbols(frame: pl.DataFrame) -> list[str]:
    return frame.get_column("symbol").unique(maintain_order=True).to_list()


def _index(part: pl.DataFrame, at: datetime) -> int:
    # Row of bar `at` in one symbol's sorted frame; a scenario starts after the first bar.
    ts = part.get_column("ts")
    hits = (ts == at).arg_true()
    if hits.len() == 0 or int(hits[0]) == 0:
        raise ValueError(
            f"scenario start {at.isoformat()} is not a bar after the first of "
            f"{part.get_column('symbol')[0]} ({ts.min()!s}..{ts.max()!s})"
        )
    return int(hits[0])


def _bar_seconds(frame: pl.DataFrame) -> float:
    ts = frame.filter(pl.col("symbol") == _symbols(frame)[0]).get_column("ts").sort()
    return float((ts[1] - ts[0]).total_seconds())


def _bars(frame: pl.DataFrame, hours: float, what: str) -> int:
    n = hours * 3600.0 / _bar_seconds(frame)
    if n < 1 or abs(n - round(n)) > 1e-9:
        raise ValueError(f"{what}={hours} h is not a whole number (>= 1) of the frame's bars")
    return int(round(n))


def _bar_after(frame: pl.DataFrame, at: datetime, n: int) -> datetime:
    part = frame.filter(pl.col("symbol") == _symbols(frame)[0]).sort("ts")
    i = min(_index(part, at) + n, part.height - 1)
    return part.get_column("ts")[i]  # type: ignore[no-any-return]


def _check_fraction(x: float, what: str, lo: float = 0.0) -> None:
    if not lo < x < 1.0:
        raise ValueError(f"{what}={x} must be in ({lo}, 1)")


def _reshape_spot(
    base: pl.DataFrame, at: datetime, levels: Callable[[int], np.ndarray]
) -> pl.DataFrame:
    # Per symbol: from bar `at` the spot path is S[at-1] * levels (then the base's returns from the
    # last level on); the perp keeps the base's perp/spot ratio at every bar.
    parts = []
    for sym in _symbols(base):
        part = base.filter(pl.col("symbol") == sym).sort("ts")
        s = part.get_column("spot_price").to_numpy().astype(np.float64)
        i0 = _index(part, at)
        lv = levels(part.height - i0)[: part.height - i0]
        new = s.copy()
        new[i0 : i0 + lv.shape[0]] = s[i0 - 1] * lv
        j = i0 + lv.shape[0]
        if j < s.shape[0]:
            new[j:] = s[j:] * (new[j - 1] / s[j - 1])
        reshaped = _scale_spot_range(part.with_columns(spot_price=pl.Series(new)), new / s)
        parts.append(_scale_perp(reshaped, new / s))
    return pl.concat(parts)


SPOT_RANGE_COLUMNS = ("spot_high", "spot_low")
"""The bar's spot extremes: they move with the spot price when a scenario reshapes it (the whole
bar is shifted, so the close stays inside its high/low)."""


def _scale_spot_range(part: pl.DataFrame, factor: np.ndarray) -> pl.DataFrame:
    # One symbol's rows: the spot extremes the frame has, times `factor` bar by bar.
    f = pl.Series(np.asarray(factor, dtype=np.float64))
    return part.with_columns([pl.col(c) * f for c in SPOT_RANGE_COLUMNS if c in part.columns])


PERP_PRICE_COLUMNS = ("perp_price", "mark_price", "perp_high", "perp_low")
"""Columns that move with the perp's price when a scenario reshapes it: the last price, the mark
(it follows the index and a moving average of the basis, so a shock lasting hours carries it too)
and the bar's extremes (the whole bar is shifted, so the close stays inside its high/low)."""


def _scale_perp(part: pl.DataFrame, factor: np.ndarray) -> pl.DataFrame:
    # One symbol's rows: every perp price column the frame has, times `factor` bar by bar.
    f = pl.Series(np.asarray(factor, dtype=np.float64))
    return part.with_columns([pl.col(c) * f for c in PERP_PRICE_COLUMNS if c in part.columns])
