"""Market data for the environment: a validated, aligned, numpy form of the market frame.

The market frame (see ARCHITECTURE.md) has one row per bar per symbol: `ts` (UTC, the time the row's
values are known), `symbol`, `spot_price`, `perp_price`, `funding_rate` (settled at `ts`; null where
none settles), and optionally `spot_depth_usd`, `perp_depth_usd`, `spread_bps`, `sentiment`,
`funding_interval_hours` (checked against the spacing of settlements, then dropped), the price
detail `mark_price`, `perp_high`, `perp_low`, `spot_high`, `spot_low` (see
`PRICE_DETAIL_COLUMNS`) and feature columns prefixed `f_`. Polars or pandas come in at this
boundary only; everything after it is numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import polars as pl

REQUIRED_COLUMNS = ("ts", "symbol", "spot_price", "perp_price", "funding_rate")
OPTIONAL_COLUMNS = ("spot_depth_usd", "perp_depth_usd", "spread_bps", "sentiment")
PRICE_DETAIL_COLUMNS = ("mark_price", "perp_high", "perp_low", "spot_high", "spot_low")
"""Optional, and null wherever unknown (never forward-filled): `mark_price` is the venue's mark of
the perp at the bar (the pipeline's `raw_funding_rates.mark_price`, often known at settlements
only); funding and margin use it where present and the perp price where not (`carry_env.kernel`).
`perp_high` / `perp_low` and `spot_high` / `spot_low` are the extremes of each leg's price over the
bar that ends at `ts` (the pipeline's `market_bars` OHLC); where present, maintenance margin is
also checked at the adverse extreme, not only at the close (isolated perps at the perp's, the
isolated spot margin account at the spot legs', the unified account at both legs'; a leg without
them counts at its close)."""
MAX_MARK_DEVIATION = 0.5
"""A mark more than 50 % away from the perp price of its bar is another market's mark (or a unit
error), not a basis."""
# Forward-filled on missing ticks (bounded); funding and the price detail are never filled.
FILLED_COLUMNS = ("spot_price", "perp_price", *OPTIONAL_COLUMNS)
MAX_ABS_FUNDING_RATE = 0.1
"""A funding print beyond 10 % per interval is a unit error (percent instead of fraction), not a
market."""
MAX_FUNDING_INTERVAL_HOURS = 8.0
"""No venue settles perpetual funding less often than every 8 h: settlements further apart, with no
`funding_interval_hours` column saying so, are an aggregate (e.g. a daily mean of three prints)."""
STATED_INTERVAL_COLUMN = "funding_interval_hours"
"""Optional column (the pipeline's `market_bars` has it): hours of funding the rate settled at the
row covers, forward-filled. Where present, each settlement must follow the previous one by it."""


@dataclass(frozen=True, eq=False)
class MarketData:
    """Aligned arrays for N symbols on one bar grid; build it with `MarketData.from_frame`.

    Arrays are `[T, N]` float64 (T bars, N symbols) unless noted. Optional inputs absent from the
    frame are NaN and the environment substitutes its configured defaults.
    """

    symbols: tuple[str, ...]
    ts: np.ndarray
    """`[T]` int64 nanoseconds since the epoch, UTC."""
    bar_seconds: float
    spot: np.ndarray
    perp: np.ndarray
    funding: np.ndarray
    """Rate settled at each bar; NaN where no settlement happens."""
    spot_depth: np.ndarray
    perp_depth: np.ndarray
    spread_bps: np.ndarray
    sentiment: np.ndarray
    stale: np.ndarray
    """`[T, N]` bool: a price of this bar was forward-filled from an earlier one."""
    mark: np.ndarray
    """Mark price of the perp (`mark_price`); NaN where the frame has none for the bar."""
    perp_high: np.ndarray
    """Highest perp price within the bar (`perp_high`); NaN where unknown."""
    perp_low: np.ndarray
    """Lowest perp price within the bar (`perp_low`); NaN where unknown."""
    spot_high: np.ndarray
    """Highest spot price within the bar (`spot_high`); NaN where unknown."""
    spot_low: np.ndarray
    """Lowest spot price within the bar (`spot_low`); NaN where unknown."""
    features: np.ndarray
    """`[T, N, F]` float64 user features (`f_*` columns); 0 before a feature's first value (warm-
    up).
    """
    feature_names: tuple[str, ...]

    @property
    def n_bars(self) -> int:
        """Number of bars T."""
        return int(self.ts.shape[0])

    @property
    def n_symbols(self) -> int:
        """Number of symbols N."""
        return len(self.symbols)

    @classmethod
    def from_frame(cls, frame: Any, *, max_stale_bars: int = 4) -> MarketData:
        """Validate a market frame and align it into arrays.

        Args:
            frame: polars or pandas DataFrame (or polars LazyFrame), one row per bar per symbol.
            max_stale_bars: most consecutive missing ticks of one column that are forward-filled
            (and flagged
                `stale`); a longer gap is an error, never filled silently.

        Raises:
            ValueError: the frame breaks the contract; the message names the column, symbol and
            timestamps.
        """
        df = _to_polars(frame)
        return _build(df, max_stale_bars)

    def window(
        self, start: str | datetime | None = None, end: str | datetime | None = None
    ) -> MarketData:
        """The bars with `start <= ts <= end` (UTC), e.g. to replay a real stress window.

        Raises:
            ValueError: the range holds fewer than two bars.
        """
        lo = 0 if start is None else int(np.searchsorted(self.ts, _to_ns(start), side="left"))
        hi = (
            self.n_bars if end is None else int(np.searchsorted(self.ts, _to_ns(end), side="right"))
        )
        if hi - lo < 2:
            raise ValueError(
                f"window {start}..{end} holds {max(hi - lo, 0)} bars of data covering "
                f"{_fmt(self.ts[0])}..{_fmt(self.ts[-1])}; need at least 2"
            )
        sl = slice(lo, hi)
        return replace(
            self,
            ts=self.ts[sl],
            spot=self.spot[sl],
            perp=self.perp[sl],
            funding=self.funding[sl],
            spot_depth=self.spot_depth[sl],
            perp_depth=self.perp_depth[sl],
            spread_bps=self.spread_bps[sl],
            sentiment=self.sentiment[sl],
            stale=self.stale[sl],
            mark=self.mark[sl],
            perp_high=self.perp_high[sl],
            perp_low=self.perp_low[sl],
            spot_high=self.spot_high[sl],
            spot_low=self.spot_low[sl],
            features=self.features[sl],
        )

    def index_of(self, when: str | datetime) -> int:
        """Index of the last bar at or before `when`.

        Raises:
            ValueError: `when` is before the first bar.
        """
        i = int(np.searchsorted(self.ts, _to_ns(when), side="right")) - 1
        if i < 0:
            raise ValueError(f"{when} is before the first bar {_fmt(self.ts[0])}")
        return i


def _to_polars(frame: Any) -> pl.DataFrame:
    import polars as pl

    if isinstance(frame, pl.LazyFrame):
        return frame.collect()
    if isinstance(frame, pl.DataFrame):
        return frame
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(frame, pd.DataFrame):
        return pl.from_pandas(frame)
    raise TypeError(
        f"market frame must be a polars or pandas DataFrame, got {type(frame).__name__}"
    )


def _to_ns(when: str | datetime) -> int:
    # numpy's datetime64 is naive UTC: aware datetimes are converted to UTC, naive ones are UTC.
    if isinstance(when, datetime):
        utc = when.astimezone(UTC) if when.tzinfo else when
        naive: str | datetime = utc.replace(tzinfo=None)
    else:
        naive = str(when)
    return int(np.datetime64(naive, "ns").astype(np.int64))


def _fmt(ns: int | np.integer) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[s]")) + "Z"


def _build(df: pl.DataFrame, max_stale_bars: int) -> MarketData:
    import polars as pl

    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"market frame lacks columns {missing}; it has {df.columns}")
    if df.height == 0:
        raise ValueError("market frame is empty")
    df = _normalise_ts(df)
    feature_names = tuple(sorted(c for c in df.columns if c.startswith("f_")))
    numeric = ["spot_price", "perp_price", "funding_rate"]
    numeric += [c for c in (*OPTIONAL_COLUMNS, *PRICE_DETAIL_COLUMNS) if c in df.columns]
    numeric += list(feature_names)
    for c in numeric:
        if not df.schema[c].is_numeric():
            raise ValueError(f"column {c} must be numeric, got {df.schema[c]}")
    df = df.with_columns([pl.col(c).cast(pl.Float64) for c in numeric])
    symbols = tuple(df.get_column("symbol").unique(maintain_order=True).to_list())
    if any(s is None for s in symbols):
        raise ValueError("column symbol has null values")
    per_symbol = {s: df.filter(pl.col("symbol") == s) for s in symbols}
    ts_ns = {s: part.get_column("ts").dt.epoch("ns").to_numpy() for s, part in per_symbol.items()}
    bar_ns = _check_grid(ts_ns)
    first, last = int(ts_ns[symbols[0]][0]), int(ts_ns[symbols[0]][-1])
    # Integer arithmetic: np.arange over ~1e18 nanosecond values loses bars to float rounding.
    grid = first + bar_ns * np.arange((last - first) // bar_ns + 1, dtype=np.int64)
    t, n = grid.shape[0], len(symbols)
    cols = {
        c: np.full((t, n), np.nan)
        for c in [
            "spot_price",
            "perp_price",
            "funding_rate",
            *OPTIONAL_COLUMNS,
            *PRICE_DETAIL_COLUMNS,
            *feature_names,
        ]
    }
    present = np.zeros((t, n), dtype=bool)
    for j, s in enumerate(symbols):
        rows = ((ts_ns[s] - grid[0]) // bar_ns).astype(np.int64)
        present[rows, j] = True
        part = per_symbol[s]
        for c in cols:
            if c in part.columns:
                cols[c][rows, j] = part.get_column(c).fill_nan(None).to_numpy().astype(np.float64)
    _check_values(cols, symbols, grid)
    _check_price_detail(cols, symbols, grid)
    stated = None
    if STATED_INTERVAL_COLUMN in df.columns:
        stated = np.full((t, n), np.nan)
        for j, s in enumerate(symbols):
            rows = ((ts_ns[s] - grid[0]) // bar_ns).astype(np.int64)
            col = per_symbol[s].get_column(STATED_INTERVAL_COLUMN).cast(pl.Float64)
            stated[rows, j] = col.fill_nan(None).to_numpy().astype(np.float64)
    _check_settlement_spacing(cols["funding_rate"], stated, symbols, grid)
    for c in feature_names:
        _raise_if(np.isinf(cols[c]), f"column {c} must be finite where present", symbols, grid)
        _zero_warmup(cols[c])
    stale = np.zeros((t, n), dtype=bool)
    for c in (*FILLED_COLUMNS, *feature_names):
        if c not in df.columns:
            continue
        stale |= _bounded_ffill(cols[c], c, symbols, grid, max_stale_bars)
    stale |= ~present
    feats = (
        np.stack([cols[c] for c in feature_names], axis=-1)
        if feature_names
        else np.zeros((t, n, 0))
    )
    return MarketData(
        symbols=symbols,
        ts=grid,
        bar_seconds=bar_ns / 1e9,
        spot=cols["spot_price"],
        perp=cols["perp_price"],
        funding=cols["funding_rate"],
        spot_depth=cols["spot_depth_usd"],
        perp_depth=cols["perp_depth_usd"],
        spread_bps=cols["spread_bps"],
        sentiment=cols["sentiment"],
        stale=stale,
        mark=cols["mark_price"],
        perp_high=cols["perp_high"],
        perp_low=cols["perp_low"],
        spot_high=cols["spot_high"],
        spot_low=cols["spot_low"],
        features=feats,
        feature_names=feature_names,
    )


def _normalise_ts(df: pl.DataFrame) -> pl.DataFrame:
    import polars as pl

    dtype = df.schema["ts"]
    if not isinstance(dtype, pl.Datetime):
        raise ValueError(f"column ts must be a datetime, got {dtype}")
    if dtype.time_zone is None:
        raise ValueError(
            "column ts is timezone-naive; market timestamps must be UTC-aware (refusing to guess)"
        )
    if df.get_column("ts").null_count():
        raise ValueError(f"column ts has {df.get_column('ts').null_count()} nulls")
    return df.with_columns(pl.col("ts").dt.convert_time_zone("UTC"))


def _check_grid(ts_ns: dict[str, np.ndarray]) -> int:
    bars: dict[str, int] = {}
    for s, ts in ts_ns.items():
        if ts.shape[0] < 2:
            raise ValueError(f"symbol {s} has {ts.shape[0]} rows; need at least 2 bars")
        d = np.diff(ts)
        if (d == 0).any():
            i = int(np.argmax(d == 0))
            raise ValueError(f"symbol {s} has duplicate timestamps, first at {_fmt(ts[i])}")
        if (d < 0).any():
            i = int(np.argmax(d < 0))
            raise ValueError(
                f"symbol {s} is not sorted by ts: {_fmt(ts[i + 1])} follows {_fmt(ts[i])}"
            )
        bar = int(d.min())
        off = d % bar != 0
        if off.any():
            i = int(np.argmax(off))
            raise ValueError(
                f"symbol {s} is off its {bar / 1e9:g}s bar grid: "
                f"{_fmt(ts[i + 1])} follows {_fmt(ts[i])}"
            )
        bars[s] = bar
    first = next(iter(ts_ns))
    for s, ts in ts_ns.items():
        ref = ts_ns[first]
        if bars[s] != bars[first] or ts[0] != ref[0] or ts[-1] != ref[-1]:
            raise ValueError(
                f"symbols are on different grids: {first} spans {_fmt(ref[0])}..{_fmt(ref[-1])} "
                f"every {bars[first] / 1e9:g}s, {s} spans {_fmt(ts[0])}..{_fmt(ts[-1])} "
                f"every {bars[s] / 1e9:g}s; "
                "trim the frame to a common range and bar"
            )
    return bars[first]


def _check_values(cols: dict[str, np.ndarray], symbols: tuple[str, ...], grid: np.ndarray) -> None:
    positive = ("spot_price", "perp_price", "spot_depth_usd", "perp_depth_usd")
    for c in (*positive, *PRICE_DETAIL_COLUMNS):
        x = cols[c]
        bad = ~np.isnan(x) & ~(np.isfinite(x) & (x > 0))
        _raise_if(bad, f"column {c} must be positive and finite", symbols, grid)
    for c in ("spread_bps",):
        x = cols[c]
        _raise_if(
            ~np.isnan(x) & ~(np.isfinite(x) & (x >= 0)), f"column {c} must be >= 0", symbols, grid
        )
    f = cols["funding_rate"]
    _raise_if(np.isinf(f), "column funding_rate must be finite where present", symbols, grid)
    _raise_if(
        np.abs(np.nan_to_num(f)) > MAX_ABS_FUNDING_RATE,
        f"column funding_rate exceeds {MAX_ABS_FUNDING_RATE:g} per interval "
        "(rates are fractions, not percent)",
        symbols,
        grid,
    )


def _check_price_detail(
    cols: dict[str, np.ndarray], symbols: tuple[str, ...], grid: np.ndarray
) -> None:
    """Each leg's extremes of a bar must contain its close, and a mark must be near its perp price.

    Raises:
        ValueError: `perp_low > perp_price`, `perp_high < perp_price`, `perp_low > perp_high` (and
            the same for `spot_*`), or a mark more than `MAX_MARK_DEVIATION` from the perp price;
            the message names the column, the symbol and the first bad bar.
    """
    perp, mark = cols["perp_price"], cols["mark_price"]
    with np.errstate(invalid="ignore"):
        for leg in ("perp", "spot"):
            close, high, low = (cols[f"{leg}_{c}"] for c in ("price", "high", "low"))
            _raise_if(high < close, f"column {leg}_high is below {leg}_price", symbols, grid)
            _raise_if(low > close, f"column {leg}_low is above {leg}_price", symbols, grid)
            _raise_if(low > high, f"column {leg}_low is above {leg}_high", symbols, grid)
        _raise_if(
            np.abs(mark / perp - 1.0) > MAX_MARK_DEVIATION,
            f"column mark_price is more than {MAX_MARK_DEVIATION:.0%} away from perp_price "
            "(another market's mark, or a unit error)",
            symbols,
            grid,
        )


def _check_settlement_spacing(
    funding: np.ndarray, stated: np.ndarray | None, symbols: tuple[str, ...], grid: np.ndarray
) -> None:
    """Each settlement must cover the time since the previous one of its symbol.

    With a `funding_interval_hours` column, the hours since the previous settlement must equal
    the hours it states at the settlement (where known); without one, they must not exceed
    `MAX_FUNDING_INTERVAL_HOURS`. A first settlement has nothing to compare with.

    Raises:
        ValueError: a settlement disagrees; the message names the symbol, both times, the spacing
            and what was expected.
    """
    for j, s in enumerate(symbols):
        rows = np.flatnonzero(~np.isnan(funding[:, j]))
        if rows.shape[0] < 2:
            continue
        gap_h = np.diff(grid[rows]) / 3.6e12
        if stated is None:
            bad = gap_h > MAX_FUNDING_INTERVAL_HOURS + 1e-9
            expected = np.full(gap_h.shape, MAX_FUNDING_INTERVAL_HOURS)
        else:
            expected = stated[rows[1:], j]
            bad = ~np.isnan(expected) & (np.abs(gap_h - expected) > 1.0 / 3600.0)
        if not bad.any():
            continue
        k = int(np.argmax(bad))
        when, before = _fmt(grid[rows[k + 1]]), _fmt(grid[rows[k]])
        if stated is None:
            raise ValueError(
                f"column funding_rate for {s} settles at {when}, {gap_h[k]:g} h after the previous "
                f"settlement at {before}; no venue settles less often than every "
                f"{MAX_FUNDING_INTERVAL_HOURS:g} h, so this looks like an aggregate of several "
                "prints (e.g. a daily mean of three 8 h prints): give every print at its own time, "
                f"or state the hours each rate covers in column {STATED_INTERVAL_COLUMN}"
            )
        raise ValueError(
            f"column funding_rate for {s} settles at {when}, {gap_h[k]:g} h after the previous "
            f"settlement at {before}, but {STATED_INTERVAL_COLUMN} says {expected[k]:g} h: a "
            "settlement must cover the hours since the previous one (a missing print, or a mean "
            "of several prints presented as one settlement)"
        )


def _raise_if(bad: np.ndarray, what: str, symbols: tuple[str, ...], grid: np.ndarray) -> None:
    if not bad.any():
        return
    rows, syms = np.nonzero(bad)
    raise ValueError(
        f"{what}: {bad.sum()} bad values, first for {symbols[syms[0]]} at {_fmt(grid[rows[0]])}"
    )


def _zero_warmup(x: np.ndarray) -> None:
    # Feature columns may start with NaN (indicator warm-up): those leading values become 0, in
    # place.
    for j in range(x.shape[1]):
        nan = np.isnan(x[:, j])
        if nan.all():
            x[:, j] = 0.0
        elif nan[0]:
            x[: int(np.argmax(~nan)), j] = 0.0


def _bounded_ffill(
    x: np.ndarray, name: str, symbols: tuple[str, ...], grid: np.ndarray, limit: int
) -> np.ndarray:
    # Forward-fill NaN runs of at most `limit` bars in place; returns the filled mask.
    if not np.isnan(x).any():
        return np.zeros(x.shape, dtype=bool)
    filled = np.zeros(x.shape, dtype=bool)
    for j, s in enumerate(symbols):
        col = x[:, j]
        nan = np.isnan(col)
        if not nan.any():
            continue
        if nan.all():
            continue  # an absent optional input for this symbol: the env uses its default
        if nan[0]:
            k = int(np.argmax(~nan))
            raise ValueError(
                f"column {name} for {s} has {k} missing ticks at the start "
                f"({_fmt(grid[0])}..{_fmt(grid[k - 1])}); "
                "there is no earlier value to forward-fill from"
            )
        idx = np.where(nan, 0, np.arange(col.shape[0]))
        np.maximum.accumulate(idx, out=idx)
        run = np.arange(col.shape[0]) - idx
        if run.max() > limit:
            end = int(np.argmax(run))
            start = end - int(run[end]) + 1
            while end + 1 < col.shape[0] and nan[end + 1]:
                end += 1
            raise ValueError(
                f"column {name} for {s} has {end - start + 1} consecutive missing ticks "
                f"({_fmt(grid[start])}..{_fmt(grid[end])}), more than max_stale_bars={limit}; "
                "refusing to forward-fill them"
            )
        x[:, j] = col[idx]
        filled[:, j] = nan
    return filled
