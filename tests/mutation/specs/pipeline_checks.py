"""More curated mutations of the point-in-time proof and the dataset checks (those the
`pipeline` specs do not plant), each caught by `tests/pipeline/features/test_check_failures.py`."""

from __future__ import annotations

from tests.mutation.spec import Mutation

F_CHECKS = "carry_pipeline/defs/features/checks.py"
D_CHECKS = "carry_pipeline/defs/datasets/checks.py"
PIT = "carry_pipeline/lib/features/point_in_time.py"
CARRY = "carry_pipeline/lib/features/carry.py"
CHECK_TESTS = "tests/pipeline/features/test_check_failures.py"
PIT_TESTS = "tests/pipeline/features/test_point_in_time.py"
CARRY_TESTS = "tests/pipeline/features/test_carry.py"

MUTATIONS: list[Mutation] = [
    Mutation(
        id="pit-nan-on-one-side-is-equal",
        path=PIT,
        old="same = (xs == ys) | (np.isnan(xs) & np.isnan(ys))",
        new="same = (xs == ys) | np.isnan(xs) | np.isnan(ys)",
        tests=(CHECK_TESTS, PIT_TESTS),
        note="A value that becomes NaN (or stops being NaN) after the perturbation is not "
        "reported.",
    ),
    Mutation(
        id="pit-cutoff-bar-not-compared",
        path=PIT,
        old='a, b = a.filter(pl.col("ts") <= t), b.filter(pl.col("ts") <= t)',
        new='a, b = a.filter(pl.col("ts") < t), b.filter(pl.col("ts") < t)',
        tests=(CHECK_TESTS, PIT_TESTS),
        note="A leak into the bar stamped exactly at the cut-off goes unseen.",
    ),
    Mutation(
        id="datasets-stats-compared-with-themselves",
        path=D_CHECKS,
        old="again.select(cols).to_numpy(), stats.select(cols).to_numpy(), rtol=1e-12",
        new="stats.select(cols).to_numpy(), stats.select(cols).to_numpy(), rtol=1e-12",
        tests=(CHECK_TESTS,),
        note="Statistics computed with later rows are never recomputed: the leak check is void.",
    ),
    Mutation(
        id="datasets-train-end-inclusive",
        path=D_CHECKS,
        old='not row["last_ts"] < fold["train_end"]',
        new='not row["last_ts"] <= fold["train_end"]',
        tests=(CHECK_TESTS,),
        note="A train array holding the bar at the train end (the first test-side bar) passes.",
    ),
]
