"""One curated mutation: a small, plausible bug planted in one place of the code under test."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    """A text substitution applied to a scratch copy of the project, one at a time.

    `old` must occur exactly once in `path` (the runner refuses an ambiguous or missing anchor, so a
    refactor that moves the code shows up as an error, never as a silent pass). `tests` are the
    pytest node ids or paths that cover the mutated code; at least one of them must fail on the
    mutant, or the mutation SURVIVED. A mutation known to be equivalent (no observable change) says
    so in `equivalent`, with the reason, and is not counted as a survivor.
    """

    id: str
    """Short unique name, `<area>-<what breaks>`."""
    path: str
    """File to mutate, relative to the project root."""
    old: str
    """Exact text to replace; occurs exactly once in the file."""
    new: str
    """Replacement text."""
    tests: tuple[str, ...]
    """Test paths or node ids run against the mutant."""
    note: str = ""
    """What bug this plants, in the words of a reviewer."""
    equivalent: str = ""
    """Non-empty when the mutant cannot be told apart from the original: the reason."""
