"""The mutation check: plant each curated bug of `tests/mutation/specs/` in a scratch copy, one at a
time, run the tests that cover it, and report which tests caught it or that it SURVIVED.

Usage: `python -m tests.mutation.run [--only ID ...] [--list] [--timeout S]` (`make mutation`).
Exit status: 0 when every non-equivalent mutation was caught, 1 when any survived or an anchor is
missing or ambiguous, 2 on bad arguments.

The scratch copy holds the git-tracked and untracked-but-not-ignored files of the project (no
`.venv`, no `data/`), made once; each mutant is written into it, its tests run with the project's
interpreter and no pytest cache, and the original file is restored before the next one. numba's
on-disk cache is keyed on the source file's timestamp, so a kernel mutant recompiles (a minute or
two); the per-mutation timeout allows for that, and a timed-out mutant counts as caught only if a
test had already failed.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.mutation import specs as specs_package
from tests.mutation.spec import Mutation

ROOT = Path(__file__).resolve().parents[2]
_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


class AnchorError(ValueError):
    """A mutation's `old` text does not occur exactly once in its file."""


@dataclass(frozen=True)
class Outcome:
    """What running the tests against one mutant gave."""

    mutation: Mutation
    caught_by: tuple[str, ...]
    seconds: float
    status: str
    """`caught`, `SURVIVED`, `equivalent` or `ANCHOR` (the anchor is missing or ambiguous)."""
    detail: str = ""


def collect_mutations() -> list[Mutation]:
    """Every `MUTATIONS` list of the modules in `tests/mutation/specs/`, in module-name order.

    Raises:
        ValueError: two mutations share an id, or a module has no `MUTATIONS` list.
    """
    found: list[Mutation] = []
    for info in sorted(pkgutil.iter_modules(specs_package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{specs_package.__name__}.{info.name}")
        entries = getattr(module, "MUTATIONS", None)
        if not isinstance(entries, list):
            raise ValueError(f"tests/mutation/specs/{info.name}.py has no MUTATIONS list")
        found.extend(entries)
    seen: dict[str, int] = {}
    for m in found:
        seen[m.id] = seen.get(m.id, 0) + 1
    dupes = sorted(k for k, v in seen.items() if v > 1)
    if dupes:
        raise ValueError(f"mutation ids used more than once: {', '.join(dupes)}")
    return found


def apply_mutation(source: str, mutation: Mutation) -> str:
    """`source` with the mutation's anchor replaced.

    Raises:
        AnchorError: the anchor occurs zero times or more than once, or the mutant equals the
            original.
    """
    count = source.count(mutation.old)
    if count != 1:
        where = "not found" if count == 0 else f"found {count} times"
        raise AnchorError(f"{mutation.id}: anchor {mutation.old!r} {where} in {mutation.path}")
    mutant = source.replace(mutation.old, mutation.new, 1)
    if mutant == source:
        raise AnchorError(f"{mutation.id}: replacement leaves {mutation.path} unchanged")
    return mutant


def project_files(root: Path) -> list[str]:
    """Paths (relative to `root`) of the tracked and untracked-but-not-ignored files."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return [p for p in out.split("\0") if p and (root / p).is_file()]


def make_scratch(root: Path, dest: Path) -> None:
    """Copy the project's files into `dest` (metadata kept, so numba's cache stays valid for
    unmutated modules)."""
    for rel in project_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def failing_tests(output: str) -> tuple[str, ...]:
    """Node ids pytest reported as FAILED or ERROR in its short summary."""
    return tuple(dict.fromkeys(_FAILED.findall(output)))


def run_one(scratch: Path, mutation: Mutation, timeout_s: float) -> Outcome:
    """Plant `mutation` in the scratch copy, run its tests, restore the file."""
    if mutation.equivalent:
        return Outcome(mutation, (), 0.0, "equivalent", mutation.equivalent)
    path = scratch / mutation.path
    original = path.read_text()
    try:
        mutant = apply_mutation(original, mutation)
    except AnchorError as err:
        return Outcome(mutation, (), 0.0, "ANCHOR", str(err))
    start = time.perf_counter()
    path.write_text(mutant)
    try:
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rfE"]
        proc = subprocess.run(
            [*cmd, *mutation.tests],
            cwd=scratch,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        raw = err.stdout or b""
        output = raw.decode() if isinstance(raw, bytes) else raw
        rc = -1
    finally:
        path.write_text(original)
        shutil.copystat(ROOT / mutation.path, path)
    seconds = time.perf_counter() - start
    caught = failing_tests(output)
    if rc == 0:
        return Outcome(mutation, (), seconds, "SURVIVED")
    if rc == -1 and not caught:
        return Outcome(mutation, (), seconds, "SURVIVED", f"timed out after {timeout_s:.0f} s")
    if not caught:
        # Collection errors, crashes at import (pytest exits 2-4 with no FAILED line).
        tail = output.strip().splitlines()[-1:] or ["no output"]
        caught = (f"pytest exit {rc}: {tail[0][:120]}",)
    return Outcome(mutation, caught, seconds, "caught")


def format_outcome(o: Outcome) -> str:
    """One report line (plus the catching tests) for an outcome."""
    head = f"{o.status:<10} {o.mutation.id:<48} {o.seconds:6.1f} s"
    if o.status == "caught":
        return head + "\n" + "\n".join(f"           <- {t}" for t in o.caught_by[:3])
    if o.detail:
        return head + f"\n           {o.detail}"
    return head + (f"\n           {o.mutation.note}" if o.mutation.note else "")


def score_line(outcomes: list[Outcome]) -> str:
    """`caught / counted` over the non-equivalent mutations, with survivors and broken anchors."""
    counted = [o for o in outcomes if o.status != "equivalent"]
    caught = sum(o.status == "caught" for o in counted)
    survived = sum(o.status == "SURVIVED" for o in counted)
    anchors = sum(o.status == "ANCHOR" for o in counted)
    pct = 100.0 * caught / len(counted) if counted else 100.0
    return (
        f"mutation score: {caught}/{len(counted)} caught ({pct:.0f} %), {survived} survived, "
        f"{anchors} broken anchors, {len(outcomes) - len(counted)} equivalent"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the selected mutations and print the report; the exit status says whether all were
    caught."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="mutation ids to run")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutation")
    args = parser.parse_args(argv)
    mutations = collect_mutations()
    if args.only:
        unknown = sorted(set(args.only) - {m.id for m in mutations})
        if unknown:
            print(f"unknown mutation ids: {', '.join(unknown)}", file=sys.stderr)
            return 2
        mutations = [m for m in mutations if m.id in set(args.only)]
    if args.list:
        for m in mutations:
            print(f"{m.id:<48} {m.path}  ({', '.join(m.tests)})")
        print(f"{len(mutations)} mutations")
        return 0
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="carry-mutation-") as tmp:
        scratch = Path(tmp)
        make_scratch(ROOT, scratch)
        for k, m in enumerate(mutations, 1):
            outcome = run_one(scratch, m, args.timeout)
            outcomes.append(outcome)
            print(f"[{k}/{len(mutations)}] {format_outcome(outcome)}", flush=True)
    print(score_line(outcomes))
    bad = [o for o in outcomes if o.status in ("SURVIVED", "ANCHOR")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
