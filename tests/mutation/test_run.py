"""The mutation harness itself: anchors, spec collection, selection, scoring (no mutant is run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.mutation import run
from tests.mutation.spec import Mutation


def _mutation(old: str = "a + b", new: str = "a - b", path: str = "m.py", **kw: str) -> Mutation:
    return Mutation(id=kw.get("id", "t-op"), path=path, old=old, new=new, tests=("tests/x.py",))


def test_apply_replaces_the_single_anchor() -> None:
    assert run.apply_mutation("x = a + b\n", _mutation()) == "x = a - b\n"


def test_apply_refuses_a_missing_anchor() -> None:
    with pytest.raises(run.AnchorError, match="missing from m.py"):
        run.apply_mutation("x = a * b\n", _mutation())


def test_apply_refuses_an_ambiguous_anchor() -> None:
    with pytest.raises(run.AnchorError, match="found 2 times"):
        run.apply_mutation("x = a + b\ny = a + b\n", _mutation())


def test_apply_refuses_a_no_op_mutant() -> None:
    with pytest.raises(run.AnchorError, match="equals"):
        run.apply_mutation("x = a + b\n", _mutation(new="a + b"))


def test_check_anchors_names_missing_files_and_bad_anchors(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("x = a + b\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "x.py").write_text("")
    good = _mutation(id="good")
    missing_file = _mutation(id="nofile", path="gone.py")
    bad = _mutation(id="bad", old="a * b")
    errors = run.check_anchors([good, missing_file, bad], root=tmp_path)
    assert len(errors) == 2
    assert errors[0].startswith("nofile: file gone.py does not exist")
    assert errors[1].startswith("bad: anchor")
    no_test = Mutation("t-nt", "m.py", "a + b", "a - b", ("tests/gone.py::test_x",))
    assert run.check_anchors([no_test], root=tmp_path) == [
        "t-nt: test path tests/gone.py::test_x does not exist"
    ]


def _fake_specs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, modules: dict[str, str]) -> str:
    pkg_dir = tmp_path / "fakespecs"
    pkg_dir.mkdir()
    (pkg_dir / "__init__.py").write_text("")
    for name, body in modules.items():
        (pkg_dir / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    for key in [k for k in sys.modules if k.startswith("fakespecs")]:
        monkeypatch.delitem(sys.modules, key)
    return "fakespecs"


SPEC = (
    "from tests.mutation.spec import Mutation\n"
    "MUTATIONS = [Mutation('{id}', 'p.py', 'o', 'n', ('t',))]\n"
)


def test_collect_imports_every_spec_module_in_name_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pkg = _fake_specs(
        monkeypatch, tmp_path, {"b": SPEC.format(id="b-1"), "a": SPEC.format(id="a-1")}
    )
    assert [m.id for m in run.collect_mutations(pkg)] == ["a-1", "b-1"]


def test_collect_refuses_duplicate_ids(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pkg = _fake_specs(monkeypatch, tmp_path, {"a": SPEC.format(id="x"), "b": SPEC.format(id="x")})
    with pytest.raises(ValueError, match="duplicate mutation id 'x'"):
        run.collect_mutations(pkg)


def test_collect_refuses_a_module_without_mutations(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pkg = _fake_specs(monkeypatch, tmp_path, {"a": "X = 1\n"})
    with pytest.raises(ValueError, match="has no MUTATIONS list"):
        run.collect_mutations(pkg)


def test_the_real_specs_collect_with_unique_ids_and_sound_anchors() -> None:
    mutations = run.collect_mutations()
    assert len({m.id for m in mutations}) == len(mutations)
    assert run.check_anchors(mutations) == []
    assert all(m.tests for m in mutations)


def test_select_rejects_unknown_ids() -> None:
    with pytest.raises(ValueError, match="unknown mutation id"):
        run.select([_mutation(id="a")], ["zz"])
    assert [m.id for m in run.select([_mutation(id="a"), _mutation(id="b")], ["b"])] == ["b"]


def test_failing_nodes_reads_the_short_summary() -> None:
    out = "..F\nFAILED tests/a.py::test_x - assert 1 == 2\nERROR tests/b.py::test_y\n1 failed\n"
    assert run.failing_nodes(out) == ("tests/a.py::test_x", "tests/b.py::test_y")


def test_score_skips_equivalent_and_counts_survivors() -> None:
    m = _mutation()
    outcomes = [
        run.Outcome(m, "CAUGHT", ("t",), 1.0),
        run.Outcome(m, "SURVIVED", (), 1.0),
        run.Outcome(m, "EQUIVALENT", ("same",), 0.0),
        run.Outcome(m, "TIMEOUT", ("timed out",), 9.0),
    ]
    assert run.score(outcomes) == (2, 3)


def test_run_one_restores_the_file_and_reports_survivor(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("x = a + b\n")
    (tmp_path / "test_nothing.py").write_text("def test_ok():\n    assert True\n")
    mutation = Mutation("t-op", "m.py", "a + b", "a - b", ("test_nothing.py",))
    outcome = run.run_one(mutation, tmp_path)
    assert outcome.status == "SURVIVED"
    assert (tmp_path / "m.py").read_text() == "x = a + b\n"


def test_run_one_names_the_failing_test(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def f(a, b):\n    return a + b\n")
    (tmp_path / "test_m.py").write_text(
        "from m import f\n\ndef test_f():\n    assert f(2, 1) == 3\n"
    )
    mutation = Mutation("t-op", "m.py", "a + b", "a - b", ("test_m.py",))
    outcome = run.run_one(mutation, tmp_path)
    assert outcome.status == "CAUGHT"
    assert outcome.caught_by == ("test_m.py::test_f",)
    assert (tmp_path / "m.py").read_text() == "def f(a, b):\n    return a + b\n"


def test_main_lists_without_running(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--list"]) == 0
    assert capsys.readouterr().out.count("\t") == 2 * len(run.collect_mutations())
