"""A paper session in its own process, for the crash test: `python paper_worker.py DB`.

Prints `committed <bar>` after each committed bar (flushed) so the parent can kill it mid-run.
"""

from __future__ import annotations

import sys

from tests.pipeline.trading.session_setup import run_session


def main() -> None:
    db = sys.argv[1]
    result = run_session(db, on_commit=lambda bar: print(f"committed {bar}", flush=True))
    print(f"done {result.last_bar} {result.equity!r}", flush=True)


if __name__ == "__main__":
    main()
