"""Technical indicators as polars expressions, matching pandas-ta-classic's defaults.

pandas-ta-classic is the reference (`tests/pipeline/features/test_indicators.py` compares every
expression here with it on the same series); these expressions compute the same numbers without
leaving polars, which keeps `carry_features` inside its time budget. Each expression works on one
symbol's rows sorted by time (callers run it per symbol) and reproduces pandas-ta-classic's seeding:

- RMA (Wilder's moving average, used by RSI and ATR, and by ADX for the final smoothing): the first
  value is the SMA of the first `length` valid inputs, then `ewm(alpha=1/length, adjust=False)`;
- EMA and MACD: SMA seed at `length - 1`, then `ewm(span=length, adjust=False)`; MACD's signal line
  is seeded on the MACD line's first `signal` values (TA-Lib's alignment);
- ADX: +DI/-DI from Wilder's cumulative smoothing seeded on inputs 1..length-1, then DX, then RMA of
  DX;
- Bollinger bandwidth: `100 * (upper - lower) / mid` with a population (ddof=0) standard deviation.

`higher_timeframe_bars` builds CLOSED higher-timeframe bars from a bar grid, so indicators on 4h and
daily bars only ever use bars that have finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import polars as pl

_EPS = 2.220446049250313e-16  # numpy float64 epsilon, as pandas-ta's non_zero_range and zero()


@dataclass(frozen=True)
class IndicatorConfig:
    """Lengths of the technical indicators (pandas-ta-classic defaults)."""

    rsi_length: int = 14
    """RSI lookback in bars."""
    atr_length: int = 14
    """ATR lookback in bars."""
    macd_fast: int = 12
    """MACD fast EMA length."""
    macd_slow: int = 26
    """MACD slow EMA length."""
    macd_signal: int = 9
    """MACD signal EMA length."""
    bb_length: int = 20
    """Bollinger band length."""
    bb_std: float = 2.0
    """Bollinger band width in standard deviations."""
    adx_length: int = 14
    """ADX lookback in bars."""
    ema_length: int = 50
    """Length of the EMA that `ema_dist` measures the close against."""

    def __post_init__(self) -> None:
        for name in ("rsi_length", "atr_length", "macd_fast", "macd_slow", "macd_signal"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.bb_length < 2 or self.adx_length < 2 or self.ema_length < 1 or self.bb_std <= 0:
            raise ValueError("bb_length and adx_length must be >= 2, ema_length >= 1, bb_std > 0")
        if self.macd_fast >= self.macd_slow:
            raise ValueError(f"macd_fast ({self.macd_fast}) must be < macd_slow ({self.macd_slow})")

    def lookback(self) -> int:
        """Bars before every indicator of `add_indicators` is defined (the last one to start is
        used)."""
        return max(
            self.rsi_length,
            self.atr_length,
            self.macd_slow + self.macd_signal - 2,
            self.bb_length - 1,
            2 * self.adx_length - 1,
            self.ema_length - 1,
        )


_I = "_ind_row"  # temporary row-number column (per symbol) used for the seeds


def _seeded_ewm(x: pl.Expr, length: int, alpha: float, seed_at: int) -> pl.Expr:
    # ewm(adjust=False) started from the SMA of x[seed_at - length + 1 : seed_at + 1] placed at
    # `seed_at`.
    row = pl.col(_I)
    seeded = pl.when(row < seed_at).then(None).when(row == seed_at).then(x.rolling_mean(length))
    return seeded.otherwise(x).ewm_mean(alpha=alpha, adjust=False, min_samples=1)


def rma(x: pl.Expr, length: int, first_valid: int = 0) -> pl.Expr:
    """Wilder's moving average of `x` (pandas-ta `rma`), whose first valid input is at row
    `first_valid`.

    Needs the row-number column that `add_indicators` creates.
    """
    return _seeded_ewm(x, length, 1.0 / length, first_valid + length - 1)


def ema(x: pl.Expr, length: int) -> pl.Expr:
    """EMA with an SMA seed (pandas-ta `ema`, `sma=True`, `adjust=False`); needs the row-number
    column."""
    return _seeded_ewm(x, length, 2.0 / (length + 1), length - 1)


def _wilder_mean(x: pl.Expr, length: int) -> pl.Expr:
    # Wilder's cumulative smoothing divided by `length` (the factor cancels in the DI ratios): seed
    # sum(x[1:length]) / length at row length-1, then ewm(alpha=1/length, adjust=False).
    row, at = pl.col(_I), length - 1
    seeded = pl.when(row < at).then(None).when(row == at).then(x.rolling_sum(length - 1) / length)
    return seeded.otherwise(x).ewm_mean(alpha=1.0 / length, adjust=False, min_samples=1)


def indicator_names(suffix: str) -> list[str]:
    """Columns that `add_indicators` adds for a timeframe named `suffix`."""
    return [
        f"f_{name}_{suffix}"
        for name in ("rsi", "atr_pct", "macd_hist_pct", "bb_width", "adx", "ema_dist")
    ]


def add_indicators(
    lf: pl.LazyFrame, cfg: IndicatorConfig, suffix: str, high: str, low: str, close: str
) -> pl.LazyFrame:
    """Add the indicator features of one timeframe to one symbol's rows, sorted by time.

    Columns (scale-free, so that symbols compare): `f_rsi_<suffix>` (RSI, 0-100),
    `f_atr_pct_<suffix>` (ATR / close), `f_macd_hist_pct_<suffix>` (MACD histogram / close),
    `f_bb_width_<suffix>` (Bollinger bandwidth, percent), `f_adx_<suffix>` (ADX, 0-100),
    `f_ema_dist_<suffix>` (close / EMA - 1). Each is null until its lookback is filled, exactly
    where pandas-ta-classic's is NaN.

    The computation runs in stages of intermediate columns (dropped at the end) rather than one
    nested expression per indicator: ADX and MACD reuse their inputs several times, and nesting
    would copy them.

    Args:
        lf: one symbol's rows sorted by time.
        cfg: indicator lengths.
        suffix: the timeframe's name in the column names (`bar`, `4h`, `1d`).
        high: high column.
        low: low column.
        close: close column.
    """
    h, lo, c = pl.col(high), pl.col(low), pl.col(close)
    n_adx = cfg.adx_length
    hl = h - lo
    prev = c.shift(1)
    tr = pl.max_horizontal(
        pl.when(hl != 0).then(hl).otherwise(_EPS), (h - prev).abs(), (prev - lo).abs()
    )
    up, dn = h - h.shift(1), lo.shift(1) - lo
    pos = pl.when((up > dn) & (up >= _EPS)).then(up).otherwise(0.0)
    neg = pl.when((dn > up) & (dn >= _EPS)).then(dn).otherwise(0.0)
    width = 2.0 * cfg.bb_std * c.rolling_std(cfg.bb_length, ddof=0)
    stage1 = lf.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(_I)).with_columns(
        c.diff().alias("_d"),
        pl.when(pl.col(_I) == 0).then(None).otherwise(tr).alias("_tr"),
        pos.alias("_pos"),
        neg.alias("_neg"),
        (
            100.0 * pl.when(width != 0).then(width).otherwise(_EPS) / c.rolling_mean(cfg.bb_length)
        ).alias(f"f_bb_width_{suffix}"),
        (c / ema(c, cfg.ema_length) - 1.0).alias(f"f_ema_dist_{suffix}"),
        (ema(c, cfg.macd_fast) - ema(c, cfg.macd_slow)).alias("_macd"),
    )
    sig_at = cfg.macd_slow + cfg.macd_signal - 2
    stage2 = stage1.with_columns(
        rma(pl.col("_d").clip(lower_bound=0.0), cfg.rsi_length, 1).alias("_gain"),
        rma(pl.col("_d").clip(upper_bound=0.0), cfg.rsi_length, 1).abs().alias("_loss"),
        (rma(pl.col("_tr"), cfg.atr_length, 1) / c).alias(f"f_atr_pct_{suffix}"),
        (
            (
                pl.col("_macd")
                - _seeded_ewm(pl.col("_macd"), cfg.macd_signal, 2.0 / (cfg.macd_signal + 1), sig_at)
            )
            / c
        ).alias(f"f_macd_hist_pct_{suffix}"),
        _wilder_mean(pl.col("_tr"), n_adx).alias("_wtr"),
        _wilder_mean(pl.col("_pos"), n_adx).alias("_wpos"),
        _wilder_mean(pl.col("_neg"), n_adx).alias("_wneg"),
    )
    dmp, dmn = pl.col("_wpos") / pl.col("_wtr"), pl.col("_wneg") / pl.col("_wtr")
    # +DI/-DI are not reported on the seed row, so DX starts at row `length`.
    stage3 = stage2.with_columns(
        (100.0 * pl.col("_gain") / (pl.col("_gain") + pl.col("_loss"))).alias(f"f_rsi_{suffix}"),
        pl.when(pl.col(_I) < n_adx)
        .then(None)
        .otherwise(100.0 * (dmp - dmn).abs() / (dmp + dmn))
        .alias("_dx"),
    )
    stage4 = stage3.with_columns(rma(pl.col("_dx"), n_adx, n_adx).alias(f"f_adx_{suffix}"))
    return stage4.drop(
        _I, "_d", "_tr", "_pos", "_neg", "_macd", "_gain", "_loss", "_wtr", "_wpos", "_wneg", "_dx"
    )


def higher_timeframe_bars(
    bars: pl.LazyFrame, bar: timedelta, every: timedelta, prefix: str = "spot"
) -> pl.LazyFrame:
    """Closed higher-timeframe OHLC bars of one symbol from its bar grid.

    A higher bar covering `[open, open + every)` is made of the grid bars whose close `ts` lies in
    `(open, open + every]`; it is kept only when all `every / bar` of them are present, so the
    partial first and last higher bars are dropped. Its `ts` is its close time, the earliest time
    its values are known.

    Args:
        bars: one symbol's grid, sorted by `ts` (bar close time), with `<prefix>_open..close`
            columns.
        bar: the grid's bar.
        every: the higher timeframe, a whole multiple of `bar`.
        prefix: the leg whose OHLC is resampled.

    Returns:
        Columns `ts` (higher bar close time), `open`, `high`, `low`, `close`, sorted by `ts`.
    """
    if every % bar or every <= bar:
        raise ValueError(f"higher timeframe {every} is not a whole multiple (> 1) of the {bar} bar")
    need = every // bar
    return (
        bars.group_by(
            ((pl.col("ts") - bar).dt.truncate(every)).alias("open_ts"), maintain_order=True
        )
        .agg(
            pl.col(f"{prefix}_open").first().alias("open"),
            pl.col(f"{prefix}_high").max().alias("high"),
            pl.col(f"{prefix}_low").min().alias("low"),
            pl.col(f"{prefix}_close").last().alias("close"),
            pl.len().alias("n"),
        )
        .filter(pl.col("n") == need)
        .select((pl.col("open_ts") + every).alias("ts"), "open", "high", "low", "close")
    )
