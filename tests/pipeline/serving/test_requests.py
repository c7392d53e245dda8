"""The request checks of `lib/serving/requests.py`: each bad input named in its message, good input
passed through unchanged, and the answer's per-symbol selection."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from carry_pipeline.lib.serving.requests import (
    Decision,
    RequestError,
    bar_index,
    check_observation,
    iso,
    payload,
    select_symbols,
)

NAMES = ["BTC:funding_bp", "BTC:spot_exposure", "ETH:funding_bp", "ETH:spot_exposure", "cash"]
SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT")
T0 = datetime(2024, 1, 1, tzinfo=UTC)
HOURLY = np.array([(T0 + timedelta(hours=h)).timestamp() * 1e9 for h in range(5)], dtype=np.int64)


def test_a_good_observation_comes_back_as_float32_values() -> None:
    values = [1.5, -0.25, 0.0, 1e6, -1e6]  # the bounds themselves are inside
    out = check_observation(values, NAMES)
    assert out.dtype == np.float32 and out.tolist() == values


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # one value short: both counts named
        ([1.0] * 4, "observation has 4 values; the champion expects 5"),
        # NaN at index 2: the index, the entry's name and the value
        ([0.0, 0.0, math.nan, 0.0, 1.0], "1 non-finite value: [2] (ETH:funding_bp) = nan"),
        # +inf and -inf both listed
        ([math.inf, 0.0, 0.0, -math.inf, 1.0], "[0] (BTC:funding_bp) = inf, [3] "),
        # just beyond the env's clip bound
        (
            [0.0, 1e6 + 1, 0.0, 0.0, 1.0],
            "outside the env's bounds +-1e+06: [1] (BTC:spot_exposure)",
        ),
    ],
)
def test_a_bad_observation_is_named(values: list[float], expected: str) -> None:
    with pytest.raises(RequestError) as err:
        check_observation(values, NAMES)
    assert expected in str(err.value)


def test_many_bad_values_are_counted_beyond_the_first_five() -> None:
    names = [f"x{i}" for i in range(8)]
    with pytest.raises(RequestError, match=r"8 non-finite values: .*\[4\] \(x4\) = nan and 3 more"):
        check_observation([math.nan] * 8, names)


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (None, SYMBOLS),  # all, in the champion's order
        (["ETH/USDT:USDT"], ("ETH/USDT:USDT",)),
        # the champion's order, duplicates once
        (["ETH/USDT:USDT", "BTC/USDT:USDT", "ETH/USDT:USDT"], SYMBOLS),
    ],
)
def test_symbols_select_assets(requested: list[str] | None, expected: tuple[str, ...]) -> None:
    assert select_symbols(requested, SYMBOLS) == expected


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ([], "symbols is empty"),
        (["DOGE/USDT:USDT"], "unknown symbol 'DOGE/USDT:USDT'; the champion trades ['BTC/USDT"),
        # a base alone is not a symbol; both unknown ones are named
        (["BTC", "SOL/USDT:USDT"], "unknown symbols ['BTC', 'SOL/USDT:USDT']"),
    ],
)
def test_bad_symbols_are_named(requested: list[str], expected: str) -> None:
    with pytest.raises(RequestError) as err:
        select_symbols(requested, SYMBOLS)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (T0, 0),
        (T0 + timedelta(hours=4), 4),  # the last bar
        # the same instant in another zone
        (datetime(2024, 1, 1, 5, tzinfo=timezone(timedelta(hours=3))), 2),
    ],
)
def test_a_bar_time_gives_its_index(when: datetime, expected: int) -> None:
    assert bar_index(HOURLY, when, 3600) == expected


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        # between two bars: the stored range and bar size named
        (
            T0 + timedelta(minutes=30),
            "is not a bar of the stored features: 5 bars of 1 h from "
            "2024-01-01T00:00:00Z to 2024-01-01T04:00:00Z",
        ),  # fmt: skip
        (T0 + timedelta(hours=5), "ts 2024-01-01T05:00:00Z is not a bar"),  # after the last
        (T0 - timedelta(hours=1), "ts 2023-12-31T23:00:00Z is not a bar"),  # before the first
        (datetime(2024, 1, 1, 2), "has no time zone"),  # naive
    ],
)
def test_a_time_that_is_not_a_bar_is_named(when: datetime, expected: str) -> None:
    with pytest.raises(RequestError) as err:
        bar_index(HOURLY, when, 3600)
    assert expected in str(err.value)


def test_the_payload_keys_per_asset_numbers_by_symbol() -> None:
    decision = Decision(
        champion_id="run1:meta_controller",
        bar=4,
        ts_ns=int(HOURLY[4]),
        symbols=SYMBOLS,
        observation=np.arange(5, dtype=np.float32),
        action=np.array([0.25, -0.5]),
        expert_outputs={"short_term": [0.1, 0.2], "long_term": [0.3, 0.4]},
        gating_weights={"short_term": 0.5, "long_term": 0.25, "flat": 0.25},
        anomaly_multiplier=[0.9, 0.8],
    )
    both = payload(decision, SYMBOLS, with_observation=True)
    assert both["ts"] == iso(int(HOURLY[4])) == "2024-01-01T04:00:00Z"
    assert both["action"] == {"BTC/USDT:USDT": 0.25, "ETH/USDT:USDT": -0.5}
    assert both["observation"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    eth = payload(decision, ("ETH/USDT:USDT",), with_observation=False)
    assert eth["action"] == {"ETH/USDT:USDT": -0.5}
    assert eth["expert_outputs"] == {
        "short_term": {"ETH/USDT:USDT": 0.2},
        "long_term": {"ETH/USDT:USDT": 0.4},
    }
    assert eth["anomaly_multiplier"] == {"ETH/USDT:USDT": 0.8}
    assert eth["gating_weights"] == decision.gating_weights and "observation" not in eth
