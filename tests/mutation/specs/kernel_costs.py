"""Mutations of the kernel's execution costs, borrow, rebalance band and leverage budget
(carry_env/kernel.py: `leg_costs`, `sim_fill_env`, `_book_fills`, the borrow lines of `apply_env`,
`plan_env`). Each is one small bug a reviewer could plausibly miss; the band, minimum-order and
clamp mutations of `env_api.py` and the `max_leverage_t` ones of `pipeline.py` are not repeated.
"""

from __future__ import annotations

from tests.mutation.spec import Mutation

_KERNEL = "carry_env/kernel.py"
_KERNEL_TESTS = "tests/env/test_kernel.py"
_CASH_FLOW_TESTS = "tests/env/test_cash_flows.py"
_COST_TESTS = (_KERNEL_TESTS, _CASH_FLOW_TESTS)

MUTATIONS: list[Mutation] = [
    # ---- fees per leg and maker share ----
    Mutation(
        id="costs-spot-leg-pays-perp-fees",
        path=_KERNEL,
        old="leg_costs(abs(dq_s) * s, sd, spread, cfg[C_SPOT_MAKER], cfg[C_SPOT_TAKER], cfg)",
        new="leg_costs(abs(dq_s) * s, sd, spread, cfg[C_PERP_MAKER], cfg[C_PERP_TAKER], cfg)",
        tests=_COST_TESTS,
        note="the spot leg is charged the perp fee schedule (5 bp taker instead of 10 bp)",
    ),
    Mutation(
        id="costs-perp-maker-taker-swapped",
        path=_KERNEL,
        old="cfg[C_PERP_MAKER], cfg[C_PERP_TAKER], cfg)",
        new="cfg[C_PERP_TAKER], cfg[C_PERP_MAKER], cfg)",
        tests=_COST_TESTS,
        note="the perp leg's maker and taker fees are passed in the wrong order",
    ),
    Mutation(
        id="costs-spot-fee-dropped",
        path=_KERNEL,
        old="as_[b, i, A_FEE] = f1 + f2",
        new="as_[b, i, A_FEE] = f2",
        tests=_COST_TESTS,
        note="the spot leg's fee is computed but never charged",
    ),
    Mutation(
        id="costs-maker-fraction-ignored",
        path=_KERNEL,
        old="    mf = cfg[C_MAKER_FRACTION]\n",
        new="    mf = 0.0\n",
        tests=_COST_TESTS,
        note="maker_fraction is ignored: every order is filled as taker",
    ),
    Mutation(
        id="costs-taker-fee-on-whole-order",
        path=_KERNEL,
        old="fee = mf * notional * maker_fee + taker * taker_fee",
        new="fee = mf * notional * maker_fee + notional * taker_fee",
        tests=_COST_TESTS,
        note="the taker fee is charged on the whole order, the maker share pays both fees",
    ),
    # ---- half-spread ----
    Mutation(
        id="costs-half-spread-on-whole-order",
        path=_KERNEL,
        old="spread_cost = taker * spread_bps * 0.5e-4",
        new="spread_cost = notional * spread_bps * 0.5e-4",
        tests=_COST_TESTS,
        note="the half-spread is charged on the maker share too",
    ),
    Mutation(
        id="costs-full-spread",
        path=_KERNEL,
        old="spread_cost = taker * spread_bps * 0.5e-4",
        new="spread_cost = taker * spread_bps * 1e-4",
        tests=_COST_TESTS,
        note="the full quoted spread is charged instead of half of it",
    ),
    Mutation(
        id="costs-perp-spread-dropped",
        path=_KERNEL,
        old="as_[b, i, A_SPREAD_COST] = c1 + c2",
        new="as_[b, i, A_SPREAD_COST] = c1",
        tests=_COST_TESTS,
        note="the perp leg crosses the spread for free",
    ),
    Mutation(
        id="costs-slippage-info-drops-spread",
        path=_KERNEL,
        old="info[b, K_SLIPPAGE] = spread_cost + impact",
        new="info[b, K_SLIPPAGE] = impact",
        tests=_COST_TESTS,
        note="info's slippage term omits the half-spread (the identity is broken)",
    ),
    # ---- impact and tick ----
    Mutation(
        id="costs-impact-on-whole-order",
        path=_KERNEL,
        old="frac = cfg[C_SLIP_K] * taker / depth",
        new="frac = cfg[C_SLIP_K] * notional / depth",
        tests=_COST_TESTS,
        note="linear impact is sized by the whole order, maker share included",
    ),
    Mutation(
        id="costs-impact-ignores-size",
        path=_KERNEL,
        old="frac = cfg[C_SLIP_K] * taker / depth",
        new="frac = cfg[C_SLIP_K] / depth",
        tests=_COST_TESTS,
        note="the impact fraction does not grow with the order (per-unit instead of per-notional)",
    ),
    Mutation(
        id="costs-sqrt-impact-is-linear",
        path=_KERNEL,
        old="math.sqrt(taker / depth)",
        new="(taker / depth)",
        tests=_COST_TESTS,
        note="slippage_model='sqrt' silently uses the linear law",
    ),
    Mutation(
        id="costs-spot-impact-on-perp-book",
        path=_KERNEL,
        old="f1, c1, m1 = leg_costs(abs(dq_s) * s, sd,",
        new="f1, c1, m1 = leg_costs(abs(dq_s) * s, pd,",
        tests=_COST_TESTS,
        note="the spot leg's impact is measured against the perp book's depth",
    ),
    Mutation(
        id="costs-impact-credited",
        path=_KERNEL,
        old="cost = as_[b, i, A_FEE] + as_[b, i, A_SPREAD_COST] + as_[b, i, A_IMPACT]",
        new="cost = as_[b, i, A_FEE] + as_[b, i, A_SPREAD_COST] - as_[b, i, A_IMPACT]",
        tests=_COST_TESTS,
        note="impact reported in info but credited to cash instead of debited (sign flip)",
    ),
    Mutation(
        id="costs-tick-dropped",
        path=_KERNEL,
        old="impact = taker * (frac + cfg[C_TICK_BPS])",
        new="impact = taker * frac",
        tests=_COST_TESTS,
        note="the fixed one-tick cost per leg is never charged",
    ),
    Mutation(
        id="costs-tick-on-maker-share",
        path=_KERNEL,
        old="impact = taker * (frac + cfg[C_TICK_BPS])",
        new="impact = taker * frac + notional * cfg[C_TICK_BPS]",
        tests=_COST_TESTS,
        note="the tick is charged on passive (maker) fills too",
    ),
    # ---- borrow ----
    Mutation(
        id="costs-coin-borrow-at-usdt-rate",
        path=_KERNEL,
        old="borrow += -qs * s0 * cfg[C_SPOT_BORROW] * dt",
        new="borrow += -qs * s0 * cfg[C_USDT_BORROW] * dt",
        tests=_COST_TESTS,
        note="borrowed coins accrue at the USDT rate (10 %) instead of the coin rate (5 %)",
    ),
    Mutation(
        id="costs-borrow-on-long-spot",
        path=_KERNEL,
        old="and qs < 0.0:",
        new="and qs > 0.0:",
        tests=_COST_TESTS,
        note="coin borrow accrues on long spot holdings instead of on the short leg",
    ),
    Mutation(
        id="costs-usdt-borrow-on-any-cash",
        path=_KERNEL,
        old="if cfg[C_BORROW] > 0.0 and fs[b, F_CASH] < 0.0:",
        new="if cfg[C_BORROW] > 0.0 and fs[b, F_CASH] != 0.0:",
        tests=_COST_TESTS,
        note="USDT interest is charged on positive cash balances too (as a credit or a debit)",
    ),
    Mutation(
        id="costs-borrow-not-debited",
        path=_KERNEL,
        old="fs[b, F_CASH] -= borrow",
        new="fs[b, F_CASH] -= 0.0 * borrow",
        tests=_COST_TESTS,
        note="borrow is reported in info but never leaves cash (identity broken)",
    ),
    # ---- rebalance band ----
    Mutation(
        id="costs-band-on-initial-cash",
        path=_KERNEL,
        old="cfg[C_BAND] * equity",
        new="cfg[C_BAND] * cfg[C_INITIAL_CASH]",
        tests=_COST_TESTS,
        note="the band is a fraction of the starting cash, not of the current equity",
    ),
    Mutation(
        id="costs-band-blocks-closing",
        path=_KERNEL,
        old="dq_p * p, half == 0.0, as_",
        new="dq_p * p, False, as_",
        tests=_COST_TESTS,
        note="flattening a pair smaller than the band is skipped (the position is stuck open)",
    ),
    # ---- leverage budget (max_leverage_t) ----
    Mutation(
        id="costs-leverage-budget-ignores-held-assets",
        path=_KERNEL,
        old="used_hold += gross / maxlev",
        new="used_hold += 0.0 * gross / maxlev",
        tests=_COST_TESTS,
        note="held (NaN-action) positions do not use up the leverage budget",
    ),
    Mutation(
        id="costs-leverage-budget-ignores-max-leverage",
        path=_KERNEL,
        old="used_active += abs(a) * equity * cap / maxlev",
        new="used_active += abs(a) * equity * cap / cap",
        tests=_COST_TESTS,
        note="the budget uses leverage_cap, not max_leverage_t: a volatile market is not clamped",
    ),
]
