"""The version of the code a training ran, for `models.registry` and the reuse key (no Dagster).

A saved model may stand in for a retrain only if the retrain would run the same code
(`lib.training.reuse`). `code_version()` is a sha256 over:

- every `.py` file of the packages a training executes: `carry_env` (the env's dynamics, costs,
  reward) and `carry_pipeline.lib.training` (observations, cadence, algorithms, meta-controller),
  each as its syntax tree without docstrings, comments or line numbers, so an edit to the words
  or the layout keeps the version and an edit to the code changes it;
- the installed versions of the libraries whose numerics the weights depend on (`LIBRARIES`).

It is computed once per process (about 0.1 s here).
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import carry_env
import carry_pipeline.lib.training as training_package

CODE_ROOTS: tuple[Path, ...] = (
    Path(carry_env.__file__).parent,
    Path(training_package.__file__).parent,
)
"""Folders whose Python sources are part of the version."""
LIBRARIES: tuple[str, ...] = (
    "numpy",
    "numba",
    "gymnasium",
    "torch",
    "stable-baselines3",
    "sb3-contrib",
)
"""Distributions whose installed version is part of the version."""


class _DropDocstrings(ast.NodeTransformer):
    """Removes every statement that is a bare string (docstrings, attribute docstrings)."""

    def visit_Expr(self, node: ast.Expr) -> ast.AST | None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return None
        return node


def source_fingerprint(source: str, where: str = "<source>") -> str:
    """The syntax tree of `source` without docstrings, comments and positions, as text.

    Raises:
        SyntaxError: `source` (named `where` in the message) does not parse.
    """
    tree = _DropDocstrings().visit(ast.parse(source, filename=where))
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def sources_sha256(roots: Iterable[Path], libraries: Iterable[str] = ()) -> str:
    """sha256 over the fingerprints of the `.py` files under `roots` (by path relative to their
    root, sorted) and `name==version` of each installed distribution in `libraries`."""
    h = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            relative = f"{root.name}/{path.relative_to(root).as_posix()}"
            h.update(relative.encode() + b"\0")
            h.update(source_fingerprint(path.read_text(), str(path)).encode() + b"\0")
    for name in libraries:
        h.update(f"{name}=={metadata.version(name)}\0".encode())
    return h.hexdigest()


@functools.cache
def code_version() -> str:
    """The version of the training code and libraries installed in this process."""
    return sources_sha256(CODE_ROOTS, LIBRARIES)
