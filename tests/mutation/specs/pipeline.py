"""Mutations of the feature stage (point-in-time joins, settlement intervals, blocking checks),
the simulated order book's seed and the env's volatility-dependent leverage limit."""

from tests.mutation.spec import Mutation

BARS = "carry_pipeline/lib/features/bars.py"
CARRY = "carry_pipeline/lib/features/carry.py"
PIT = "carry_pipeline/lib/features/point_in_time.py"
FCHECKS = "carry_pipeline/defs/features/checks.py"
DCHECKS = "carry_pipeline/defs/datasets/checks.py"
T_BARS = "tests/pipeline/features/test_bars.py"
T_CARRY = "tests/pipeline/features/test_carry.py"
T_PIT = "tests/pipeline/features/test_point_in_time.py"
T_CHECKS = "tests/pipeline/features/test_blocking_checks.py"
T_INTERVALS = "tests/pipeline/features/test_funding_intervals.py"

MUTATIONS: list[Mutation] = [
    Mutation(
        id="pipeline-funding-settled-bar-early",
        path=BARS,
        old="pl.when(floor == settled).then(floor).otherwise(floor + bar)",
        new="pl.when(floor == settled).then(floor).otherwise(floor)",
        tests=(T_BARS,),
        note="a mid-bar settlement is paid at the close of the bar before it: look-ahead",
    ),
    Mutation(
        id="pipeline-funding-intervals-not-summed",
        path=BARS,
        old='.then(pl.col("interval_hours").sum())',
        new='.then(pl.col("interval_hours").max())',
        tests=(T_BARS,),
        note="two settlements in one bar claim to cover one interval only",
    ),
    Mutation(
        id="pipeline-book-join-without-tolerance",
        path=BARS,
        old="            tolerance=parse_duration(cfg.max_book_age),\n",
        new="",
        tests=(T_BARS,),
        note="a stale order-book snapshot is used forever instead of the volume proxy",
    ),
    Mutation(
        id="pipeline-book-join-forward",
        path=BARS,
        old='right_on="book_ts",\n            by="symbol",\n            strategy="backward",',
        new='right_on="book_ts",\n            by="symbol",\n            strategy="forward",',
        tests=(T_BARS,),
        note="the bar reads the next order-book snapshot: look-ahead",
    ),
    Mutation(
        id="pipeline-funding-ann-ignores-interval",
        path=CARRY,
        old='interval = pl.col("funding_interval_hours")'
        ".fill_null(cfg.default_funding_interval_hours)",
        new="interval = pl.lit(cfg.default_funding_interval_hours)",
        tests=(T_CARRY, T_INTERVALS),
        note="f_funding_ann annualises every venue as if it settled every 8 h",
    ),
    Mutation(
        id="pipeline-higher-timeframe-forward",
        path=CARRY,
        old='on="ts",\n            strategy="backward",',
        new='on="ts",\n            strategy="forward",',
        tests=(T_CARRY,),
        note="a bar reads the higher-timeframe bar that has not closed yet",
    ),
    Mutation(
        id="pipeline-pit-sample-compares-run-with-itself",
        path=PIT,
        old="_frame_diff(runs[0][name], runs[1][name], t, name)",
        new="_frame_diff(runs[0][name], runs[0][name], t, name)",
        tests=(T_PIT, T_CHECKS),
        note="the sampled point-in-time check compares the base run with itself",
    ),
    Mutation(
        id="pipeline-check-grid-noop",
        path=FCHECKS,
        old='passed=not problems,\n        description="; ".join(problems) or "one regular grid',
        new='passed=True,\n        description="; ".join(problems) or "one regular grid',
        tests=(T_CHECKS,),
        note="every_symbol_on_same_grid passes unconditionally",
    ),
    Mutation(
        id="pipeline-check-nan-noop",
        path=FCHECKS,
        old="        passed=not bad,\n"
        '        description=f"non-finite values after the warm-up: {bad}"'
        ' if bad else "all finite",\n        metadata={"bad_columns"',
        new="        passed=True,\n"
        '        description=f"non-finite values after the warm-up: {bad}"'
        ' if bad else "all finite",\n        metadata={"bad_columns"',
        tests=(T_CHECKS,),
        note="no_nan_after_warmup passes unconditionally",
    ),
    Mutation(
        id="pipeline-check-nan-grid-ignored",
        path=FCHECKS,
        old='        bad["<grid>"] = 1\n        return dg.AssetCheckResult(passed=False,',
        new='        bad["<grid>"] = 1\n        return dg.AssetCheckResult(passed=True,',
        tests=(T_CHECKS,),
        note="no_nan_after_warmup ignores a broken grid",
    ),
    Mutation(
        id="pipeline-check-sentiment-noop",
        path=FCHECKS,
        old="        passed=not bad,\n"
        '        description=f"non-finite values after the warm-up: {bad}"'
        ' if bad else "all finite",\n        metadata={"stale_share"',
        new="        passed=True,\n"
        '        description=f"non-finite values after the warm-up: {bad}"'
        ' if bad else "all finite",\n        metadata={"stale_share"',
        tests=(T_CHECKS,),
        note="sentiment_finite_after_warmup passes unconditionally",
    ),
    Mutation(
        id="pipeline-check-pit-result-ignored",
        path=FCHECKS,
        old='passed=not problems,\n        description="; ".join(problems[:10])',
        new='passed=True,\n        description="; ".join(problems[:10])',
        tests=(T_CHECKS,),
        note="point_in_time_on_sampled_cutoffs ignores what it found",
    ),
    Mutation(
        id="pipeline-check-folds-noop",
        path=DCHECKS,
        old='passed=not problems,\n        description="; ".join(problems) or "ordered',
        new='passed=True,\n        description="; ".join(problems) or "ordered',
        tests=(T_CHECKS,),
        note="folds_ordered_without_overlap passes unconditionally",
    ),
    Mutation(
        id="pipeline-check-standardised-or",
        path=DCHECKS,
        old="if means > TOLERANCE or stds > TOLERANCE:",
        new="if means > TOLERANCE and stds > TOLERANCE:",
        tests=(T_CHECKS,),
        note="train_features_standardised needs both the mean and the std off to fail",
    ),
    Mutation(
        id="pipeline-check-standardised-leak-ignored",
        path=DCHECKS,
        old='past = features.filter(pl.col("ts") < fold["train_end"])',
        new="past = features",
        tests=(T_CHECKS,),
        note="train_features_standardised recomputes the statistics from every row",
        equivalent="compute_normalisation_stats selects each fold's train rows itself "
        "(normalisation.train_rows: ts < train_end), so the pre-filter changes nothing; "
        "pipeline-check-standardised-recompute-self covers the recompute comparison",
    ),
    Mutation(
        id="pipeline-check-standardised-recompute-self",
        path=DCHECKS,
        old="again.select(cols).to_numpy(), stats.select(cols).to_numpy()",
        new="stats.select(cols).to_numpy(), stats.select(cols).to_numpy()",
        tests=(T_CHECKS,),
        note="train_features_standardised compares the statistics with themselves",
    ),
    Mutation(
        id="pipeline-check-windows-self-compare",
        path=DCHECKS,
        old="if not np.array_equal(got, expected.to_numpy().astype(np.float32)):",
        new="if not np.array_equal(got, got):",
        tests=(T_CHECKS,),
        note="windows_leak_free compares a window with itself",
    ),
    Mutation(
        id="pipeline-check-windows-noop",
        path=DCHECKS,
        old='passed=not problems,\n        description="; ".join(problems)\n'
        '        or "windows match',
        new='passed=True,\n        description="; ".join(problems)\n        or "windows match',
        tests=(T_CHECKS,),
        note="windows_leak_free passes unconditionally",
    ),
    Mutation(
        id="pipeline-check-windows-train-end-ignored",
        path=DCHECKS,
        old='if row["segment"] == "train" and not row["last_ts"] < fold["train_end"]:',
        new='if row["segment"] == "train" and not row["last_ts"] <= fold["train_end"]:',
        tests=(T_CHECKS,),
        note="windows_leak_free lets a train array hold the bar at its train end (half-open span)",
    ),
    Mutation(
        id="pipeline-sim-book-ignores-seed",
        path="carry_pipeline/lib/exchanges/simulated.py",
        old="[symbol], start, end, self.order_book_interval, seed=self.seed",
        new="[symbol], start, end, self.order_book_interval, seed=0",
        tests=("tests/pipeline/test_simulated_book_seed.py",),
        note="the simulated order book is the same whatever the exchange's seed",
    ),
    Mutation(
        id="env-max-leverage-rises-with-vol",
        path="carry_env/derive.py",
        old="maxlev = config.leverage_cap * config.target_vol_annual / vol",
        new="maxlev = config.leverage_cap * vol / config.target_vol_annual",
        tests=("tests/env/test_leverage_limit.py",),
        note="the leverage limit grows with volatility instead of shrinking",
    ),
    Mutation(
        id="env-max-leverage-no-floor",
        path="carry_env/derive.py",
        old="np.clip(maxlev, config.min_leverage, config.leverage_cap)",
        new="np.minimum(maxlev, config.leverage_cap)",
        tests=("tests/env/test_leverage_limit.py",),
        note="max_leverage_t falls below min_leverage in a wild market",
    ),
    Mutation(
        id="pipeline-basis-sign",
        path=CARRY,
        old='(perp - spot).alias("f_basis")',
        new='(spot - perp).alias("f_basis")',
        tests=(T_CARRY + "::test_basis_hand_computed",),
        note="the basis reads spot over perp: the carry direction flips",
    ),
    Mutation(
        id="pipeline-basis-bps-scale",
        path=CARRY,
        old='((perp / spot - 1.0) * 1e4).alias("f_basis_bps")',
        new='((perp / spot - 1.0) * 1e3).alias("f_basis_bps")',
        tests=(T_CARRY + "::test_basis_hand_computed",),
        note="the basis in bp is off by ten",
    ),
    Mutation(
        id="env-borrow-on-bar-end-price",
        path="carry_env/kernel.py",
        old="borrow += -qs * s0 * cfg[C_SPOT_BORROW] * dt",
        new="borrow += -qs * s1 * cfg[C_SPOT_BORROW] * dt",
        tests=("tests/env/test_cash_flows.py",),
        note="spot borrow charged on the bar's closing price instead of the price it was held at",
    ),
    Mutation(
        id="pipeline-pit-nan-on-one-side-is-equal",
        path=PIT,
        old="same = (xs == ys) | (np.isnan(xs) & np.isnan(ys))",
        new="same = (xs == ys) | np.isnan(xs) | np.isnan(ys)",
        tests=(T_PIT,),
        note="a value that becomes NaN (or stops being NaN) after the perturbation is not reported",
    ),
    Mutation(
        id="pipeline-pit-cutoff-bar-not-compared",
        path=PIT,
        old='a, b = a.filter(pl.col("ts") <= t), b.filter(pl.col("ts") <= t)',
        new='a, b = a.filter(pl.col("ts") < t), b.filter(pl.col("ts") < t)',
        tests=(T_PIT,),
        note="a leak into the bar stamped exactly at the cut-off goes unseen",
    ),
]
