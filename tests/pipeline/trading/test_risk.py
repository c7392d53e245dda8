"""`RiskManager`: each rule with the figures that trip it, and the state machine's exits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from carry_env.feeds import Orders
from carry_pipeline.lib.trading.risk import BarView, RiskConfig, RiskManager, RiskState

SYMS = ("BTC/USDT:USDT", "ETH/USDT:USDT")
DAY = 86_400_000_000_000
HOUR = DAY // 24


def view(
    bar: int,
    equity: float,
    *,
    day: int = 0,
    spot=(100.0, 10.0),
    stale=(False, False),
    halted: bool = False,
    fault: str = "",
    margin_ratio: float = math.inf,
) -> BarView:
    return BarView(
        bar,
        day * DAY + bar * HOUR,
        equity,
        margin_ratio,
        np.array(spot),
        np.array(stale),
        halted,
        fault,
    )


def orders(spot_qty, perp_qty, price=(100.0, 10.0), depth=1e6) -> Orders:
    a = lambda v: np.array([v], dtype=float)  # noqa: E731
    return Orders(
        a(spot_qty), a(perp_qty), a(price), a(price), a([depth] * 2), a([depth] * 2), a([1.0, 1.0])
    )


def manager(**kw) -> RiskManager:
    return RiskManager(RiskConfig(**kw), SYMS)


FLAT = (np.zeros(2), np.zeros(2))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_leverage": 0.0}, "max_leverage"),
        ({"daily_loss_limit": 1.5}, "daily_loss_limit"),
        ({"max_losing_bars": 2.5}, "max_losing_bars"),
        ({"sharp_move": math.nan}, "sharp_move"),
        ({"max_notional_per_asset_usd": "1e5"}, "max_notional_per_asset_usd"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"invalid RiskConfig: {field}="):
        RiskConfig(**kwargs)


def test_orders_within_limits_pass() -> None:
    m = manager()
    m.assess(view(0, 100_000.0))
    scale, recs = m.check_orders(orders([500.0, 0.0], [-500.0, 0.0]), 100_000.0, *FLAT)
    assert scale.tolist() == [1.0, 1.0]
    assert [(r.kind, r.symbol) for r in recs] == [("order_allowed", SYMS[0])]


def test_per_asset_notional_cap_scales_both_legs() -> None:
    # 1,000 BTC coins at 100 = 100,000 USDT per leg against a 60,000 cap: scale 0.6.
    m = manager(max_notional_per_asset_usd=60_000.0)
    m.assess(view(0, 100_000.0))
    scale, recs = m.check_orders(orders([1000.0, 0.0], [-1000.0, 0.0]), 100_000.0, *FLAT)
    assert scale[0] == pytest.approx(0.6)
    assert recs[0].kind == "order_scaled" and recs[0].rule == "max_notional_per_asset"
    assert recs[0].figures["cap"] == 60_000.0


def test_leverage_cap_scales_the_adding_orders_together() -> None:
    # Gross after = 2 legs x (100,000 + 50,000) = 300,000 on 100,000 equity; cap 1.5x = 150,000.
    m = manager(max_leverage=1.5, max_notional_per_asset_usd=1e6, max_total_notional_usd=1e7)
    m.assess(view(0, 100_000.0))
    scale, recs = m.check_orders(orders([1000.0, 5000.0], [-1000.0, -5000.0]), 100_000.0, *FLAT)
    assert scale == pytest.approx([0.5, 0.5], rel=1e-9)
    assert {r.rule for r in recs} == {"max_leverage"}


def test_order_larger_than_its_share_of_depth_is_cut() -> None:
    # 40,000 USDT against 100,000 depth with at most 25 %: scale 25,000 / 40,000.
    m = manager()
    m.assess(view(0, 100_000.0))
    scale, recs = m.check_orders(orders([400.0, 0.0], [-400.0, 0.0], depth=1e5), 1e5, *FLAT)
    assert scale[0] == pytest.approx(0.625)
    assert recs[0].rule == "max_depth_fraction"


def test_stale_feed_denies_new_exposure_but_lets_a_close_through() -> None:
    m = manager()
    m.assess(view(0, 100_000.0, stale=(True, False)))
    scale, recs = m.check_orders(orders([100.0, 10.0], [-100.0, -10.0]), 1e5, *FLAT)
    assert scale.tolist() == [0.0, 1.0]
    assert (recs[0].kind, recs[0].rule) == ("order_denied", "feed_stale")
    # Closing a held BTC pair on the same stale bar is allowed.
    held = (np.array([100.0, 0.0]), np.array([-100.0, 0.0]))
    scale, recs = m.check_orders(orders([-100.0, 0.0], [100.0, 0.0]), 1e5, *held)
    assert scale[0] == 1.0 and recs[0].reason == "reduces exposure"


def test_halted_venue_faulty_feed_and_thin_margin_deny_new_exposure() -> None:
    for v, rule in (
        (view(0, 1e5, halted=True), "feed_halted"),
        (view(0, 1e5, fault="TimeoutError: poll"), "feed_fault"),
        (view(0, 1e5, margin_ratio=1.1), "min_margin_buffer"),  # buffer 0.09 < 0.2
    ):
        m = manager()
        m.assess(v)
        scale, recs = m.check_orders(orders([10.0, 0.0], [-10.0, 0.0]), 1e5, *FLAT)
        assert scale[0] == 0.0 and recs[0].rule == rule


def test_daily_loss_kill_switch_flattens_until_the_next_utc_day() -> None:
    m = manager(daily_loss_limit=0.02, max_losing_bars=100)
    m.assess(view(0, 100_000.0))
    assert m.assess(view(1, 98_500.0)) == []  # -1.5 %: still trading
    (rec,) = m.assess(view(2, 97_900.0))  # -2.1 % of the day's open
    assert (rec.kind, rec.rule, rec.state) == ("state_change", "daily_loss", RiskState.HALTED)
    assert rec.figures["loss"] == pytest.approx(0.021)
    assert m.action_override(np.array([0.7, -0.2])).tolist() == [0.0, 0.0]
    scale, _ = m.check_orders(orders([10.0, 0.0], [-10.0, 0.0]), 97_900.0, *FLAT)
    assert scale[0] == 0.0  # no new trades
    assert m.assess(view(23, 99_000.0)) == []  # later the same day: still halted
    assert m.state is RiskState.HALTED
    (rec,) = m.assess(view(0, 99_000.0, day=1))  # 00:00 UTC the next day
    assert (rec.state, rec.rule) == (RiskState.NORMAL, "daily_loss")
    assert m.action_override(np.array([0.7, -0.2])).tolist() == [0.7, -0.2]


def test_manual_reset_ends_a_kill_switch_halt() -> None:
    m = manager(daily_loss_limit=0.02)
    m.assess(view(0, 100_000.0))
    m.assess(view(1, 97_000.0))
    assert m.state is RiskState.HALTED
    (rec,) = m.manual_reset(1, "operator checked the book")
    assert rec.state is RiskState.NORMAL
    assert m.assess(view(2, 96_900.0)) == []  # re-based: -0.1 % of 97,000 does not trip again


def test_circuit_breaker_after_consecutive_losing_bars_and_its_cooldown() -> None:
    m = manager(max_losing_bars=3, breaker_cooldown_bars=2, daily_loss_limit=0.5)
    eq = [100_000.0, 99_990.0, 99_980.0]
    for b, e in enumerate(eq):
        assert m.assess(view(b, e)) == []
    (rec,) = m.assess(view(3, 99_970.0))  # third losing bar in a row
    assert (rec.rule, rec.state, rec.figures["losing_bars"]) == ("circuit_breaker", "REDUCING", 3)
    scale, _ = m.check_orders(orders([10.0, 0.0], [-10.0, 0.0]), 99_970.0, *FLAT)
    assert scale[0] == 0.0  # REDUCING: adding denied
    assert m.assess(view(4, 99_980.0)) == []  # a winning bar: cooldown 2 -> 1
    (rec,) = m.assess(view(5, 99_990.0))
    assert rec.state is RiskState.NORMAL


def test_circuit_breaker_on_a_sharp_move() -> None:
    m = manager(sharp_move=0.05)
    m.assess(view(0, 1e5, spot=(100.0, 10.0)))
    (rec,) = m.assess(view(1, 1e5, spot=(100.0, 10.6)))  # ETH +5.8 % log return
    assert rec.state is RiskState.REDUCING
    assert rec.figures["move"] == pytest.approx(math.log(1.06))


def test_max_drawdown_halts_and_survives_the_day_roll() -> None:
    m = manager(max_drawdown=0.1, daily_loss_limit=0.5, max_losing_bars=100)
    m.assess(view(0, 100_000.0))
    m.assess(view(1, 120_000.0))
    (rec,) = m.assess(view(2, 107_000.0))  # 10.8 % below the 120,000 peak
    assert (rec.rule, rec.state) == ("max_drawdown", RiskState.HALTED)
    assert m.assess(view(0, 107_000.0, day=1)) == []
    assert m.state is RiskState.HALTED


def test_emergency_flatten_flag_file(tmp_path) -> None:
    flag = tmp_path / "FLATTEN"
    m = manager(flatten_flag_path=str(flag))
    assert m.assess(view(0, 1e5)) == []
    flag.touch()
    (rec,) = m.assess(view(1, 1e5))
    assert (rec.rule, rec.state) == ("emergency_flatten", RiskState.HALTED)
    assert m.action_override(np.array([1.0, 1.0])).tolist() == [0.0, 0.0]
    flag.unlink()
    m.assess(view(2, 1e5))
    assert m.state is RiskState.HALTED  # latched until a person resets it
    m.manual_reset(2, "flag cleared")
    assert m.state is RiskState.NORMAL


def test_snapshot_round_trip_keeps_the_latches() -> None:
    m = manager(daily_loss_limit=0.02)
    m.assess(view(0, 100_000.0))
    m.assess(view(1, 97_000.0))
    other = manager(daily_loss_limit=0.02)
    other.restore(m.snapshot())
    assert other.state is RiskState.HALTED and other.snapshot() == m.snapshot()
