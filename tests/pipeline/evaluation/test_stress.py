"""Stress scenarios: each frame has the shape its docstring promises, the real crises carry the
real funding prints, and the baselines' results match what the margin rules give by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from carry_env import EnvConfig, MarketData
from carry_pipeline.lib.evaluation import stress as st
from carry_pipeline.lib.evaluation.baselines import Flat, LongCarry, SpotBuyAndHold

T0 = datetime(2024, 1, 1, tzinfo=UTC)
AT = T0 + timedelta(hours=30)  # not a settlement bar (prints every 8 h from T0)
BTC = "BTC/USDT:USDT"
SUPERVIK = Path(__file__).resolve().parents[4] / "shared/data/real/supervik_funding"


def _base(n: int = 72, symbols: tuple[str, ...] = (BTC,)) -> pl.DataFrame:
    # Hourly bars, spot 100 x (1 + 0.1 i) per symbol i, a 10 bp perp premium, 1 bp every 8 h.
    parts = []
    for i, sym in enumerate(symbols):
        spot = [100.0 * (1 + 0.1 * i) * (1 + 0.001 * np.sin(b)) for b in range(n)]
        parts.append(
            pl.DataFrame(
                {
                    "ts": [T0 + timedelta(hours=b) for b in range(n)],
                    "symbol": [sym] * n,
                    "spot_price": spot,
                    "perp_price": [s * 1.001 for s in spot],
                    "funding_rate": [1e-4 if b % 8 == 0 else None for b in range(n)],
                },
                schema_overrides={"funding_rate": pl.Float64},
            )
        )
    return pl.concat(parts)


def _col(sc: st.Scenario, col: str, sym: str = BTC) -> np.ndarray:
    return sc.frame.filter(pl.col("symbol") == sym).sort("ts").get_column(col).to_numpy()


I_AT = 30


def test_one_bar_crash_drops_spot_and_perp_20_percent_in_that_bar_only() -> None:
    base = _base(symbols=(BTC, "ETH/USDT:USDT"))
    sc = st.one_bar_crash(base, AT)
    for sym in (BTC, "ETH/USDT:USDT"):
        s, p = _col(sc, "spot_price", sym), _col(sc, "perp_price", sym)
        s0 = _col(st.Scenario("b", base, AT, AT), "spot_price", sym)
        assert s[I_AT] / s[I_AT - 1] == pytest.approx(0.8, rel=1e-12)
        assert np.array_equal(s[:I_AT], s0[:I_AT])  # nothing before the crash changes
        np.testing.assert_allclose(s[I_AT + 1 :] / s[I_AT:-1], s0[I_AT + 1 :] / s0[I_AT:-1])
        np.testing.assert_allclose(p / s, 1.001)  # the basis is kept
    assert sc.worst_bar == AT


def test_deepening_crash_falls_every_bar_to_its_trough_at_the_end_of_the_day() -> None:
    sc = st.deepening_crash(_base(), AT, drop=0.2, hours=24)
    s = _col(sc, "spot_price")
    window = s[I_AT - 1 : I_AT + 24]
    assert np.all(np.diff(window) < 0)  # deepens every bar
    assert window[-1] / window[0] == pytest.approx(0.8, rel=1e-12)  # -20 % at the trough
    assert int(np.argmin(s[I_AT - 1 : I_AT + 24])) == 24
    assert sc.worst_bar == AT + timedelta(hours=23)


def test_funding_flip_prints_minus_30_bp_at_exactly_one_day_of_settlements() -> None:
    base = _base()
    sc = st.funding_flip(base, AT, rate=-0.003, hours=24)
    f = _col(sc, "funding_rate")
    flipped = np.flatnonzero(f == -0.003)
    # Settlements every 8 h at bars 0, 8, ...: the day from bar 30 holds bars 32, 40 and 48.
    assert flipped.tolist() == [32, 40, 48]
    other = np.setdiff1d(np.flatnonzero(~np.isnan(f)), flipped)
    assert np.all(f[other] == 1e-4)
    with pytest.raises(ValueError, match="no funding settlement"):
        st.funding_flip(base, AT, hours=1)  # bar 30 alone settles nothing


def test_basis_blowout_widens_to_its_peak_then_reverts_to_the_base_basis() -> None:
    sc = st.basis_blowout(_base(), AT, peak=0.05, widen_hours=6, revert_hours=18)
    basis = _col(sc, "perp_price") / _col(sc, "spot_price") / 1.001 - 1.0
    assert np.all(np.diff(basis[I_AT - 1 : I_AT + 6]) > 0)  # widens for 6 bars
    assert basis[I_AT + 5] == pytest.approx(0.05) and int(np.argmax(basis)) == I_AT + 5
    np.testing.assert_allclose(basis[I_AT + 23 :], 0.0, atol=1e-12)  # back after 18 more
    assert sc.worst_bar == AT + timedelta(hours=5)


def test_scenarios_reject_a_start_off_the_grid_and_partial_bars() -> None:
    with pytest.raises(ValueError, match="is not a bar after the first"):
        st.one_bar_crash(_base(), T0)
    with pytest.raises(ValueError, match="hours=1.5 h is not a whole number"):
        st.deepening_crash(_base(), AT, hours=1.5)


def test_real_crisis_frames_carry_the_real_binance_prints() -> None:
    if not SUPERVIK.exists():
        pytest.skip("../shared/data is not beside the repo")
    for name in st.CRISIS_ANCHORS:
        sc = st.real_crisis(name)
        for coin in ("BTC", "ETH"):
            src = pl.read_csv(
                SUPERVIK / f"{coin}-USDT_binance_2020-01-01_2024-01-01_funding_history.csv"
            ).select(
                ts=(pl.col("Date").str.to_datetime("%Y-%m-%d %H:%M:%S%.f") - timedelta(hours=3))
                .dt.truncate("1s")
                .dt.replace_time_zone("UTC"),
                rate=pl.col("Funding Rate"),
            )
            got = sc.frame.filter(
                (pl.col("symbol") == f"{coin}/USDT:USDT") & pl.col("funding_rate").is_not_null()
            ).select(pl.col("ts").dt.cast_time_unit("us"), "funding_rate")
            first, last = sc.frame.get_column("ts").min(), sc.frame.get_column("ts").max()
            want = src.filter((pl.col("ts") >= first) & (pl.col("ts") <= last))
            joined = want.with_columns(pl.col("ts").dt.cast_time_unit("us")).join(
                got, on="ts", how="full", coalesce=True
            )
            assert joined.height == got.height == want.height  # every print, nothing else
            np.testing.assert_array_equal(joined["rate"], joined["funding_rate"])
    # The -30 bp floor Binance printed at 08:00 UTC on 13 March 2020 is among them.
    march = st.real_crisis("real_2020_03").frame
    row = march.filter(
        (pl.col("symbol") == BTC) & (pl.col("ts") == datetime(2020, 3, 13, 8, tzinfo=UTC))
    )
    assert row["funding_rate"].item() == -0.003


def test_real_crisis_paths_pass_through_their_anchor_points_hourly() -> None:
    sc = st.real_crisis("real_2021_05")
    ts = _col(sc, "ts")
    s = _col(sc, "spot_price")
    assert len(ts) == 25  # 00:00 19 May .. 00:00 20 May, hourly
    assert s[0] == pytest.approx(42849.78) and s[13] == pytest.approx(30000.0)
    assert s[-1] == pytest.approx(36690.09) and int(np.argmin(s)) == 13
    assert sc.worst_bar == datetime(2021, 5, 19, 13, tzinfo=UTC)


CFG = st.stress_config()


def _crash_row(drop: float) -> dict:
    out = st.run_stress({"long_carry": LongCarry()}, [st.one_bar_crash(_base(), AT, drop)], CFG)
    return out.row(0, named=True)


def test_long_carry_margin_boundary_matches_the_hand_computed_squeeze() -> None:
    # Long carry at weight 1, default config: spot and short perp of 0.75 E each, the perp's
    # isolated collateral C = 0.75 E / perp_leverage (3) = 0.25 E. A one-bar move x of both legs:
    # a crash (x < 0) gains on the short perp: the margin only grows, no liquidation at any size.
    # A squeeze fails the perp when C - 0.75 E x < mmr * 0.75 E (1 + x), i.e.
    # x > (1/3 - 0.005) / (1 + 0.005) = 32.67 %.
    cfg = EnvConfig()
    x_star = (1 / cfg.perp_leverage - cfg.maintenance_margin_rate) / (
        1 + cfg.maintenance_margin_rate
    )
    assert x_star == pytest.approx(0.32670, abs=1e-5)
    crash = _crash_row(0.2)
    assert crash["liquidations"] == 0 and not crash["terminated"]
    # Hedged: the crash itself moves equity by the basis only; costs of entry plus a de-levering
    # trade (the leverage limit falls as realised vol jumps) stay under 0.5 % of equity.
    assert crash["max_drawdown"] < 0.005
    below, above = _crash_row(-(x_star - 0.005)), _crash_row(-(x_star + 0.005))
    assert below["liquidations"] == 0
    assert above["liquidations"] == 1 and above["liquidated"] and above["terminated"]


def test_run_stress_rows_for_the_baselines_are_sane() -> None:
    base = _base()
    scs = [st.deepening_crash(base, AT), st.exchange_halt(base, AT), st.feed_outage(base, AT),
           st.funding_flip(base, AT)]  # fmt: skip
    policies = {"flat": Flat(), "long_carry": LongCarry(), "spot": SpotBuyAndHold()}
    out = st.run_stress(policies, scs, CFG, exposure={"long_carry": lambda o, a: 1.0})
    assert out.height == 12 and out.columns == list(st.STRESS_SCHEMA)
    r = {(row["scenario"], row["policy"]): row for row in out.iter_rows(named=True)}
    # Flat: no drawdown, no funding, whatever happens.
    for sc in scs:
        assert r[(sc.name, "flat")]["max_drawdown"] == 0.0
        assert r[(sc.name, "flat")]["funding_paid"] == 0.0
    # Spot buy-and-hold takes the crash from its peak (the base wiggles 0.1 % a bar, so the
    # peak is a little above the pre-crash bar): 1 - trough / peak, entry costs aside (~11 bp).
    s = _col(scs[0], "spot_price")[: I_AT + 24]
    by_hand = 1.0 - s.min() / s.max()
    assert by_hand == pytest.approx(0.2, abs=0.002)
    assert r[("deepening_crash", "spot")]["max_drawdown"] == pytest.approx(by_hand, abs=0.0012)
    # The halt and the outage are the env's own: 6 halted bars, 4 stale bars.
    assert r[("exchange_halt", "long_carry")]["halted_bars"] == 6
    assert r[("feed_outage", "long_carry")]["stale_bars"] == 4
    assert r[("deepening_crash", "long_carry")]["halted_bars"] == 0
    # Long carry pays three prints of 30 bp on 0.75 E of short perp: 3 x 0.003 x 75,000 = 675,
    # less the 1 bp it receives on the other 5 prints it holds through (bars 8..64).
    paid = r[("funding_flip", "long_carry")]["funding_paid"]
    assert paid == pytest.approx(675.0 - 5 * 7.5, rel=0.02)
    # A constant multiplier never cuts; the row says False, not null.
    assert r[("deepening_crash", "long_carry")]["exposure_cut"] is False
    assert r[("deepening_crash", "flat")]["exposure_cut"] is None


def test_no_fill_happens_during_a_scheduled_halt() -> None:
    # Flat until the halt starts, then try to enter every bar: the first fill is after the halt.
    class EnterAt:
        def __init__(self, bar: int) -> None:
            self.bar, self.t = bar, 0

        def reset(self, env) -> None:  # noqa: ANN001
            self.t = 0

        def predict(self, obs, state=None, episode_start=None, deterministic=True):  # noqa: ANN001
            a = np.array([1.0 if self.t >= self.bar else 0.0])
            self.t += 1
            return a, state

    sc = st.exchange_halt(_base(), AT, hours=6)
    env = st.CarryTradeEnv(sc.frame, CFG)
    result, _ = st.run_scenario(env, sc, EnterAt(I_AT), name="enter")
    fills = np.flatnonzero(result.fills[:, 0, 0] != 0)
    assert fills[0] == I_AT + 6  # bars 30..35 halted; the order fills at bar 36


def test_exposure_cut_before_the_worst_bar() -> None:
    bars = [0, 1, 2, 3, 4, 5]
    # shock at 2, worst at 5: decisions at 2, 3, 4 count; the one before (bar 1) is the reference.
    assert st.exposure_cut_before(bars, [1, 1, 1, 0.5, 1, 1], 2, 5) == (True, 0.5)
    assert st.exposure_cut_before(bars, [1, 1, 1, 1, 1, 0.0], 2, 5) == (False, 1.0)  # too late
    assert st.exposure_cut_before(bars, [1, 1, 0.8, 0.8, 0.8, 1], 2, 5) == (False, 0.8)
    cut, low = st.exposure_cut_before(bars, [1] * 6, 3, 3)  # one-bar shock: nothing to judge
    assert cut is None and np.isnan(low)


def test_run_stress_refuses_scheduled_halts_with_anomalies_off() -> None:
    sc = st.exchange_halt(_base(), AT)
    cfg = EnvConfig(anomalies=False)
    with pytest.raises(ValueError, match="'exchange_halt' schedules halts"):
        st.run_stress({"flat": Flat()}, [sc], cfg)


KLINES = Path(__file__).resolve().parents[4] / "shared/data/real/kctanglog_spot_1h"


def test_btc_crisis_anchors_are_binance_klines() -> None:
    # Each BTC anchor is a Binance 1 h kline value: a day's open (kline at 00:00), an intraday
    # extreme (the low or high of the kline opening at that hour) or a day's close (the close of
    # the kline opening at 23:00 the day before the anchor).
    files = sorted(KLINES.glob("*.csv"))
    if not files:
        pytest.skip("../shared/data is not beside the repo")
    k = pl.read_csv(files[0], try_parse_dates=True).with_columns(
        pl.col("datetime").dt.replace_time_zone("UTC")
    )
    by_open = {r["datetime"]: r for r in k.iter_rows(named=True)}
    for name, anchors in st.CRISIS_ANCHORS.items():
        for when, price in anchors[BTC]:
            t = datetime.fromisoformat(when).replace(tzinfo=UTC)
            here, before = by_open[t], by_open[t - timedelta(hours=1)]
            values = {here["open"], here["low"], here["high"], before["close"]}
            assert price in values, f"{name} {when}: {price} is none of {values}"


def test_scenarios_move_the_mark_and_the_bar_extremes_with_the_perp() -> None:
    # The pipeline's market frame carries both legs' high/low and the mark: a shock that moved
    # only `perp_price` / `spot_price` would leave the close outside its own bar (the env rejects
    # that frame) and the mark at the pre-shock level. Hand values: perp high/low 0.2 % around its
    # close, spot high/low 0.3 % around its close, mark = close.
    base = _base(symbols=(BTC, "ETH/USDT:USDT")).with_columns(
        perp_high=pl.col("perp_price") * 1.002,
        perp_low=pl.col("perp_price") * 0.998,
        spot_high=pl.col("spot_price") * 1.003,
        spot_low=pl.col("spot_price") * 0.997,
        mark_price=pl.col("perp_price"),
    )
    for sc in st.injected_scenarios(base, AT):
        for sym in (BTC, "ETH/USDT:USDT"):
            p = _col(sc, "perp_price", sym)
            np.testing.assert_allclose(_col(sc, "perp_high", sym) / p, 1.002, rtol=1e-12)
            np.testing.assert_allclose(_col(sc, "perp_low", sym) / p, 0.998, rtol=1e-12)
            np.testing.assert_allclose(_col(sc, "mark_price", sym), p, rtol=1e-12)
            s = _col(sc, "spot_price", sym)
            np.testing.assert_allclose(_col(sc, "spot_high", sym) / s, 1.003, rtol=1e-12)
            np.testing.assert_allclose(_col(sc, "spot_low", sym) / s, 0.997, rtol=1e-12)
        MarketData.from_frame(sc.frame)  # a valid env frame
