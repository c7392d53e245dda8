"""Per-bar series the kernel reads: hand-computed windows, the funding schedule, time encodings."""

from __future__ import annotations

import numpy as np
import pytest

from carry_env.derive import (
    hours_to_next_funding,
    lag_log_return,
    last_rates,
    realised_vol,
    time_encodings,
    trailing_mean,
)

HOUR_NS = 3_600 * 10**9


def test_trailing_mean_expands_then_slides() -> None:
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    # window 2: [1], [1, 2], [2, 3], [3, 4]
    np.testing.assert_allclose(trailing_mean(x, 2)[:, 0], [1.0, 1.5, 2.5, 3.5])


def test_lag_log_return() -> None:
    x = np.array([[100.0], [110.0], [121.0]])
    # lag 1: log(1) at the start, then log(1.1) twice
    np.testing.assert_allclose(lag_log_return(x, 1)[:, 0], [0.0, np.log(1.1), np.log(1.1)])


def test_realised_vol_matches_a_hand_computation() -> None:
    # Returns +1 %, -1 %, +1 % (log): population std over a window of 3 returns, annualised with 4
    # bars a year: std = sqrt(mean(r^2) - mean(r)^2).
    r = np.log(np.array([1.01, 1 / 1.01, 1.01]))
    spot = 100.0 * np.exp(np.concatenate([[0.0], np.cumsum(r)]))[:, None]
    vol = realised_vol(spot, window=3, bars_per_year=4.0, prior=0.5)
    expected = np.sqrt((np.mean(r**2) - np.mean(r) ** 2) * 4.0)
    assert vol[0, 0] == 0.5 and vol[1, 0] == 0.5  # fewer than two returns: the prior
    assert vol[3, 0] == pytest.approx(expected)


def test_hours_to_next_funding_with_variable_intervals() -> None:
    # Hourly bars; settlements at 0 h, 8 h (8 h interval), 12 h (4 h) and 13 h (1 h); past the last
    # one the last interval (1 h) repeats.
    ts = np.arange(16, dtype=np.int64) * HOUR_NS
    funding = np.full((16, 1), np.nan)
    funding[[0, 8, 12, 13], 0] = 0.0001
    hours = hours_to_next_funding(ts, funding)[:, 0]
    np.testing.assert_allclose(hours[:9], [8, 7, 6, 5, 4, 3, 2, 1, 4])
    np.testing.assert_allclose(hours[9:], [3, 2, 1, 1, 1, 1, 1])


def test_last_rates_are_known_only_from_settlement() -> None:
    funding = np.array([[np.nan], [0.0001], [np.nan], [-0.0002], [0.0003]])
    r = last_rates(funding)[:, 0]
    np.testing.assert_allclose(r[0], [0, 0, 0])  # nothing settled yet
    np.testing.assert_allclose(r[2], [0.0001, 0, 0])
    np.testing.assert_allclose(r[4], [0.0003, -0.0002, 0.0001])


def test_time_encodings() -> None:
    # 1970-01-05 06:00 UTC was a Monday at 06:00: hour angle pi/2, day-of-week angle 0.
    ts = np.array([(4 * 24 + 6) * HOUR_NS], dtype=np.int64)
    np.testing.assert_allclose(time_encodings(ts)[0], [1.0, 0.0, 0.0, 1.0], atol=1e-12)
