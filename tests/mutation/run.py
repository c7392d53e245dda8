"""Curated mutation check: plant each bug of `tests/mutation/specs/*` in a copy, run its tests.

Run as `python -m tests.mutation.run [--only ID ...] [--list]` (or `make mutation`). The project
(git-tracked files plus untracked files git does not ignore) is copied once to a scratch directory;
each mutation is applied there, its tests run with pytest, and the file is restored before the next.
A mutation is CAUGHT when at least one of its tests fails, SURVIVED otherwise. The exit status is
non-zero on any survivor, on any broken anchor (text missing or ambiguous), or on a duplicate id.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.mutation.spec import Mutation

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The repository root the scratch copy is made from."""
SPECS_PACKAGE = "tests.mutation.specs"
"""Package whose modules each export `MUTATIONS: list[Mutation]`."""
KERNEL_TIMEOUT_S = 600.0
"""Per-mutation pytest timeout for a mutant under `carry_env/` (numba recompiles the kernel: 1.5
minutes on an idle 2-core machine, past 4 minutes on a loaded one, where a shorter limit turned
survivors into TIMEOUTs, which count as caught)."""
DEFAULT_TIMEOUT_S = 120.0
"""Per-mutation pytest timeout otherwise."""
FAILED_NODE = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)
"""A failing node id in pytest's `-ra` short summary."""


class AnchorError(ValueError):
    """A mutation's `old` text is missing from, or occurs more than once in, its file."""


@dataclass(frozen=True)
class Outcome:
    """What running one mutation's tests on its mutant gave."""

    mutation: Mutation
    status: str
    """CAUGHT, SURVIVED, EQUIVALENT, ANCHOR (broken anchor) or TIMEOUT (counted as caught)."""
    caught_by: tuple[str, ...]
    """Failing node ids (or a one-line reason when pytest gave none)."""
    seconds: float


def collect_mutations(package: str = SPECS_PACKAGE) -> list[Mutation]:
    """Every `MUTATIONS` entry of every module in `package`, in module-name order.

    Raises ValueError on a module without a `MUTATIONS` list, on an entry that is not a Mutation, or
    on a duplicate id (the id names the mutation in `--only` and in the report).
    """
    pkg = importlib.import_module(package)
    found: list[Mutation] = []
    seen: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package}.{info.name}")
        entries = getattr(module, "MUTATIONS", None)
        if not isinstance(entries, list):
            raise ValueError(f"{module.__name__} has no MUTATIONS list")
        for entry in entries:
            if not isinstance(entry, Mutation):
                raise ValueError(f"{module.__name__}: MUTATIONS holds {entry!r}, not a Mutation")
            if entry.id in seen:
                raise ValueError(
                    f"duplicate mutation id {entry.id!r} in {module.__name__} and {seen[entry.id]}"
                )
            seen[entry.id] = module.__name__
            found.append(entry)
    return found


def apply_mutation(text: str, mutation: Mutation) -> str:
    """`text` with the single `old` occurrence replaced; AnchorError unless exactly one."""
    count = text.count(mutation.old)
    if count != 1:
        where = "missing from" if count == 0 else f"found {count} times in"
        raise AnchorError(f"{mutation.id}: anchor {mutation.old!r} {where} {mutation.path}")
    if mutation.new == mutation.old:
        raise AnchorError(f"{mutation.id}: `new` equals `old`, the mutant is the original")
    return text.replace(mutation.old, mutation.new, 1)


def check_anchors(mutations: list[Mutation], root: Path = PROJECT_ROOT) -> list[str]:
    """One error line per mutation whose file is missing or whose anchor is not unique."""
    errors = []
    for mutation in mutations:
        path = root / mutation.path
        if not path.is_file():
            errors.append(f"{mutation.id}: file {mutation.path} does not exist")
            continue
        try:
            apply_mutation(path.read_text(encoding="utf-8"), mutation)
        except AnchorError as exc:
            errors.append(str(exc))
        # A missing test file would make pytest fail, and the mutant look caught.
        missing = [t for t in mutation.tests if not (root / t.split("::")[0]).exists()]
        errors += [f"{mutation.id}: test path {t} does not exist" for t in missing]
    return errors


def project_files(root: Path = PROJECT_ROOT) -> list[str]:
    """Git-tracked files and untracked files git does not ignore, relative to `root`."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout
    return [name for name in out.decode().split("\0") if name and (root / name).is_file()]


def copy_project(dest: Path, root: Path = PROJECT_ROOT) -> None:
    """Copy the project's files (see `project_files`) under `dest`, keeping their layout."""
    for name in project_files(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


def failing_nodes(output: str) -> tuple[str, ...]:
    """The failing or erroring node ids pytest printed in its short summary."""
    return tuple(dict.fromkeys(FAILED_NODE.findall(output)))


def timeout_for(mutation: Mutation) -> float:
    """Seconds allowed for the mutant's tests: longer for the numba kernel (it recompiles)."""
    return KERNEL_TIMEOUT_S if mutation.path.startswith("carry_env/") else DEFAULT_TIMEOUT_S


def run_one(mutation: Mutation, scratch: Path) -> Outcome:
    """Apply `mutation` in `scratch`, run its tests, restore the file, and say what happened."""
    if mutation.equivalent:
        return Outcome(mutation, "EQUIVALENT", (mutation.equivalent,), 0.0)
    path = scratch / mutation.path
    original = path.read_text(encoding="utf-8")
    errors = check_anchors([mutation], root=scratch)
    if errors:
        return Outcome(mutation, "ANCHOR", tuple(errors), 0.0)
    mutant = apply_mutation(original, mutation)
    start = time.monotonic()
    path.write_text(mutant, encoding="utf-8")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-ra", "-p", "no:cacheprovider"]
    try:
        proc = subprocess.run(
            [*cmd, *mutation.tests],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_for(mutation),
        )
    except subprocess.TimeoutExpired:
        return Outcome(mutation, "TIMEOUT", ("timed out",), time.monotonic() - start)
    finally:
        path.write_text(original, encoding="utf-8")
    seconds = time.monotonic() - start
    if proc.returncode == 0:
        return Outcome(mutation, "SURVIVED", (), seconds)
    nodes = failing_nodes(proc.stdout + proc.stderr)
    if not nodes:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["(no output)"]
        nodes = (f"pytest exit {proc.returncode}: {tail[0]}",)
    return Outcome(mutation, "CAUGHT", nodes, seconds)


def report_line(outcome: Outcome) -> str:
    """One line per mutation: status, id, seconds and what caught it."""
    detail = ", ".join(outcome.caught_by) if outcome.caught_by else "no test failed"
    return f"{outcome.status:<10} {outcome.mutation.id} ({outcome.seconds:.0f}s): {detail}"


def score(outcomes: list[Outcome]) -> tuple[int, int]:
    """(caught, counted): equivalent mutants are not counted; timeouts count as caught."""
    counted = [o for o in outcomes if o.status != "EQUIVALENT"]
    caught = [o for o in counted if o.status in ("CAUGHT", "TIMEOUT")]
    return len(caught), len(counted)


def select(mutations: list[Mutation], only: list[str] | None) -> list[Mutation]:
    """The mutations named in `only` (all when None); ValueError naming any unknown id."""
    if not only:
        return mutations
    known = {m.id for m in mutations}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ValueError(f"unknown mutation id(s): {', '.join(unknown)}")
    return [m for m in mutations if m.id in set(only)]


def main(argv: list[str] | None = None) -> int:
    """Run the selected mutations; 0 only when every counted one was caught and all anchors hold."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutation ids")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    mutations = select(collect_mutations(), args.only)
    if args.list:
        for m in mutations:
            print(f"{m.id}\t{m.path}\t{' '.join(m.tests)}")
        return 0
    anchor_errors = check_anchors(mutations)
    for line in anchor_errors:
        print(f"ANCHOR     {line}")
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="carry-mutation-") as tmp:
        scratch = Path(tmp)
        copy_project(scratch)
        for mutation in mutations:
            outcome = run_one(mutation, scratch)
            outcomes.append(outcome)
            print(report_line(outcome), flush=True)
    caught, counted = score(outcomes)
    survivors = [o.mutation.id for o in outcomes if o.status == "SURVIVED"]
    broken = [o.mutation.id for o in outcomes if o.status == "ANCHOR"]
    print(f"score: {caught}/{counted} caught", end="")
    print(f"; survivors: {', '.join(survivors)}" if survivors else "", end="")
    print(f"; broken anchors: {', '.join(broken)}" if broken else "")
    return 1 if survivors or broken or anchor_errors else 0


if __name__ == "__main__":
    sys.exit(main())
