"""The expert observation: each bar sees the latest window ending at or before it (never a later
one), exactly as stored, beside the env's own entries; terminal observations sit at the last bar."""

from __future__ import annotations

import numpy as np
import pytest

from carry_env.config import EnvConfig
from carry_env.engine import observation_names
from carry_pipeline.lib.training.observation import (
    ExposureBand,
    ObservationBuilder,
    ObservationSpec,
    WindowSet,
    current_bars,
    leverage_fit,
    make_expert_env,
    map_actions,
    reference_carry,
    window_index,
)
from carry_pipeline.lib.training.rollout import rollout

from .conftest import carry_frame, fold_inputs

H_NS = 3_600 * 10**9
H_US = 3_600 * 10**6


@pytest.mark.parametrize(
    ("bars_h", "ends_h", "expected"),
    [
        # a bar before the first window end sees none
        ([0, 4], [5, 6], [-1, -1]),
        # a window ending exactly at the bar is visible; one ending an hour later is not
        ([5, 6, 7], [5, 6, 8], [0, 1, 1]),
        # a gap in the window ends (none end at 10..19): the bars in the gap keep the last one
        ([9, 10, 15, 19, 20, 25], [9, 20], [0, 0, 0, 0, 1, 1]),
    ],
)
def test_window_index_is_the_latest_end_at_or_before_the_bar(bars_h, ends_h, expected) -> None:
    got = window_index(np.array(bars_h) * H_NS, np.array(ends_h) * H_US)
    assert got.tolist() == expected


def _gappy_windows(lookback: int = 3) -> WindowSet:
    # Rows 0..11 at hours with two gaps (no rows at 5-6 and 10-13); value = 1000 r + 10 s + f, so
    # every gathered number says which row, symbol and feature it came from.
    hours = np.array([0, 1, 2, 3, 4, 7, 8, 9, 14, 15, 16, 17])
    r, s, f = np.meshgrid(np.arange(12), np.arange(2), np.arange(3), indexing="ij")
    return WindowSet(
        values=(1000.0 * r + 10.0 * s + f).astype(np.float32),
        ts_us=hours * H_US,
        lookback=lookback,
        first_window_row=lookback - 1,
        symbols=("BTC", "ETH"),
        features=("f_a", "f_b", "f_c"),
    )


def _builder(
    windows: WindowSet, spec: ObservationSpec, bar_hours: np.ndarray
) -> ObservationBuilder:
    names = observation_names(windows.symbols, windows.features, 0)
    return ObservationBuilder(windows, spec, bar_hours * H_NS, names, windows.symbols)


def test_every_bar_gets_the_stored_window_that_ended_last_before_it() -> None:
    windows = _gappy_windows()
    bars = np.arange(0, 20)  # hourly bars, through both gaps and past the last row
    builder = _builder(windows, ObservationSpec(), bars)
    env_obs = np.zeros((bars.size, len(builder.env_names)), dtype=np.float32)
    obs = builder.build(env_obs, np.arange(bars.size))
    ends_h = windows.end_ts_us // H_US
    for t, hour in enumerate(bars):
        visible = np.flatnonzero(ends_h <= hour)
        if visible.size == 0:  # hours 0 and 1: no 3-bar window has ended
            assert obs["global"][t, -2] == 0 and not obs["window"][t].any()
            continue
        i = visible[-1]
        assert ends_h[i] <= hour and (i + 1 == ends_h.size or ends_h[i + 1] > hour)
        stored = windows.window(i).transpose(1, 0, 2)  # (S, lookback, F)
        np.testing.assert_array_equal(obs["window"][t], stored)
        assert obs["global"][t, -2] == 1.0
        assert obs["global"][t, -1] == pytest.approx((hour - ends_h[i]) / 24.0)
    # The row each window ends at never lies after the bar: its value's row digit says so.
    end_rows = obs["window"][:, 0, -1, 0] // 1000
    row_hours = windows.ts_us[end_rows.astype(int)] // H_US
    assert (row_hours[2:] <= bars[2:]).all()


def test_history_stacks_consecutive_windows_thinned_by_the_stride() -> None:
    windows = _gappy_windows(lookback=2)
    spec = ObservationSpec(history_windows=3, history_stride=2, window_features=("f_b",))
    bars = np.array([17, 9, 8])
    obs = _builder(windows, spec, bars).build(np.zeros((3, 60), np.float32), np.arange(3))
    # 3 windows x 2 bars = 6 rows of history, every 2nd kept: rows r-4, r-2, r, feature f_b only.
    assert obs["window"].shape == (3, 2, 3, 1)
    np.testing.assert_array_equal(
        obs["window"][0, 1, :, 0], [7011, 9011, 11011]
    )  # hour 17 = row 11
    np.testing.assert_array_equal(obs["window"][1, 0, :, 0], [3001, 5001, 7001])  # hour 9 = row 7
    # hour 8 = row 6: its history starts at row 6 - 4 = 2 >= 0, so it is valid
    np.testing.assert_array_equal(obs["window"][2, 0, :, 0], [2001, 4001, 6001])
    short = _builder(windows, spec, np.array([3])).build(np.zeros((1, 60), np.float32), [0])
    assert short["global"][0, -2] == 0 and not short["window"].any()  # row 3 - 4 < 0


def test_a_batch_is_gathered_into_its_own_contiguous_float32_array() -> None:
    # Hours 0-1 see no window (zeros); hour 9 sees rows 5-7 (its rows are hours 7, 8, 9). Every
    # feature, then a subset (gathered from a copy of those features, not from the windows).
    windows = _gappy_windows()
    stored = windows.values.copy()
    bars = np.array([0, 5, 1, 9])
    for spec in (ObservationSpec(), ObservationSpec(window_features=("f_c", "f_a"))):
        builder = _builder(windows, spec, bars)
        obs = builder.build(np.zeros((4, len(builder.env_names)), np.float32), np.arange(4))
        win = obs["window"]
        assert win.dtype == np.float32 and win.flags.c_contiguous and win.flags.owndata
        assert not np.shares_memory(win, windows.values)
        assert not win[[0, 2]].any() and win[[1, 3]].all()
        np.testing.assert_array_equal(
            win[3], windows.values[5:8, :, builder.feature_idx].swapaxes(0, 1)
        )
        win[:] = -1.0  # the caller may write into it: the stored windows stay as they were
        np.testing.assert_array_equal(windows.values, stored)


def test_unknown_feature_prefix_fails_naming_the_fold() -> None:
    with pytest.raises(ValueError, match=r"fold -1: no window feature starts with \['f_sent_'\]"):
        _builder(_gappy_windows(), ObservationSpec(window_features=("f_sent_",)), np.arange(3))


def test_the_wrapped_batched_env_shows_the_current_and_the_terminal_bar_windows(tmp_path) -> None:
    inputs = fold_inputs(carry_frame(120, ("BTC", "ETH")), tmp_path, train_bars=80, test_bars=20)
    windows, market = inputs.train_windows, inputs.train_market
    config = EnvConfig(random_start=True, episode_length=5, anomalies=False)
    env = make_expert_env(market, windows, ObservationSpec(), config, 4)
    env.seed(3)
    obs = env.reset()
    names = env._base.observation_names
    rng = np.random.default_rng(0)
    ends_ns = windows.end_ts_us * 1000
    terminals = 0
    for _ in range(12):
        bars = current_bars(env)
        for b, t in enumerate(bars):
            i = np.searchsorted(ends_ns, market.ts[t], side="right") - 1
            if i >= 0:
                np.testing.assert_array_equal(
                    obs["window"][b], windows.window(i).transpose(1, 0, 2)
                )
        raw = env._raw
        np.testing.assert_array_equal(
            obs["asset"][:, 1, 0], raw[:, names.index("ETH:spot_exposure")]
        )
        obs, _, dones, infos = env.step(rng.uniform(-1, 1, (4, 2)))
        for b in np.flatnonzero(dones):
            # The episode ran 5 bars from its start: the terminal bar is the one after the last
            # step's bar, and its window is the one ending at or before it.
            t_end = bars[b] + 1
            i = np.searchsorted(ends_ns, market.ts[t_end], side="right") - 1
            term = infos[b]["terminal_observation"]
            np.testing.assert_array_equal(term["window"], windows.window(i).transpose(1, 0, 2))
            terminals += 1
    assert terminals >= 4


@pytest.mark.parametrize(
    ("held", "sma", "expected"),
    [
        (0.0, 0.3, 0.0),  # flat inside the band stays flat
        (0.0, 0.6, 1.0),  # above entry: long
        (0.0, -0.6, -1.0),  # below -entry: reverse
        (0.4, 0.3, 1.0),  # a held long is kept inside the band ...
        (0.4, 0.0, 1.0),  # ... down to exit (0 bp) ...
        (0.4, -0.1, 0.0),  # ... and closed below it
        (0.4, -0.6, -1.0),  # ... or reversed below -entry
        (-0.4, -0.3, -1.0),  # a held reverse is kept inside the band
        (-0.4, 0.1, 0.0),  # and closed above -exit
        (-0.4, 0.6, 1.0),
        (0.0, float("nan"), 0.0),  # no funding mean yet: flat
    ],
)
def test_the_reference_book_keeps_a_held_position_through_the_band(held, sma, expected) -> None:
    names = ["cash", "A:funding_sma3_bp", "A:spot_exposure", "B:funding_sma3_bp", "B:spot_exposure"]
    # Asset B mirrors A (held and funding negated), so each case also checks the reverse side.
    obs = np.array([[1.0, sma, held, -sma, -held]])
    out = reference_carry(obs, names)
    assert out[0, 0] == expected
    assert out[0, 1] == (-expected if expected else 0.0)


def test_the_reference_book_needs_exit_below_entry() -> None:
    with pytest.raises(ValueError, match=r"exit_bp=0.5 must be below entry_bp=0.5"):
        reference_carry(np.zeros((1, 2)), ["A:funding_sma3_bp", "A:spot_exposure"], 0.5, 0.5)


def test_the_reference_book_pairs_each_asset_with_its_own_held_leg() -> None:
    # Names grouped by field, not by asset: A is held long, B is flat, both at 0.3 bp.
    names = ["A:funding_sma3_bp", "B:funding_sma3_bp", "B:spot_exposure", "A:spot_exposure"]
    obs = np.array([[0.3, 0.3, 0.0, 0.4]])
    np.testing.assert_array_equal(reference_carry(obs, names), [[1.0, 0.0]])


BAND_NAMES = ["cash", "A:spot_exposure", "A:max_leverage", "A:perp_margin_buffer"]
CAP = 2.0  # the held weight 2 * spot_exposure / cap is then the spot exposure itself


@pytest.mark.parametrize(
    ("held", "target", "buffer", "expected"),
    [
        (0.0, 0.8, 1.0, 0.8),  # flat -> enters
        (1.0, 0.0, 1.0, 0.0),  # a cut to flat passes at once
        (1.0, 0.95, 1.0, None),  # a 5 % cut holds (cut band 10 %)
        (1.0, 0.85, 1.0, 0.85),  # a 15 % cut trades
        (0.5, 0.6, 1.0, None),  # adding 0.1 holds: under 25 % of the 0.6 target
        (0.5, 0.7, 1.0, 0.7),  # adding 0.2 trades: over 25 % of 0.7
        (1.0, -1.0, 1.0, -1.0),  # a reversal always trades
        (-1.0, -0.95, 1.0, None),  # the reverse side holds the same way
        (-1.0, -0.5, 1.0, -0.5),  # and cuts the same way
        (0.0, 0.0, 1.0, None),  # flat stays flat without an order
        (1.0, 0.95, 0.5, 0.95),  # a thin perp margin re-trades the held pair
    ],
)
def test_the_exposure_band_cuts_fast_and_adds_slowly(held, target, buffer, expected) -> None:
    obs = np.array([[1.0, held * CAP / 2, 100.0, buffer]])
    out = ExposureBand(cut=0.1, add=0.25).actions(np.array([[target]]), obs, BAND_NAMES, CAP)
    if expected is None:
        assert np.isnan(out[0, 0])
    else:
        assert out[0, 0] == pytest.approx(expected)


def test_the_exposure_band_compares_the_held_book_with_the_clamped_target() -> None:
    # Two assets at target 1 each under a leverage limit that halves them: the env would trade
    # 0.5 each, so a book held at 0.5 stays (against the unclamped 1 it would re-trade every bar).
    names = ["A:spot_exposure", "A:max_leverage", "A:perp_margin_buffer",
             "B:spot_exposure", "B:max_leverage", "B:perp_margin_buffer"]  # fmt: skip
    obs = np.array([[0.5, 2.0, 1.0, 0.0, 2.0, 1.0]])  # cap 2, max leverage 2: 2x over
    out = ExposureBand().actions(np.array([[1.0, 1.0]]), obs, names, CAP)
    assert np.isnan(out[0, 0]) and out[0, 1] == pytest.approx(0.5)


@pytest.mark.parametrize("field", ["cut", "add", "margin_floor"])
def test_a_band_outside_zero_one_is_refused(field: str) -> None:
    with pytest.raises(ValueError, match=rf"{field}=1.0 must be in \[0, 1\)"):
        ExposureBand(**{field: 1.0})


def test_weights_pass_through_the_band_untouched() -> None:
    actions = np.array([[0.3, -0.2]])
    out = map_actions("weights", actions, np.zeros((1, 3)), ["a", "b", "c"],
                      leverage_cap=CAP, band=ExposureBand())  # fmt: skip
    np.testing.assert_array_equal(out, actions)


def test_a_wiggling_multiplier_does_not_re_trade_the_book(tmp_path) -> None:
    # Funding high enough that the reference book is long carry; the multiplier moves between
    # 0.9 and 1.0 every bar, as a trained expert's does in calm markets. Without the band every
    # move past the env's 2 % rebalance band re-trades both legs; with it the book is bought once.
    frame = carry_frame(200, ("BTC", "ETH"), funding_bp=10.0)
    inputs = fold_inputs(frame, tmp_path, train_bars=100, test_bars=99)
    config = EnvConfig(anomalies=False)
    rng = np.random.default_rng(3)

    def wiggle(obs, first, masks):  # noqa: ANN001, ANN202
        return 2.0 * rng.uniform(0.9, 1.0, (1, 2)) - 1.0  # multiplier in [0.9, 1]

    def run(band: ExposureBand | None) -> float:
        rng.bit_generator.state = np.random.default_rng(3).bit_generator.state
        out = rollout(wiggle, inputs.market, inputs.train_windows, ObservationSpec(), config,
                      start=10, end=99, output="exposure", band=band)  # fmt: skip
        return out.costs

    # What entering once costs: a band so wide that nothing after the entry trades.
    entry = run(ExposureBand(cut=0.99, add=0.99))
    unbanded, banded = run(None), run(ExposureBand())
    assert unbanded - entry > 0.3 * entry  # the churn is real: re-trades cost a third of the entry
    assert banded - entry < 0.05 * (unbanded - entry)


def test_leverage_fit_scales_a_row_together_and_a_zero_limit_holds_nothing() -> None:
    w = np.array([[1.0, 1.0], [0.2, 0.0], [0.5, 0.0]])
    lev = np.array([[2.0, 2.0], [2.0, 2.0], [0.0, 2.0]])
    out = leverage_fit(w, lev, 2.0)  # row 0 uses 2x its budget; row 1 0.2x; row 2 a zero limit
    np.testing.assert_allclose(out, [[0.5, 0.5], [0.2, 0.0], [0.0, 0.0]])
