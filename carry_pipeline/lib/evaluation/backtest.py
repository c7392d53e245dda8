"""The backtest runner: one policy through `CarryTradeEnv` over a span, every step recorded.

Policy interface: any object with stable-baselines3's `predict(observation, state=None,
episode_start=None, deterministic=True) -> (action, state)` (SB3 models, the trained experts, the
rule baselines of `carry_pipeline.lib.evaluation.baselines`). Before the first step the runner calls
`policy.reset(env)` when the policy has one (rule baselines read the observation layout and the
config there); a policy with an `observation_space` must match the env's observation shape.
`SpotBuyAndHold` is the one exception: the env trades hedged pairs only, so it runs as flat through
the env (to see the same bars, anomalies included) and its equity is then booked from the recorded
spot marks (`spot_buy_and_hold`).

The runner steps the env's engine directly (`env.engine.act` / `step()` / its state arrays) instead
of `env.step`, which builds a dict of Python scalars per step (most of a step's cost); the numbers
are the same arrays (`tests/pipeline/evaluation/test_backtest.py` compares them with `env.step`'s
info at every step). Everything is preallocated numpy; `policy_seconds` and `env_seconds` time the
two parts apart.

Per-asset step P&L (for trades and `reports.positions`): price P&L of the legs held over the step,
`spot_held * (S_{t+1} - S_t) + perp_held * (P_{t+1} - P_t)` at the env's effective marks (flash
events included), plus the funding the env settled on them, `-perp_held * M_{t+1} * rate` at
the env's mark price `M` (the frame's `mark_price` or its proxy) and the rate as it applied it
(spikes included), less the asset's fees and slippage; the account-level
flows (borrow, liquidation loss, insurance fund) are shared among the assets in proportion to the
gross notional held over the step. The per-asset P&L of a step sums to the env's equity change.

Output tables (schemas below; the future `reports.*` tables):
- `equity_curves`: one row per (fold, policy, step): the start bar (step 0, flows 0) and every
  bar after a step, with every `info` term and flag.
- `positions`: one row per (fold, policy, step >= 1, symbol): action, legs after the step, marks,
  the asset's step P&L.
- `trades`: every fill, one row per asset and bar where its hedged pair traded (both legs: signed
  quantity, price, fee and slippage), and one row per forced close (`kind = "liquidation"`, at the
  mark; its cost is in `liquidation_loss`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import numba as nb
import numpy as np
import polars as pl

from carry_env import kernel as k
from carry_env.env import CarryTradeEnv, checked_action
from carry_pipeline.lib.schemas import UTC_TS

# Columns of the per-asset execution block as_[b, i, A_FQ_S : A_PX_P + 1], copied once per step.
_X_FQ_S, _X_FQ_P, _X_FEE, _X_SPREAD, _X_IMPACT, _X_PX_S, _X_PX_P = range(7)
_EXEC = (k.A_FQ_S, k.A_FQ_P, k.A_FEE, k.A_SPREAD_COST, k.A_IMPACT, k.A_PX_S, k.A_PX_P)
assert tuple(range(k.A_FQ_S, k.A_FQ_S + 7)) == _EXEC


@runtime_checkable
class Policy(Protocol):
    """What the runner accepts: stable-baselines3's `predict` signature."""

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """The action for `observation` and the next recurrent state."""
        ...


@dataclass(frozen=True, eq=False)
class BacktestResult:
    """Every recorded quantity of one backtest of n steps over N symbols.

    Arrays are indexed by step j = 0..n-1 (the step from bar `start + j` to `start + j + 1`)
    unless noted.
    """

    policy: str
    fold: int | None
    symbols: tuple[str, ...]
    bar_seconds: float
    leverage_cap: float
    start: int
    """Index of the first bar in the market."""
    ts: np.ndarray
    """`[n + 1]` int64 ns: the start bar and the bar after each step."""
    equity: np.ndarray
    """`[n + 1]`: `E_0` (initial cash) and the equity after each step."""
    info: np.ndarray
    """`[n, N_INFO]`: the env's info vector (`carry_env.kernel.INFO_NAMES`)."""
    flags: np.ndarray
    """`[n, N_FLAGS]` bool (`carry_env.kernel.FLAG_NAMES`)."""
    reward: np.ndarray
    actions: np.ndarray
    """`[n, N]` the action as given (float64)."""
    spot_qty: np.ndarray
    """`[n, N]` spot legs after the step (after any liquidation)."""
    perp_qty: np.ndarray
    collateral: np.ndarray
    held_spot: np.ndarray
    """`[n, N]` spot legs held over the step (before it: after the fills)."""
    held_perp: np.ndarray
    fills: np.ndarray
    """`[n, N, 7]`: filled spot qty, perp qty, fee, spread cost, impact cost, spot price, perp
    price (the fill prices are the effective marks at the step's first bar)."""
    mark_spot: np.ndarray
    """`[n, N]` effective spot mark at the bar after the step."""
    mark_perp: np.ndarray
    settled_rate: np.ndarray
    """`[n, N]` funding rate the env settled at the bar after the step (NaN where none)."""
    asset_pnl: np.ndarray
    """`[n, N]` each asset's P&L of the step (module docstring)."""
    terminated: bool
    policy_seconds: float
    env_seconds: float

    @property
    def n_steps(self) -> int:
        """Number of steps n."""
        return int(self.reward.shape[0])


def span_bars(env: CarryTradeEnv, start: datetime | str, end: datetime | str) -> tuple[int, int]:
    """Bar indices of a half-open span `[start, end)` of UTC times: the first bar at or after
    `start` and the last before `end`.

    Raises:
        ValueError: the span holds fewer than two bars (no step to take).
    """
    ts = env.market.ts
    lo = int(np.searchsorted(ts, _ns(start), side="left"))
    hi = int(np.searchsorted(ts, _ns(end), side="left")) - 1
    if hi - lo < 1:
        raise ValueError(
            f"span {start}..{end} holds {max(hi - lo + 1, 0)} bars of the market's "
            f"{_iso(ts[0])}..{_iso(ts[-1])}; a backtest needs at least 2"
        )
    return lo, hi


def run_backtest(
    env: CarryTradeEnv,
    policy: Policy,
    *,
    name: str,
    start: int,
    end: int,
    seed: int,
    fold: int | None = None,
) -> BacktestResult:
    """Run `policy` from bar `start` to bar `end` (indices) and record every step.

    The episode ends at `end` or earlier if the env terminates it (liquidation, bankruptcy,
    drawdown limit); `terminated` says which. The seed fixes the anomaly path: every policy run
    with the same seed and span meets the same halts, flash events and funding spikes.

    Raises:
        ValueError: the policy's observation space or action does not fit the env; the message
            names the fold and the policy.
    """
    where = f"fold {fold}, policy {name!r}"
    _check_observation_space(env, policy, where)
    obs, _ = env.reset(seed=seed, options={"start": int(start), "end": int(end)})
    reset = getattr(policy, "reset", None)
    if callable(reset):
        reset(env)
    eng = env.engine
    n_max, n_sym = int(end) - int(start), env.market.n_symbols
    rec = _Recorder(n_max, n_sym)
    state: Any = None
    episode_start = np.ones(1, dtype=bool)
    policy_s = env_s = 0.0
    act = eng.act[0]
    shape = (n_sym,)
    j = 0
    while j < n_max:
        t0 = time.perf_counter()
        action, state = policy.predict(
            obs, state=state, episode_start=episode_start, deterministic=True
        )
        t1 = time.perf_counter()
        try:
            act[:] = checked_action(action, shape)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        eng.step()
        rec.record(j, eng, act)
        obs = eng.obs[0].copy()
        t2 = time.perf_counter()
        policy_s += t1 - t0
        env_s += t2 - t1
        episode_start[0] = False
        j += 1
        if eng.term[0] or eng.trunc[0]:
            break
    return rec.result(env, name, fold, int(start), j, bool(eng.term[0]), policy_s, env_s)


def _check_observation_space(env: CarryTradeEnv, policy: Any, where: str) -> None:
    if policy is None or not callable(getattr(policy, "predict", None)):
        raise ValueError(f"{where}: no policy (got {type(policy).__name__}); need a predict()")
    space = getattr(policy, "observation_space", None)
    shape = getattr(space, "shape", None)
    if shape is not None and tuple(shape) != env.observation_space.shape:
        raise ValueError(
            f"{where}: the policy expects observations of shape {tuple(shape)}, the env gives "
            f"{env.observation_space.shape} ({env.market.n_symbols} symbols, "
            f"{len(env.market.feature_names)} features)"
        )


class _Recorder:
    # Preallocated per-step arrays; one copy of each engine array per step.
    def __init__(self, n: int, n_sym: int) -> None:
        self.info = np.zeros((n, k.N_INFO))
        self.flags = np.zeros((n, k.N_FLAGS), dtype=bool)
        self.reward = np.zeros(n)
        self.actions = np.zeros((n, n_sym))
        self.legs = np.zeros((n, k.N_LEGS, n_sym))
        self.x = np.zeros((n, n_sym, 7))
        self.rate = np.zeros((n, n_sym))
        self.mark = np.zeros((n, n_sym))

    def record(self, j: int, eng: Any, act: np.ndarray) -> None:
        _record(j, eng.info, eng.flags, eng.rew, eng.legs, eng.as_, act, self.info, self.flags,
                self.reward, self.legs, self.x, self.rate, self.actions)  # fmt: skip
        _record_mark(j, eng.tensor.mkt, eng.fs, eng.as_, eng.is_, eng.cfg, self.mark)

    def result(
        self,
        env: CarryTradeEnv,
        name: str,
        fold: int | None,
        start: int,
        n: int,
        terminated: bool,
        policy_s: float,
        env_s: float,
    ) -> BacktestResult:
        x = self.x[:n]
        legs = self.legs[:n]
        spot, perp, coll = legs[:, k.L_SPOT], legs[:, k.L_PERP], legs[:, k.L_COLL]
        before_s = np.vstack([np.zeros((1, spot.shape[1])), spot[:-1]])
        before_p = np.vstack([np.zeros((1, perp.shape[1])), perp[:-1]])
        held_s = before_s + x[:, :, _X_FQ_S]
        held_p = before_p + x[:, :, _X_FQ_P]
        mark_s, mark_p = _marks_after(env, x)
        bars = start + 1 + np.arange(n)
        settled = env.market.funding[bars]
        rate = np.where(np.isnan(settled), np.nan, self.rate[:n])
        info = self.info[:n]
        pnl = _asset_pnl(env, info, x, held_s, held_p, mark_s, mark_p, self.mark[:n], rate)
        ts = env.market.ts[start : start + n + 1]
        equity = np.concatenate([[env.config.initial_cash], info[:, k.K_EQUITY]])
        return BacktestResult(
            policy=name,
            fold=fold,
            symbols=env.market.symbols,
            bar_seconds=env.market.bar_seconds,
            leverage_cap=env.config.leverage_cap,
            start=start,
            ts=ts,
            equity=equity,
            info=info,
            flags=self.flags[:n],
            reward=self.reward[:n],
            actions=self.actions[:n],
            spot_qty=spot,
            perp_qty=perp,
            collateral=coll,
            held_spot=held_s,
            held_perp=held_p,
            fills=x,
            mark_spot=mark_s,
            mark_perp=mark_p,
            settled_rate=rate,
            asset_pnl=pnl,
            terminated=terminated,
            policy_seconds=policy_s,
            env_seconds=env_s,
        )


@nb.njit(cache=True)
def _record(
    j: int,
    info: np.ndarray,
    flags: np.ndarray,
    rew: np.ndarray,
    legs: np.ndarray,
    as_: np.ndarray,
    act: np.ndarray,
    out_info: np.ndarray,
    out_flags: np.ndarray,
    out_rew: np.ndarray,
    out_legs: np.ndarray,
    out_x: np.ndarray,
    out_rate: np.ndarray,
    out_act: np.ndarray,
) -> None:
    # One compiled call per step instead of seven numpy slice copies (each ~1 us from Python).
    out_info[j] = info[0]
    out_flags[j] = flags[0]
    out_rew[j] = rew[0]
    out_legs[j] = legs[0]
    for i in range(as_.shape[1]):
        for c in range(7):
            out_x[j, i, c] = as_[0, i, k.A_FQ_S + c]
        out_rate[j, i] = as_[0, i, k.A_R1]
        out_act[j, i] = act[i]


@nb.njit(cache=True)
def _record_mark(
    j: int,
    mkt: np.ndarray,
    fs: np.ndarray,
    as_: np.ndarray,
    is_: np.ndarray,
    cfg: np.ndarray,
    out_mark: np.ndarray,
) -> None:
    # The perp mark price (what funding settles at) of the bar the step moved to, as the kernel
    # computes it: the frame's `mark_price` or its proxy, flash events' spot gap included.
    t = is_[0, k.I_T]
    for i in range(as_.shape[1]):
        out_mark[j, i] = k.mark_price(0, i, t, mkt, fs, as_, cfg)


def _marks_after(env: CarryTradeEnv, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # The effective marks at the bar after step j are the prices step j + 1 filled at; after the
    # last step, the engine's quotes at its current bar.
    eng = env.engine
    q = np.zeros((1, env.market.n_symbols, 5))
    env0 = np.zeros(1, dtype=np.int64)
    k.quotes_batch(env0, eng.tensor.mkt, eng.cfg, eng.fs, eng.as_, eng.is_, q)
    mark_s = np.vstack([x[1:, :, _X_PX_S], q[:, :, 0]])
    mark_p = np.vstack([x[1:, :, _X_PX_P], q[:, :, 1]])
    return mark_s, mark_p


def _asset_pnl(
    env: CarryTradeEnv,
    info: np.ndarray,
    x: np.ndarray,
    held_s: np.ndarray,
    held_p: np.ndarray,
    mark_s: np.ndarray,
    mark_p: np.ndarray,
    funding_mark: np.ndarray,
    rate: np.ndarray,
) -> np.ndarray:
    price = held_s * (mark_s - x[:, :, _X_PX_S]) + held_p * (mark_p - x[:, :, _X_PX_P])
    funding = np.zeros_like(price)
    if env.config.funding:
        funding = np.where(np.isnan(rate), 0.0, -held_p * funding_mark * np.nan_to_num(rate))
    own = price + funding - x[:, :, _X_FEE] - x[:, :, _X_SPREAD] - x[:, :, _X_IMPACT]
    shared = -info[:, k.K_BORROW] - info[:, k.K_LIQ_LOSS] + info[:, k.K_INSURANCE]
    gross = np.abs(held_s * x[:, :, _X_PX_S]) + np.abs(held_p * x[:, :, _X_PX_P])
    total = gross.sum(axis=1, keepdims=True)
    n_sym = gross.shape[1]
    weight = np.where(total > 0, gross / np.where(total > 0, total, 1.0), 1.0 / n_sym)
    return own + shared[:, None] * weight


# ---- tables ----

EQUITY_CURVE_SCHEMA: dict[str, pl.DataType] = {
    "fold": pl.Int64(),
    "policy": pl.String(),
    "step": pl.Int64(),
    "ts": UTC_TS,
    **{name: pl.Float64() for name in k.INFO_NAMES},
    **{name: pl.Boolean() for name in k.FLAG_NAMES},
    "reward": pl.Float64(),
}
"""`reports.equity_curves`: `ts` is the bar the equity is marked at (step 0: the span's first bar,
equity = initial cash, every flow 0); the flows are those of the step that ended at `ts`, in quote
currency; `fold` is null outside a walk-forward fold."""

POSITIONS_SCHEMA: dict[str, pl.DataType] = {
    "fold": pl.Int64(),
    "policy": pl.String(),
    "step": pl.Int64(),
    "ts": UTC_TS,
    "symbol": pl.String(),
    "action": pl.Float64(),
    "spot_qty": pl.Float64(),
    "perp_qty": pl.Float64(),
    "collateral": pl.Float64(),
    "spot_mark": pl.Float64(),
    "perp_mark": pl.Float64(),
    "funding_rate": pl.Float64(),
    "pnl": pl.Float64(),
}
"""`reports.positions`: per step and symbol, the action sent (NaN = hold), the legs after the step,
the effective marks at `ts`, the rate settled at `ts` (null where none) and the asset's step
P&L."""

TRADES_SCHEMA: dict[str, pl.DataType] = {
    "fold": pl.Int64(),
    "policy": pl.String(),
    "step": pl.Int64(),
    "ts": UTC_TS,
    "symbol": pl.String(),
    "kind": pl.String(),
    "spot_qty": pl.Float64(),
    "spot_price": pl.Float64(),
    "perp_qty": pl.Float64(),
    "perp_price": pl.Float64(),
    "notional": pl.Float64(),
    "fee": pl.Float64(),
    "spread_cost": pl.Float64(),
    "impact_cost": pl.Float64(),
    "slippage": pl.Float64(),
}
"""`reports.trades`: `kind = "order"`: the pair filled at bar `ts` (the step's first bar) at the
effective mid, signed quantities (spot > 0 buys coins, perp < 0 sells perps), `notional` = traded
notional of both legs, fee and slippage (= spread_cost + impact_cost, tick included) of both legs.
`kind = "liquidation"`: a forced close at the end of step `step`, at the marks of `ts`, costs 0 here
(they are in `equity_curves.liquidation_loss`)."""


def equity_curve_frame(result: BacktestResult) -> pl.DataFrame:
    """The `equity_curves` rows of one backtest."""
    n = result.n_steps
    info = np.vstack([np.zeros((1, k.N_INFO)), result.info])
    info[0, k.K_EQUITY] = result.equity[0]
    info[0, k.K_CASH] = result.equity[0]
    flags = np.vstack([np.zeros((1, k.N_FLAGS), dtype=bool), result.flags])
    cols: dict[str, Any] = {
        "fold": [result.fold] * (n + 1),
        "policy": [result.policy] * (n + 1),
        "step": np.arange(n + 1),
        "ts": _ts_series(result.ts),
    }
    cols.update({name: info[:, c] for c, name in enumerate(k.INFO_NAMES)})
    cols.update({name: flags[:, c] for c, name in enumerate(k.FLAG_NAMES)})
    cols["reward"] = np.concatenate([[0.0], result.reward])
    return pl.DataFrame(cols, schema=EQUITY_CURVE_SCHEMA)


def positions_frame(result: BacktestResult) -> pl.DataFrame:
    """The `positions` rows of one backtest (step-major, symbols in market order)."""
    n, m = result.n_steps, len(result.symbols)
    ts = np.repeat(result.ts[1:], m)
    return pl.DataFrame(
        {
            "fold": [result.fold] * (n * m),
            "policy": [result.policy] * (n * m),
            "step": np.repeat(np.arange(1, n + 1), m),
            "ts": _ts_series(ts),
            "symbol": list(result.symbols) * n,
            "action": result.actions.reshape(-1),
            "spot_qty": result.spot_qty.reshape(-1),
            "perp_qty": result.perp_qty.reshape(-1),
            "collateral": result.collateral.reshape(-1),
            "spot_mark": result.mark_spot.reshape(-1),
            "perp_mark": result.mark_perp.reshape(-1),
            "funding_rate": pl.Series(result.settled_rate.reshape(-1), nan_to_null=True),
            "pnl": result.asset_pnl.reshape(-1),
        },
        schema=POSITIONS_SCHEMA,
    )


def trades_frame(result: BacktestResult) -> pl.DataFrame:
    """The `trades` rows of one backtest: every fill, then every forced close, by step."""
    x = result.fills
    filled = (x[:, :, _X_FQ_S] != 0) | (x[:, :, _X_FQ_P] != 0)
    js, iz = np.nonzero(filled)
    f = x[js, iz]
    orders = {
        "step": js + 1,
        "ts": result.ts[js],
        "symbol": [result.symbols[i] for i in iz],
        "kind": ["order"] * js.shape[0],
        "spot_qty": f[:, _X_FQ_S],
        "spot_price": f[:, _X_PX_S],
        "perp_qty": f[:, _X_FQ_P],
        "perp_price": f[:, _X_PX_P],
        "notional": np.abs(f[:, _X_FQ_S] * f[:, _X_PX_S]) + np.abs(f[:, _X_FQ_P] * f[:, _X_PX_P]),
        "fee": f[:, _X_FEE],
        "spread_cost": f[:, _X_SPREAD],
        "impact_cost": f[:, _X_IMPACT],
        "slippage": f[:, _X_SPREAD] + f[:, _X_IMPACT],
    }
    forced = (result.held_spot != result.spot_qty) | (result.held_perp != result.perp_qty)
    lj, li = np.nonzero(forced)
    dq_s = result.spot_qty[lj, li] - result.held_spot[lj, li]
    dq_p = result.perp_qty[lj, li] - result.held_perp[lj, li]
    ps, pp = result.mark_spot[lj, li], result.mark_perp[lj, li]
    zeros = np.zeros(lj.shape[0])
    closes = {
        "step": lj + 1,
        "ts": result.ts[lj + 1],
        "symbol": [result.symbols[i] for i in li],
        "kind": ["liquidation"] * lj.shape[0],
        "spot_qty": dq_s,
        "spot_price": ps,
        "perp_qty": dq_p,
        "perp_price": pp,
        "notional": np.abs(dq_s * ps) + np.abs(dq_p * pp),
        "fee": zeros,
        "spread_cost": zeros,
        "impact_cost": zeros,
        "slippage": zeros,
    }
    parts = []
    for part in (orders, closes):
        size = len(part["symbol"])
        parts.append(
            pl.DataFrame(
                {
                    "fold": [result.fold] * size,
                    "policy": [result.policy] * size,
                    **{c: part[c] for c in part if c != "ts"},
                    "ts": _ts_series(np.asarray(part["ts"], dtype=np.int64)),
                }
            ).select(list(TRADES_SCHEMA))
        )
    return pl.concat(parts).cast(TRADES_SCHEMA).sort("step", "kind", maintain_order=True)  # type: ignore[arg-type]


def _ts_series(ns: np.ndarray) -> pl.Series:
    return (
        pl.Series(np.asarray(ns, dtype=np.int64))
        .cast(pl.Datetime("ns"))
        .dt.replace_time_zone("UTC")
        .cast(UTC_TS)
    )


def _ns(when: datetime | str) -> int:
    # numpy's datetime64 is naive UTC: aware datetimes are converted to UTC first.
    if isinstance(when, datetime):
        utc = when.astimezone(UTC) if when.tzinfo else when
        return int(np.datetime64(utc.replace(tzinfo=None), "ns").astype(np.int64))
    return int(np.datetime64(str(when), "ns").astype(np.int64))


def _iso(ns: int | np.integer) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[s]")) + "Z"
