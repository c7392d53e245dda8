"""The mutation harness itself: anchors, spec collection, outcome parsing (no mutant is run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.mutation import run
from tests.mutation.spec import Mutation

ROOT = Path(__file__).resolve().parents[2]


def _m(old: str, new: str, path: str = "x.py") -> Mutation:
    return Mutation(id="t-x", path=path, old=old, new=new, tests=("tests/x.py",))


def test_apply_replaces_the_single_anchor() -> None:
    assert run.apply_mutation("a = 1\nb = 2\n", _m("b = 2", "b = 3")) == "a = 1\nb = 3\n"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("a = 1\n", "not found"),  # the code moved: an error, never a silent pass
        ("b = 2\nb = 2\n", "found 2 times"),  # ambiguous: which one would be mutated?
    ],
)
def test_apply_refuses_missing_or_ambiguous_anchor(source: str, message: str) -> None:
    with pytest.raises(run.AnchorError, match=message):
        run.apply_mutation(source, _m("b = 2", "b = 3"))


def test_apply_refuses_a_no_op() -> None:
    with pytest.raises(run.AnchorError, match="unchanged"):
        run.apply_mutation("b = 2\n", _m("b = 2", "b = 2"))


def test_every_spec_anchor_matches_exactly_once() -> None:
    # A refactor that moves mutated code must update its spec in the same change.
    mutations = run.collect_mutations()
    assert len(mutations) >= 30
    for m in mutations:
        assert (ROOT / m.path).is_file(), f"{m.id}: {m.path} does not exist"
        source = (ROOT / m.path).read_text()
        run.apply_mutation(source, m)
        for t in m.tests:
            assert (ROOT / t.split("::")[0]).exists(), f"{m.id}: test path {t} does not exist"


def test_failing_tests_reads_the_short_summary() -> None:
    out = (
        "..F\n=== short test summary info ===\n"
        "FAILED tests/env/test_kernel.py::test_fee - assert 1 == 2\n"
        "ERROR tests/env/test_env.py::test_x\n1 failed, 2 passed\n"
    )
    assert run.failing_tests(out) == (
        "tests/env/test_kernel.py::test_fee",
        "tests/env/test_env.py::test_x",
    )


def test_equivalent_mutation_is_not_run_nor_counted(tmp_path: Path) -> None:
    m = Mutation(id="t-eq", path="x.py", old="a", new="b", tests=(), equivalent="same output")
    outcome = run.run_one(tmp_path, m, timeout_s=1.0)
    assert outcome.status == "equivalent"
    assert "0/0 caught" in run.score_line([outcome])


def test_survivor_and_catch_are_told_apart(tmp_path: Path) -> None:
    # A tiny project whose test pins `value() == 1`: the mutant 1 -> 2 is caught, 1 -> 1.0 survives.
    (tmp_path / "mod.py").write_text("def value():\n    return 1\n")
    (tmp_path / "test_mod.py").write_text(
        "import mod\n\n\ndef test_value():\n    assert mod.value() == 1\n"
    )
    caught = Mutation(
        id="t-c", path="mod.py", old="return 1", new="return 2", tests=("test_mod.py",)
    )
    survives = Mutation(
        id="t-s", path="mod.py", old="return 1", new="return 1.0", tests=("test_mod.py",)
    )
    root, run.ROOT = run.ROOT, tmp_path
    try:
        first = run.run_one(tmp_path, caught, timeout_s=60.0)
        second = run.run_one(tmp_path, survives, timeout_s=60.0)
    finally:
        run.ROOT = root
    assert first.status == "caught" and first.caught_by == ("test_mod.py::test_value",)
    assert second.status == "SURVIVED"
    assert (tmp_path / "mod.py").read_text() == "def value():\n    return 1\n"  # restored
    assert "1/2 caught" in run.score_line([first, second])
