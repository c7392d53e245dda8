"""`carry_env.demo`'s table: columns sized from the values, so large figures never run together."""

from __future__ import annotations

import re

from carry_env.demo import EpisodeSummary, format_table


def _row(policy: str, price: float, fees: float) -> EpisodeSummary:
    return EpisodeSummary(
        policy=policy,
        steps=8_760,
        final_equity=1_234_567.891,
        funding=98_765.4,
        price=price,
        fees=fees,
        slippage=12_345.6,
        borrow=7.0,
        liquidation=0.0,
        max_drawdown=0.1234,
        liquidated=False,
        halted_bars=3,
        ended="end of data",
    )


def test_table_columns_stay_apart_past_five_digits() -> None:
    # A year of real BTC: price -723.85 and fees 10,948.86, which v0 printed as "-723.8510,948.86".
    rows = [_row("always long carry", -723.85, 10_948.86), _row("flat", 0.0, 0.0)]
    lines = format_table(rows, initial=100_000.0, days=365.0).splitlines()
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines]
    assert cells[0] == [
        "policy", "equity", "return", "ann.", "funding", "price", "fees", "slippage", "borrow",
        "liq.", "maxDD", "ended",
    ]  # fmt: skip
    assert cells[2] == [
        "always long carry", "1,234,567.89", "1134.57%", "1134.6%", "98,765.40", "-723.85",
        "10,948.86", "12,345.60", "7.00", "0.00", "12.34%", "end of data",
    ]  # fmt: skip
    assert cells[3][:2] == ["flat", "1,234,567.89"]
    # Right-aligned figures end in the same column on every row.
    price_end = lines[2].index("-723.85") + len("-723.85")
    assert lines[3][price_end - 4 : price_end] == "0.00"
    assert len(lines[1]) == len(lines[0]) and set(lines[1]) == {"-"}
