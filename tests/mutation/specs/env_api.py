"""Curated mutations of the env's action handling (issue 7): the rebalance band and minimum order
on the hedged pair, the leverage-limit clamp, the reverse-carry flag, the action shape check and
the discrete masks (single and batched). Each was applied by hand and fails one of its tests."""

from __future__ import annotations

from tests.mutation.spec import Mutation

KERNEL = "carry_env/kernel.py"
ENV = "carry_env/env.py"
VECTOR = "carry_env/vector.py"
KERNEL_TESTS = "tests/env/test_kernel.py"
ENV_TESTS = "tests/env/test_env.py"
DISCRETE_TESTS = "tests/env/test_discrete.py"

MUTATIONS: list[Mutation] = [
    Mutation(
        id="env_api-band-per-leg",
        path=KERNEL,
        old="            as_[b, i, A_DQ_S] = dq_s\n            as_[b, i, A_DQ_P] = dq_p\n",
        new="            as_[b, i, A_DQ_S] = dq_s if abs(dq_s) * s >= threshold or half == 0.0"
        " else 0.0\n"
        "            as_[b, i, A_DQ_P] = dq_p if abs(dq_p) * p >= threshold or half == 0.0"
        " else 0.0\n",
        tests=(
            f"{KERNEL_TESTS}::test_rebalance_band_applies_to_the_hedged_pair",
            "tests/env/test_real_data.py::test_rebalances_on_real_data_trade_both_legs_or_neither",
        ),
        note="v0's legging: the band is applied to each leg apart, so a basis move trades one leg",
    ),
    Mutation(
        id="env_api-band-ignored",
        path=KERNEL,
        old="    return max(abs(dn_s), abs(dn_p)) >= threshold\n",
        new="    return max(abs(dn_s), abs(dn_p)) > 0.0\n",
        tests=(f"{KERNEL_TESTS}::test_rebalance_band_skips_small_changes",),
        note="every change trades, however small: the band and the minimum order do nothing",
    ),
    Mutation(
        id="env_api-min-order-ignored",
        path=KERNEL,
        old="    threshold = max(cfg[C_MIN_ORDER], cfg[C_BAND] * equity)\n",
        new="    threshold = cfg[C_BAND] * equity\n",
        tests=(f"{KERNEL_TESTS}::test_rebalance_band_applies_to_the_hedged_pair",),
        note="orders below the exchange minimum notional are sent",
    ),
    Mutation(
        id="env_api-leverage-clamp-skipped",
        path=KERNEL,
        old="        scale = max(budget, 0.0) / used_active\n",
        new="        scale = 1.0\n",
        tests=(
            f"{KERNEL_TESTS}::test_leverage_clamp",
            f"{KERNEL_TESTS}::test_leverage_budget_is_shared_across_assets",
        ),
        note="the leverage budget is flagged as exceeded but the sizes are not scaled down",
    ),
    Mutation(
        id="env_api-reverse-carry-flag-ignored",
        path=KERNEL,
        old="    if a < 0.0 and cfg[C_ALLOW_REVERSE] == 0.0:\n",
        new="    if a < 0.0 and cfg[C_ALLOW_REVERSE] < 0.0:\n",
        tests=(
            f"{KERNEL_TESTS}::test_reverse_carry_disabled_acts_as_flat",
            f"{ENV_TESTS}::test_discrete_masks_reverse_carry_and_leverage",
        ),
        note="allow_reverse_carry=False still shorts spot on borrowed coins",
    ),
    Mutation(
        id="env_api-action-broadcast",
        path=ENV,
        old="    if a.shape != shape:\n",
        new="    if a.ndim > len(shape):\n",
        tests=(
            f"{ENV_TESTS}::test_action_of_another_shape_is_an_error",
            f"{ENV_TESTS}::test_batched_action_of_another_shape_is_an_error",
        ),
        note="v0: a length-1 action is broadcast to every asset instead of rejected",
    ),
    Mutation(
        id="env_api-masks-ignore-held-assets",
        path=KERNEL,
        old="            budget = equity - used_hold\n",
        new="            budget = equity\n",
        tests=(
            f"{DISCRETE_TESTS}::test_masks_are_exact_for_every_action_of_every_visited_state",
            f"{ENV_TESTS}::test_discrete_masks_reverse_carry_and_leverage",
        ),
        note="masks forget the leverage the other assets hold: allowed actions get clamped",
    ),
    Mutation(
        id="env_api-masks-ignore-halt",
        path=KERNEL,
        old="        if is_[b, I_HALT] > 0 or equity <= 0.0:\n            continue\n",
        new="        if equity <= 0.0:\n            continue\n",
        tests=(
            f"{KERNEL_TESTS}::test_halt_masks_every_action_but_hold",
            f"{DISCRETE_TESTS}::test_masks_are_exact_for_every_action_of_every_visited_state",
        ),
        note="orders are allowed while the exchange is halted (nothing fills)",
    ),
    Mutation(
        id="env_api-masks-too-strict",
        path=KERNEL,
        old="                out[b, 1 + i * nw + c] = not (used_active > budget"
        " and used_active > 0.0)\n",
        new="                out[b, 1 + i * nw + c] = used_active < budget\n",
        tests=(f"{DISCRETE_TESTS}::test_masks_are_exact_for_every_action_of_every_visited_state",),
        note="flatten (weight 0) is masked once the budget is used up: a feasible action masked",
    ),
    Mutation(
        id="env_api-sb3-masks-whole-batch-per-env",
        path="carry_env/sb3.py",
        old="            return [rows[i] for i in self._get_indices(indices)]\n",
        new="            return [rows for _ in self._get_indices(indices)]\n",
        tests=(f"{DISCRETE_TESTS}::test_batched_masks_reach_sb3_one_row_per_env",),
        note="v0: env_method('action_masks') repeats the whole batch's masks once per env",
    ),
]
