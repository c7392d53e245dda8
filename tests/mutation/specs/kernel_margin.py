"""Mutations of the kernel's margin, liquidation and unified-funding code (carry_env/kernel.py)."""

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
        old="    if cfg[C_MARGIN] > 0.0 and not halted1 and ratio < 1.0:\n",
        new="    if cfg[C_MARGIN] > 0.0 and not halted1 and ratio < 0.4:\n",
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
        old="    if cfg[C_MARGIN] > 0.0 and not halted1 and ratio < 1.0:\n",
        new="    if cfg[C_MARGIN] > 0.0 and ratio < 1.0:\n",
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
        id="margin-insurance-as-negative-loss",
        path=_KERNEL,
        old="    return 0.0, max(before, 0.0), max(-before, 0.0)\n",
        new="    return 0.0, before, 0.0\n",
        tests=_TESTS,
        note="A gap through the bankruptcy price is booked as a negative liquidation_loss (a gain"
        " to the trader in the costs) instead of into the insurance_fund term; equity is the same.",
    ),
]
