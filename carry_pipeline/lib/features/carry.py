"""`carry_features`: point-in-time features of each symbol's market bars, every column prefixed
`f_`.

Every feature at bar `ts` is a function of rows at or before `ts` only: rolling windows end at the
current row, funding features are built from settlements (known from their settlement bar on) and
carried forward, higher-timeframe indicators come from CLOSED 4h / daily bars joined backward on
their close time. The warm-up (rows before every feature is defined for every symbol) is flagged in
`warmup`, not dropped.

Features (windows in config are durations, turned into bars of the grid):
- basis: `f_basis` (perp - spot, USDT), `f_basis_bps`, `f_basis_z` (z-score over `zscore_window`);
- funding, from the settlements: `f_funding_rate` (last settled rate), `f_funding_sma3` (mean of the
  last 3), `f_funding_z` (z-score over the last `funding_zscore_periods` settlements),
  `f_funding_ann` (annualised: rate x 24 / interval_hours x 365, simple), `f_funding_streak` (signed
  count of consecutive settlements of the same sign, 0 for a zero rate), `f_minutes_to_funding`
  (until the next settlement expected from the last one and its interval, floored at 0),
  `f_funding_spread_ann` (annualised rate minus the mean over symbols);
- returns and risk on the spot close: `f_ret_<h>` log returns over each of `return_horizons`, `f_rv`
  (annualised realised volatility over `vol_window`), `f_vol_of_vol` (std / mean of `f_rv` over
  `vol_of_vol_window`), `f_ret_skew`, `f_ret_kurt` (of 1-bar returns over `moments_window`);
- microstructure: `f_hl_spread_bps` (Corwin-Schultz high-low spread estimate averaged over
  `microstructure_window`), `f_vwap_dev_bps` (close vs the rolling VWAP), `f_trade_intensity` (log
  traded notional of both legs vs its rolling mean);
- indicators (see `indicators.py`) on the bar (`_bar`) and on each closed higher timeframe (`_4h`,
  `_1d`);
- time: `f_hour_sin`, `f_hour_cos`, `f_dow_sin`, `f_dow_cos` of the bar's close time;
- cross-asset: `f_corr_btc_eth` (rolling correlation of the pair's 1-bar spot returns, same on every
  symbol; present only when both symbols of `correlation_pair` are in the frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta

import polars as pl

from carry_pipeline.lib.features.indicators import (
    IndicatorConfig,
    add_indicators,
    higher_timeframe_bars,
    indicator_names,
)
from carry_pipeline.lib.features.timeframes import bars_in, infer_bar, parse_duration, per_year

REQUIRED_COLUMNS = (
    "ts",
    "symbol",
    "spot_open",
    "spot_high",
    "spot_low",
    "spot_close",
    "spot_volume",
    "perp_close",
    "perp_volume",
    "funding_rate",
    "funding_interval_hours",
)


@dataclass(frozen=True)
class CarryFeaturesConfig:
    """Windows and settings of `build_carry_features`."""

    zscore_window: str = "1d"
    """Window of the basis z-score."""
    funding_zscore_periods: int = 30
    """Settlements in the funding z-score (30 = 10 days of 8-hourly funding)."""
    default_funding_interval_hours: float = 8.0
    """Funding interval assumed for a settlement whose `interval_hours` is null (the first one
    fetched)."""
    return_horizons: tuple[str, ...] = ("1h", "4h", "1d")
    """Horizons of the log returns `f_ret_<h>`; each a whole multiple of the bar."""
    vol_window: str = "1d"
    """Window of the realised volatility `f_rv`."""
    vol_of_vol_window: str = "7d"
    """Window of `f_vol_of_vol`."""
    moments_window: str = "1d"
    """Window of the return skew and kurtosis."""
    microstructure_window: str = "1d"
    """Window of the high-low spread average, the VWAP and the trade-intensity mean."""
    indicators: IndicatorConfig = field(default_factory=IndicatorConfig)
    """Indicator lengths, used on the bar and on every higher timeframe."""
    higher_timeframes: tuple[str, ...] = ("4h", "1d")
    """Higher timeframes whose closed bars get the indicators too; whole multiples of the bar."""
    correlation_pair: tuple[str, str] | None = ("BTC/USDT:USDT", "ETH/USDT:USDT")
    """Symbols whose rolling return correlation is `f_corr_btc_eth`; None leaves it out."""
    correlation_window: str = "1d"
    """Window of `f_corr_btc_eth`."""

    def __post_init__(self) -> None:
        windows = (
            self.zscore_window,
            self.vol_window,
            self.vol_of_vol_window,
            self.moments_window,
            self.microstructure_window,
            self.correlation_window,
        )
        for text in (*windows, *self.return_horizons, *self.higher_timeframes):
            parse_duration(text)
        if self.funding_zscore_periods < 2:
            raise ValueError(
                f"funding_zscore_periods must be >= 2, got {self.funding_zscore_periods}"
            )
        if self.default_funding_interval_hours <= 0:
            raise ValueError("default_funding_interval_hours must be > 0")


def build_carry_features(
    bars: pl.DataFrame, config: CarryFeaturesConfig | None = None
) -> pl.DataFrame:
    """Compute the carry features of `market_bars`.

    Args:
        bars: `market_bars` (see `build_market_bars`): every symbol on the same regular grid.
        config: windows and settings; defaults to `CarryFeaturesConfig()`.

    Returns:
        `ts`, `symbol`, `warmup` and the `f_` columns (Float64), sorted by symbol then ts, one row
        per row of `bars`. `warmup` is true before the first bar at which every feature of every
        symbol is finite.

    Raises:
        ValueError: a required column is missing, the grid is irregular or differs between symbols,
            a window is not a whole multiple of the bar, or the data is too short for any bar to
            leave the warm-up.
    """
    cfg = config or CarryFeaturesConfig()
    missing = [c for c in REQUIRED_COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"market_bars lacks columns {missing} needed by carry_features")
    bar = check_same_grid(bars, what="market_bars")
    parts = bars.sort("symbol", "ts").partition_by("symbol", maintain_order=True)
    frames = pl.collect_all([_symbol_features(p.lazy(), bar, cfg) for p in parts])
    features = pl.concat(frames)
    features = _cross_asset(features, bars, bar, cfg)
    return flag_warmup(features, what="carry_features")


def check_same_grid(frame: pl.DataFrame, *, what: str) -> timedelta:
    """Check that every symbol has the same regular grid of `ts`, and return its bar.

    Raises:
        ValueError: duplicated rows, gaps or different grids between symbols.
    """
    if frame.height == 0:
        raise ValueError(f"{what} is empty")
    first = frame["symbol"][0]
    bar = infer_bar(frame.filter(pl.col("symbol") == first)["ts"], what=f"{what} {first}")
    spans = frame.group_by("symbol").agg(
        pl.col("ts").min().alias("first"),
        pl.col("ts").max().alias("last"),
        pl.len().alias("n"),
        pl.col("ts").n_unique().alias("distinct"),
    )
    for row in spans.iter_rows(named=True):
        if row["distinct"] != row["n"]:
            raise ValueError(
                f"{what}: {row['symbol']} has {row['n'] - row['distinct']} rows sharing a ts"
            )
        expected = (row["last"] - row["first"]) // bar + 1
        if row["n"] != expected:
            raise ValueError(
                f"{what}: {row['symbol']} has {row['n']} bars between {row['first']} and "
                f"{row['last']}, "
                f"expected {expected} on a regular {bar} grid"
            )
    if spans["first"].n_unique() > 1 or spans["last"].n_unique() > 1:
        raise ValueError(
            f"{what}: symbols are on different grids: "
            + ", ".join(
                f"{r['symbol']} {r['first']}..{r['last']}" for r in spans.iter_rows(named=True)
            )
        )
    return bar


def flag_warmup(features: pl.DataFrame, *, what: str) -> pl.DataFrame:
    """Add `warmup`: true before the first `ts` at which every `f_` column of every symbol is
    finite.

    The first complete row of each symbol depends only on rows up to it, so the flag is
    point-in-time.

    Raises:
        ValueError: some symbol never has a row with every feature finite (the data is shorter than
            the longest lookback); the message names the columns still missing at the last bar.
    """
    cols = [c for c in features.columns if c.startswith("f_")]
    complete = pl.all_horizontal([pl.col(c).is_finite().fill_null(False) for c in cols])
    firsts = (
        features.with_columns(complete.alias("_complete"))
        .group_by("symbol")
        .agg(pl.col("ts").filter(pl.col("_complete")).min().alias("first_complete"))
    )
    never = firsts.filter(pl.col("first_complete").is_null())
    if never.height:
        symbol = never["symbol"][0]
        rows = features.filter(pl.col("symbol") == symbol)
        last, last_n = rows.tail(1), rows.height
        bad = [
            c for c in cols if not math.isfinite(last[c][0] if last[c][0] is not None else math.nan)
        ]
        raise ValueError(
            f"{what}: {symbol} never has every feature defined ({last_n} bars); at its last "
            f"bar these are still null or non-finite: {bad}. Supply more history than "
            "the longest lookback (the daily indicators need about a month)."
        )
    end = firsts["first_complete"].max()
    return features.with_columns((pl.col("ts") < end).alias("warmup")).select(
        "ts", "symbol", "warmup", *cols
    )


def _ratio(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    # num / den, 0 where both are 0 (a flat window), null while either is undefined.
    return pl.when(den != 0).then(num / den).otherwise(pl.when(num == 0).then(0.0))


def _zscore(x: pl.Expr, window: int) -> pl.Expr:
    # A flat window has no spread: its z-score is 0, not a division by zero.
    return _ratio(x - x.rolling_mean(window), x.rolling_std(window))


def _symbol_features(lf: pl.LazyFrame, bar: timedelta, cfg: CarryFeaturesConfig) -> pl.LazyFrame:
    n = {
        "z": bars_in(cfg.zscore_window, bar, what="zscore_window"),
        "vol": bars_in(cfg.vol_window, bar, what="vol_window"),
        "vov": bars_in(cfg.vol_of_vol_window, bar, what="vol_of_vol_window"),
        "mom": bars_in(cfg.moments_window, bar, what="moments_window"),
        "micro": bars_in(cfg.microstructure_window, bar, what="microstructure_window"),
    }
    spot, perp = pl.col("spot_close"), pl.col("perp_close")
    ret1 = spot.log().diff()
    notional = pl.col("spot_volume") * spot + pl.col("perp_volume") * perp
    typical = (pl.col("spot_high") + pl.col("spot_low") + spot) / 3.0
    vwap = (typical * pl.col("spot_volume")).rolling_sum(n["micro"]) / pl.col(
        "spot_volume"
    ).rolling_sum(n["micro"])
    hour = pl.col("ts").dt.hour() + pl.col("ts").dt.minute() / 60.0
    dow = pl.col("ts").dt.weekday() - 1
    tau = 2.0 * math.pi

    base = lf.with_columns(
        (perp - spot).alias("f_basis"),
        ((perp / spot - 1.0) * 1e4).alias("f_basis_bps"),
        *[
            (spot.log().diff(bars_in(h, bar, what="return horizon"))).alias(f"f_ret_{h}")
            for h in cfg.return_horizons
        ],
        (ret1.rolling_std(n["vol"]) * math.sqrt(per_year(bar))).alias("f_rv"),
        ret1.rolling_skew(n["mom"]).alias("f_ret_skew"),
        ret1.rolling_kurtosis(n["mom"]).alias("f_ret_kurt"),
        (
            _corwin_schultz(pl.col("spot_high"), pl.col("spot_low")).rolling_mean(n["micro"]) * 1e4
        ).alias("f_hl_spread_bps"),
        pl.when(vwap > 0).then((spot / vwap - 1.0) * 1e4).alias("f_vwap_dev_bps"),
        (notional.log1p() - notional.log1p().rolling_mean(n["micro"])).alias("f_trade_intensity"),
        (hour / 24.0 * tau).sin().alias("f_hour_sin"),
        (hour / 24.0 * tau).cos().alias("f_hour_cos"),
        (dow / 7.0 * tau).sin().alias("f_dow_sin"),
        (dow / 7.0 * tau).cos().alias("f_dow_cos"),
    )
    base = add_indicators(base, cfg.indicators, "bar", "spot_high", "spot_low", "spot_close")
    base = base.with_columns(
        _zscore(pl.col("f_basis_bps"), n["z"]).alias("f_basis_z"),
        _ratio(pl.col("f_rv").rolling_std(n["vov"]), pl.col("f_rv").rolling_mean(n["vov"])).alias(
            "f_vol_of_vol"
        ),
    )
    base = (
        base.join(_funding_features(lf, cfg), on="ts", how="left", maintain_order="left")
        .with_columns(pl.col(c).forward_fill() for c in FUNDING_EVENT_FEATURES)
        .with_columns(
            ((pl.col("_next_funding") - pl.col("ts")).dt.total_seconds() / 60.0)
            .clip(lower_bound=0.0)
            .alias("f_minutes_to_funding")
        )
    )
    for every in cfg.higher_timeframes:
        base = base.join_asof(
            _higher_timeframe(lf, bar, parse_duration(every), every, cfg),
            on="ts",
            strategy="backward",
            check_sortedness=False,
        )
    return base.select("ts", "symbol", pl.col("^f_.*$").cast(pl.Float64))


FUNDING_EVENT_FEATURES = (
    "f_funding_rate",
    "f_funding_sma3",
    "f_funding_z",
    "f_funding_ann",
    "f_funding_streak",
    "_next_funding",
)


def annualised_funding(rate: pl.Expr, interval_hours: pl.Expr) -> pl.Expr:
    """Simple annualised carry of a rate paid every `interval_hours`: rate x (24 / interval) x
    365."""
    return rate * (24.0 / interval_hours) * 365.0


def _funding_features(lf: pl.LazyFrame, cfg: CarryFeaturesConfig) -> pl.LazyFrame:
    # Features of the settlement series; joined on the settlement bar and carried forward by the
    # caller.
    rate = pl.col("funding_rate")
    interval = pl.col("funding_interval_hours").fill_null(cfg.default_funding_interval_hours)
    sign = rate.sign()
    run = (sign != sign.shift(1)).fill_null(True).cum_sum()
    k = cfg.funding_zscore_periods
    return lf.filter(rate.is_not_null()).select(
        "ts",
        rate.alias("f_funding_rate"),
        rate.rolling_mean(3).alias("f_funding_sma3"),
        _zscore(rate, k).alias("f_funding_z"),
        annualised_funding(rate, interval).alias("f_funding_ann"),
        (sign * (pl.int_range(pl.len()).over(run) + 1)).alias("f_funding_streak"),
        (pl.col("ts") + pl.duration(minutes=(interval * 60).round().cast(pl.Int64))).alias(
            "_next_funding"
        ),
    )


def _corwin_schultz(high: pl.Expr, low: pl.Expr) -> pl.Expr:
    # Corwin & Schultz (2012) two-bar spread estimate, as a fraction; negative estimates set to 0.
    k = 3.0 - 2.0 * math.sqrt(2.0)
    beta = (high / low).log().pow(2) + (high.shift(1) / low.shift(1)).log().pow(2)
    gamma = (
        (pl.max_horizontal(high, high.shift(1)) / pl.min_horizontal(low, low.shift(1))).log().pow(2)
    )
    alpha = ((2.0 * beta).sqrt() - beta.sqrt()) / k - (gamma / k).sqrt()
    spread = 2.0 * (alpha.exp() - 1.0) / (1.0 + alpha.exp())
    return pl.when(high.shift(1).is_null()).then(None).otherwise(spread.clip(lower_bound=0.0))


def _higher_timeframe(
    lf: pl.LazyFrame, bar: timedelta, every: timedelta, name: str, cfg: CarryFeaturesConfig
) -> pl.LazyFrame:
    htf = higher_timeframe_bars(lf, bar, every)
    htf = add_indicators(htf, cfg.indicators, name, "high", "low", "close")
    return htf.select("ts", *indicator_names(name))


def _cross_asset(
    features: pl.DataFrame, bars: pl.DataFrame, bar: timedelta, cfg: CarryFeaturesConfig
) -> pl.DataFrame:
    mean_ann = pl.col("f_funding_ann").mean().over("ts")
    features = features.with_columns(
        (pl.col("f_funding_ann") - mean_ann).alias("f_funding_spread_ann")
    )
    pair = cfg.correlation_pair
    symbols = set(bars["symbol"].unique().to_list())
    if pair is None or not set(pair) <= symbols:
        return features
    window = bars_in(cfg.correlation_window, bar, what="correlation_window")
    rets = [
        bars.filter(pl.col("symbol") == s)
        .sort("ts")
        .select("ts", pl.col("spot_close").log().diff().alias(f"r{i}"))
        for i, s in enumerate(pair)
    ]
    corr = (
        rets[0]
        .join(rets[1], on="ts")
        .select("ts", pl.rolling_corr("r0", "r1", window_size=window).alias("f_corr_btc_eth"))
    )
    return features.join(corr, on="ts", how="left", maintain_order="left")
