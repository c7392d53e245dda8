"""Cash flows the kernel tests leave open: the maker share's half-spread and impact, and borrow on
the price a short spot leg was held at while prices move (setup as in `test_kernel.py`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from carry_env import CarryTradeEnv, EnvConfig

from .conftest import BAR_YEARS, FRICTIONLESS, make_frame


def _env(config: EnvConfig, spot=(100.0,) * 6, **frame_kw) -> CarryTradeEnv:  # noqa: ANN001
    env = CarryTradeEnv(make_frame(list(spot), **frame_kw), config)
    env.reset(seed=0)
    return env


def test_half_spread_only_on_the_taker_share() -> None:
    # maker_fraction 0.5: 75,000 of the 150,000 traded is taker; half of 2 bp on it is 7.5.
    config = dataclasses.replace(FRICTIONLESS, spread=True, maker_fraction=0.5)
    _, _, _, _, info = _env(config, spread_bps=2.0).step(np.array([1.0]))
    assert info["spread_cost"] == pytest.approx(7.5)
    assert info["equity"] == pytest.approx(100_000 - 7.5)


def test_impact_only_on_the_taker_share() -> None:
    # Per leg 37,500 of taker notional: linear impact 5e-4 * 37,500 / 1,000,000 = 1.875e-5 plus
    # the 0.1 bp tick, of 37,500: 0.703125 + 0.375 = 1.078125; two legs.
    config = dataclasses.replace(FRICTIONLESS, slippage=True, maker_fraction=0.5)
    _, _, _, _, info = _env(config, depth=1_000_000.0).step(np.array([1.0]))
    assert info["impact_cost"] == pytest.approx(2 * 1.078125)


def test_borrow_accrues_on_the_price_the_short_was_held_at() -> None:
    # Reverse carry with spot 100 -> 120 -> 90: the first bar borrows 750 coins held at 100, the
    # second the coins held from 120 (not the 90 the bar ends at).
    config = dataclasses.replace(FRICTIONLESS, borrow=True)
    env = _env(config, spot=(100.0, 120.0, 90.0, 90.0, 90.0, 90.0))
    _, _, _, _, first = env.step(np.array([-1.0]))
    assert first["borrow_cost"] == pytest.approx(750 * 100.0 * 0.05 * BAR_YEARS)
    _, _, _, _, second = env.step(np.array([-1.0]))
    held = -second["spot_qty"][0]
    assert held > 0
    assert second["borrow_cost"] == pytest.approx(held * 120.0 * 0.05 * BAR_YEARS)
