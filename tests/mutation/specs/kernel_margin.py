"""Mutations of the kernel's margin, liquidation, mark-price, intrabar-margin (isolated perps, the
isolated spot account, unified), auto-add-margin, bankruptcy and unified-funding code
(carry_env/kernel.py)."""

from __future__ import annotations

from tests.mutation.spec import Mutation

_KERNEL = "carry_env/kernel.py"
_TESTS = ("tests/env/test_kernel.py",)

MUTATIONS: list[Mutation] = [
    Mutation(
        id="margin-unified-funding-not-booked",
        path=_KERNEL,
        old="            fs[b, F_CASH] += var_perp + fund\n",
        new="            fs[b, F_CASH] += var_perp\n",
        tests=("tests/env/test_kernel.py::test_unified_funding_is_booked_to_cash",),
        note="Unified funding reported in info but never booked to cash (identity broken).",
    ),
    Mutation(
        id="margin-liquidation-threshold",
        path=_KERNEL,
        old="    if cfg[C_MARGIN] > 0.0 and not halted1 and worst < 1.0:\n",
        new="    if cfg[C_MARGIN] > 0.0 and not halted1 and worst < 0.4:\n",
        tests=_TESTS,
        note="Liquidation only far below maintenance (ratio 0.5 of the +33 % case survives).",
    ),
    Mutation(
        id="margin-liquidation-fee-dropped",
        path=_KERNEL,
        old="(cfg[C_LIQ_HAIRCUT] + cfg[C_LIQ_FEE])",
        new="(cfg[C_LIQ_HAIRCUT])",
        tests=_TESTS,
        note="The liquidation fee is never charged.",
    ),
    Mutation(
        id="margin-liquidation-haircut-dropped",
        path=_KERNEL,
        old="        cost += abs(q) * s * h\n",
        new="        cost += 0.0 * h\n",
        tests=_TESTS,
        note="Forced spot closes fill at mid (no liquidation haircut on spot).",
    ),
    Mutation(
        id="margin-halt-does-not-block-liquidation",
        path=_KERNEL,
        old="    if cfg[C_MARGIN] > 0.0 and not halted1 and worst < 1.0:\n",
        new="    if cfg[C_MARGIN] > 0.0 and worst < 1.0:\n",
        tests=("tests/env/test_kernel.py::test_no_liquidation_while_halted",),
        note="Liquidations allowed during an exchange halt.",
    ),
    Mutation(
        id="margin-isolated-liquidates-everything",
        path=_KERNEL,
        old="        if as_[b, i, A_PERP] != 0.0 and as_[b, i, A_MR] < 1.0:\n",
        new="        if as_[b, i, A_PERP] != 0.0:\n",
        tests=_TESTS,
        note="Isolated margin closes every perp when one fails (no isolation).",
    ),
    Mutation(
        id="margin-funding-at-last-price",
        path=_KERNEL,
        old="                fund = -qp * mark_price(b, i, t1, mkt, fs, as_, cfg) * rate\n",
        new="                fund = -qp * p1 * rate\n",
        tests=(
            "tests/env/test_kernel.py::test_funding_settles_at_the_mark_price",
            "tests/env/test_real_data.py::test_funding_on_real_8h_bars_settles_at_the_published_mark",
        ),
        note="Funding settles on the last perp price, not the mark (v0).",
    ),
    Mutation(
        id="margin-isolated-ratio-at-last-price",
        path=_KERNEL,
        old="            coll_at_mark = as_[b, i, A_COLL] + as_[b, i, A_PERP] * (m - p)\n",
        new="            coll_at_mark = as_[b, i, A_COLL]\n",
        tests=(
            "tests/env/test_kernel.py::test_a_mark_move_through_maintenance_liquidates_at_the_mark",
        ),
        note="The isolated margin ratio ignores the mark's distance from the last price.",
    ),
    Mutation(
        id="margin-mark-carries-flash-blowout",
        path=_KERNEL,
        old="        return an.flash_mark(b, i, m, fs, as_)\n",
        new="        return an.flash_prices(b, i, m, m, 1.0, 1.0, cfg, fs, as_)[1]\n",
        tests=(
            "tests/env/test_kernel.py::test_a_flash_spike_of_the_last_price_does_not_liquidate",
        ),
        note="During a flash event the mark follows the basis blow-out, as the last price does.",
    ),
    Mutation(
        id="margin-intrabar-ignored",
        path=_KERNEL,
        old="    worst = min(ratio, _bar_ratios(b, t1, mkt, cfg, fs, as_))\n",
        new="    worst = ratio\n",
        tests=(
            "tests/env/test_kernel.py::test_intrabar_high_liquidates_a_short_at_its_liquidation_price",
            "tests/env/test_real_data.py::test_intrabar_lows_liquidate_a_10x_long_perp_on_real_8h_bars",
        ),
        note="Maintenance margin checked at the close only, the bar's high/low ignored (v0).",
    ),
    Mutation(
        id="margin-intrabar-wrong-extreme",
        path=_KERNEL,
        old="        x *= mkt[t, i, M_LOW_R] if q > 0.0 else mkt[t, i, M_HIGH_R]\n",
        new="        x *= mkt[t, i, M_HIGH_R] if q > 0.0 else mkt[t, i, M_LOW_R]\n",
        tests=(
            "tests/env/test_kernel.py::test_intrabar_low_liquidates_a_long_perp_but_not_a_short",
        ),
        note="A long perp is checked at the high and a short at the low (the favourable side).",
    ),
    Mutation(
        id="margin-intrabar-fills-at-close",
        path=_KERNEL,
        old="            x = liquidation_price(q, p, as_[b, i, A_COLL], cfg[C_MMR])\n",
        new="            x = p\n",
        tests=(
            "tests/env/test_kernel.py::test_intrabar_high_liquidates_a_short_at_its_liquidation_price",
        ),
        note="An intrabar liquidation fills at the close, crediting the bar's recovery.",
    ),
    Mutation(
        id="margin-bankruptcy-only-after-liquidation",
        path=_KERNEL,
        old="    if e1 < 0.0:\n",
        new="    if e1 < 0.0 and liquidated:\n",
        tests=("tests/env/test_kernel.py::test_bankruptcy_floors_equity_at_zero",),
        note="Negative equity floored only after a liquidation (margin off or halted: negative).",
    ),
    Mutation(
        id="margin-insurance-as-negative-loss",
        path=_KERNEL,
        old="    return 0.0, max(before, 0.0), max(-before, 0.0)\n",
        new="    return 0.0, before, 0.0\n",
        tests=_TESTS,
        note="A gap through the bankruptcy price is booked as a negative liquidation_loss (a gain"
        " to the trader in the costs) instead of into the insurance_fund term; equity is the same.",
    ),
    Mutation(
        id="margin-auto-add-borrows",
        path=_KERNEL,
        old="min(cash, spot_eq - SPOT_TRANSFER_LEVEL",
        new="min(spot_eq, spot_eq - SPOT_TRANSFER_LEVEL",
        tests=(
            "tests/env/test_kernel.py::test_auto_add_margin_never_borrows",
            "tests/env/test_kernel.py::test_auto_add_margin_too_little_cash_then_intrabar_liquidation",
        ),
        note="Auto-add tops up from the spot account's equity, not its cash: it borrows USDT once"
        " the cash is spent.",
    ),
    Mutation(
        id="margin-auto-add-at-the-close-mark",
        path=_KERNEL,
        old="            x *= _perp_extreme(b, i, t, mkt, as_)\n",
        new="            x *= 1.0\n",
        tests=(
            "tests/env/test_kernel.py::"
            "test_auto_add_margin_restores_the_target_at_the_intrabar_extreme",
        ),
        note="A top-up triggered at the bar's extreme is sized at the close's mark, so the"
        " extreme is left below the target.",
    ),
    Mutation(
        id="margin-unified-intrabar-fills-at-the-extreme",
        path=_KERNEL,
        old="else _unified_crossing(b, t, mkt, cfg, fs, as_)\n",
        new="else 1.0\n",
        tests=(
            "tests/env/test_kernel.py::"
            "test_unified_intrabar_low_liquidates_the_account_where_it_crosses_the_line",
        ),
        note="A unified account breaching only inside the bar is closed at the extremes, past"
        " the line where the venue would have taken it over.",
    ),
    Mutation(
        id="margin-unified-spot-wrong-extreme",
        path=_KERNEL,
        old="    return mkt[t, i, M_SPOT_LOW_R] if as_[b, i, A_SPOT] > 0.0 else"
        " mkt[t, i, M_SPOT_HIGH_R]\n",
        new="    return mkt[t, i, M_SPOT_HIGH_R] if as_[b, i, A_SPOT] > 0.0 else"
        " mkt[t, i, M_SPOT_LOW_R]\n",
        tests=(
            "tests/env/test_kernel.py::"
            "test_unified_intrabar_low_liquidates_the_account_where_it_crosses_the_line",
        ),
        note="Unified margin takes a long spot leg at its high (the favourable side), so a spot"
        " low inside the bar never liquidates.",
    ),
    Mutation(
        id="margin-isolated-spot-intrabar-ignored",
        path=_KERNEL,
        old="        worst = min(worst, spot_eq / (cfg[C_SPOT_MMR] * liab))\n",
        new="        worst = min(worst, np.inf)\n",
        tests=(
            "tests/env/test_kernel.py::"
            "test_intrabar_spot_high_liquidates_the_spot_account_of_a_reverse_carry",
            "tests/env/test_kernel.py::"
            "test_intrabar_spot_low_liquidates_a_spot_account_on_borrowed_usdt",
            "tests/env/test_real_data.py::"
            "test_spot_extremes_liquidate_the_isolated_spot_account_on_real_8h_bars",
        ),
        note="The isolated spot margin account is checked at the close only: a short spot leg's"
        " high (or a long one's low on borrowed USDT) inside the bar never liquidates it.",
    ),
    Mutation(
        id="margin-isolated-spot-intrabar-fills-at-the-extreme",
        path=_KERNEL,
        old="        lam = f0 / (f0 - f1)\n",
        new="        lam = 1.0\n",
        tests=(
            "tests/env/test_kernel.py::"
            "test_intrabar_spot_high_liquidates_the_spot_account_of_a_reverse_carry",
            "tests/env/test_kernel.py::"
            "test_intrabar_spot_low_liquidates_a_spot_account_on_borrowed_usdt",
        ),
        note="An isolated spot account breaching only inside the bar closes its spot legs at"
        " their extremes, past the line where the venue would have taken it over.",
    ),
]
