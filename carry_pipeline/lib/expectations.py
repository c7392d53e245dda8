"""Great Expectations 1.x suites over whole raw tables (run from `@asset_check`s).

GX is imported inside `validate_table` only: it takes seconds to import and nothing else needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

# Expectations per raw table: (expectation class name, kwargs).
SUITES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "raw_spot_ohlcv": [
        *[("ExpectColumnValuesToNotBeNull", {"column": c}) for c in ("ts", "symbol", "close")],
        ("ExpectCompoundColumnsToBeUnique", {"column_list": ["exchange", "symbol", "ts"]}),
        ("ExpectColumnValuesToBeBetween", {"column": "low", "min_value": 0, "strict_min": True}),
        (
            "ExpectColumnPairValuesAToBeGreaterThanB",
            {"column_A": "high", "column_B": "low", "or_equal": True},
        ),
        ("ExpectColumnValuesToBeBetween", {"column": "volume", "min_value": 0}),
    ],
    "raw_funding_rates": [
        *[
            ("ExpectColumnValuesToNotBeNull", {"column": c})
            for c in ("funding_time", "symbol", "funding_rate")
        ],
        (
            "ExpectCompoundColumnsToBeUnique",
            {"column_list": ["exchange", "symbol", "funding_time"]},
        ),
        (
            "ExpectColumnValuesToBeBetween",
            {"column": "funding_rate", "min_value": -0.05, "max_value": 0.05},
        ),
        (
            "ExpectColumnValuesToBeBetween",
            {"column": "interval_hours", "min_value": 0.5, "max_value": 24, "mostly": 1.0},
        ),
    ],
    "raw_order_book": [
        *[
            ("ExpectColumnValuesToNotBeNull", {"column": c})
            for c in ("ts", "symbol", "market", "mid")
        ],
        ("ExpectColumnValuesToBeInSet", {"column": "market", "value_set": ["spot", "perp"]}),
        (
            "ExpectCompoundColumnsToBeUnique",
            {"column_list": ["exchange", "symbol", "market", "ts"]},
        ),
        (
            "ExpectColumnPairValuesAToBeGreaterThanB",
            {"column_A": "best_ask", "column_B": "best_bid"},
        ),
        ("ExpectColumnValuesToBeBetween", {"column": "spread_bps", "min_value": 0}),
    ],
}
SUITES["raw_perp_ohlcv"] = SUITES["raw_spot_ohlcv"]


@dataclass(frozen=True)
class SuiteResult:
    """Outcome of one suite run.

    Attributes:
        success: all expectations passed.
        rows: rows validated.
        failures: one dict per failed expectation (type, column(s), unexpected count and examples).
        evaluated: number of expectations run.
    """

    success: bool
    rows: int
    failures: list[dict[str, Any]]
    evaluated: int


def validate_table(table: str, frame: pl.DataFrame) -> SuiteResult:
    """Run the table's expectation suite on a frame with an ephemeral GX context.

    Args:
        table: a key of `SUITES`.
        frame: the whole table.

    Raises:
        KeyError: no suite for `table`.
    """
    if table not in SUITES:
        raise KeyError(f"no expectation suite for table {table!r}; known: {sorted(SUITES)}")
    import great_expectations as gx  # slow import: only where a suite runs
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(f"{table}_source")
    batch_def = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name=f"{table}_suite"))
    for cls_name, kwargs in SUITES[table]:
        suite.add_expectation(getattr(gx.expectations, cls_name)(**kwargs))
    batch = batch_def.get_batch(batch_parameters={"dataframe": frame.to_pandas()})
    result = batch.validate(suite, result_format="SUMMARY")
    failures = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        failures.append(
            {
                "expectation": cfg.type if cfg else "unknown",
                "kwargs": {k: v for k, v in (cfg.kwargs if cfg else {}).items() if k != "batch_id"},
                "unexpected_count": r.result.get("unexpected_count"),
                "examples": [str(x) for x in (r.result.get("partial_unexpected_list") or [])[:5]],
            }
        )
    return SuiteResult(bool(result.success), frame.height, failures, len(result.results))
