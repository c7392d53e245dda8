"""`lib/training/code_version.py`: a code edit changes the version, a wording edit does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from carry_pipeline.lib.training.code_version import (
    CODE_ROOTS,
    code_version,
    source_fingerprint,
    sources_sha256,
)

SOURCE = '''"""Module docstring."""

FEE = 0.0005
"""Attribute docstring."""


def cost(notional: float) -> float:
    """What a fill costs."""
    return notional * FEE  # taker fee
'''


@pytest.mark.parametrize(
    "edited",
    [
        SOURCE.replace("What a fill costs.", "The fee a fill pays, in USDT."),
        SOURCE.replace("Attribute docstring.", "The taker fee."),
        SOURCE.replace("# taker fee", "# per side"),
        SOURCE.replace("return notional * FEE", "return (notional\n            * FEE)"),
        SOURCE.replace('"""Module docstring."""\n', ""),
    ],
    ids=["function-docstring", "attribute-docstring", "comment", "layout", "no-module-docstring"],
)
def test_an_edit_to_words_or_layout_keeps_the_fingerprint(edited: str) -> None:
    assert edited != SOURCE
    assert source_fingerprint(edited) == source_fingerprint(SOURCE)


@pytest.mark.parametrize(
    "edited",
    [
        SOURCE.replace("FEE = 0.0005", "FEE = 0.0004"),
        SOURCE.replace("notional * FEE", "notional * FEE * 2"),
        SOURCE.replace("-> float:", "-> int:"),
        SOURCE + "\n\ndef rebate() -> float:\n    return 0.0\n",
    ],
    ids=["constant", "expression", "annotation", "new-function"],
)
def test_an_edit_to_the_code_changes_the_fingerprint(edited: str) -> None:
    assert source_fingerprint(edited) != source_fingerprint(SOURCE)


def test_a_file_that_does_not_parse_is_named() -> None:
    with pytest.raises(SyntaxError, match="kernel.py"):
        source_fingerprint("def broken(:\n", "carry_env/kernel.py")


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_version_follows_the_files_under_the_roots(tmp_path: Path) -> None:
    root = _tree(tmp_path / "pkg", {"a.py": SOURCE, "sub/b.py": "X = 1\n"})
    base = sources_sha256([root])
    assert sources_sha256([root]) == base

    (root / "notes.txt").write_text("not code")
    assert sources_sha256([root]) == base  # only .py files count

    (root / "sub" / "b.py").write_text("X = 2\n")
    assert sources_sha256([root]) != base
    (root / "sub" / "b.py").write_text("X = 1\n")
    assert sources_sha256([root]) == base

    (root / "sub" / "c.py").write_text("")
    assert sources_sha256([root]) != base  # a new module
    (root / "sub" / "c.py").unlink()

    (root / "sub" / "b.py").rename(root / "b.py")
    assert sources_sha256([root]) != base  # the same code under another path


def test_library_versions_are_part_of_the_version(tmp_path: Path) -> None:
    root = _tree(tmp_path / "pkg", {"a.py": SOURCE})
    assert sources_sha256([root], ["numpy"]) != sources_sha256([root])
    assert sources_sha256([root], ["numpy"]) != sources_sha256([root], ["torch"])


def test_the_installed_version_covers_the_env_and_the_trainer() -> None:
    names = {p.name for p in CODE_ROOTS}
    assert names == {"carry_env", "training"}
    assert all((p / "__init__.py").is_file() for p in CODE_ROOTS)
    assert (CODE_ROOTS[0] / "kernel.py").is_file() and (CODE_ROOTS[1] / "train.py").is_file()
    version = code_version()
    assert len(version) == 64 and version == code_version()
