"""One writer at a time on a DuckDB file, across processes: a lock file beside it.

DuckDB lets one process open a file read-write, or any number of processes open it read-only,
never both; a second process gets `IOException: Could not set lock on file ...` at once. Under
Dagster's multiprocess executor every step is a process (the four experts of a fold train side by
side), so the project opens its DuckDB file only through `connect`, which

1. takes an advisory lock (`fcntl.flock`) on `<file>.lock` beside the file: exclusive for a
   writer, shared for readers, so readers run together and a writer waits for them (and they for
   it). The lock is held only while the connection is open, never for a step's whole duration, so
   a step that trains for minutes holds it only for its reads and its writes. Within one process
   the lock is re-entrant (a nested `connect` reuses it); threads of one process take turns.
2. connects, retrying DuckDB's own lock error with exponential backoff up to the same deadline:
   a process outside this protocol (the `duckdb` CLI, a notebook, the paper-trading ledger) may
   hold the file for a moment.

Waits end after `CARRY_DUCKDB_LOCK_TIMEOUT_S` seconds (default 600) with a `TimeoutError` that
names the file and the process holding the lock. In-memory databases (`:memory:`) and remote ones
(`md:` MotherDuck, `s3://...`) take no lock file: they have no local single-writer file.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

DEFAULT_TIMEOUT_S = 600.0
"""Seconds a connection waits for the lock file and for DuckDB's own lock before giving up."""
USER_AGENT = {"custom_user_agent": "dagster"}
"""Connection config every project connection carries: DuckDB refuses a second connection of one
process to a file opened with a different config, so all of them use the same."""
_LOCK_ERROR = "Could not set lock"
_FIRST_WAIT_S = 0.02
_MAX_WAIT_S = 0.5


def lock_timeout_s() -> float:
    """`$CARRY_DUCKDB_LOCK_TIMEOUT_S` if set, else `DEFAULT_TIMEOUT_S`.

    Raises:
        ValueError: the variable is not a positive number.
    """
    raw = os.environ.get("CARRY_DUCKDB_LOCK_TIMEOUT_S")
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(
            f"CARRY_DUCKDB_LOCK_TIMEOUT_S={raw!r} must be a positive number of seconds"
        )
    return value


def lock_path(database: str | Path) -> Path | None:
    """The lock file of a local DuckDB file (`<file>.lock`); None for in-memory or remote ones."""
    text = str(database)
    if text in ("", ":memory:") or text.startswith((":memory:", "md:", "motherduck:")):
        return None
    if "://" in text:
        return None
    return Path(text).with_name(Path(text).name + ".lock")


@dataclass
class _Holder:
    # This process's hold on one lock file: the open descriptor, its mode and nesting depth.
    guard: threading.RLock = field(default_factory=threading.RLock)
    fd: int | None = None
    exclusive: bool = False
    depth: int = 0


_holders: dict[Path, _Holder] = {}
_holders_guard = threading.Lock()


def _forget_in_child() -> None:
    # A forked child shares the parent's open lock descriptions: close its copies without
    # unlocking (LOCK_UN would release the parent's lock) and start with no holds.
    for holder in _holders.values():
        if holder.fd is not None:
            os.close(holder.fd)
    _holders.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _holder(path: Path) -> _Holder:
    with _holders_guard:
        return _holders.setdefault(path.resolve(), _Holder())


def _holder_pid(fd: int) -> str:
    # The pid an exclusive holder wrote into the lock file, for the timeout message.
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return "unknown"
    return text or "unknown (shared holders)"


def _flock(fd: int, exclusive: bool, path: Path, deadline: float) -> None:
    # Poll a non-blocking flock until the deadline, backing off, so a stuck holder gives an error.
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    wait = _FIRST_WAIT_S
    while True:
        try:
            fcntl.flock(fd, mode)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                kind = "exclusive" if exclusive else "shared"
                raise TimeoutError(
                    f"waited past CARRY_DUCKDB_LOCK_TIMEOUT_S for the {kind} lock on {path}; "
                    f"it is held by pid {_holder_pid(fd)}"
                ) from None
            time.sleep(wait)
            wait = min(wait * 2, _MAX_WAIT_S)


@contextmanager
def file_lock(
    database: str | Path, *, exclusive: bool, timeout_s: float | None = None
) -> Iterator[None]:
    """Hold the lock file of `database` for the block: exclusive (a writer) or shared (readers).

    Re-entrant within a process: a nested hold reuses the outer one; a shared hold cannot become
    exclusive inside itself (another process could be reading), which raises.

    Raises:
        TimeoutError: the lock was not free within `timeout_s` (default `lock_timeout_s()`).
        RuntimeError: an exclusive hold requested inside a shared one of this process.
        FileNotFoundError: the folder of the DuckDB file does not exist.
    """
    path = lock_path(database)
    if path is None:
        yield
        return
    deadline = time.monotonic() + (lock_timeout_s() if timeout_s is None else timeout_s)
    holder = _holder(path)
    if not holder.guard.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
        raise TimeoutError(f"waited past the timeout for another thread's lock on {path}")
    try:
        if holder.depth == 0:
            _acquire(holder, path, exclusive, deadline)
        elif exclusive and not holder.exclusive:
            raise RuntimeError(
                f"{path}: a write was opened inside a read of the same process; open the writing "
                "connection first (a shared lock cannot become exclusive safely)"
            )
        holder.depth += 1
        try:
            yield
        finally:
            holder.depth -= 1
            if holder.depth == 0:
                _release(holder)
    finally:
        holder.guard.release()


def _acquire(holder: _Holder, path: Path, exclusive: bool, deadline: float) -> None:
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"DuckDB file {path.with_suffix('')}: its folder {path.parent} does not exist"
        )
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _flock(fd, exclusive, path, deadline)
    except BaseException:
        os.close(fd)
        raise
    if exclusive:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    holder.fd, holder.exclusive = fd, exclusive


def _release(holder: _Holder) -> None:
    if holder.fd is None:
        return
    try:
        fcntl.flock(holder.fd, fcntl.LOCK_UN)
    finally:
        os.close(holder.fd)
        holder.fd, holder.exclusive = None, False


def _is_lock_error(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.IOException) and _LOCK_ERROR in str(exc)


def _is_config_clash(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.ConnectionException) and "different configuration" in str(exc)


def open_with_retry(
    database: str, *, read_only: bool, config: Mapping[str, Any], deadline: float
) -> duckdb.DuckDBPyConnection:
    """`duckdb.connect`, retrying DuckDB's "Could not set lock" with backoff until `deadline`.

    A read-only open in a process that already has the file open read-write (DuckDB refuses a
    second configuration of one file per process) reads through a read-write connection instead:
    this process then holds DuckDB's own lock already.

    Raises:
        TimeoutError: the file stayed locked by another process past the deadline.
    """
    wait = _FIRST_WAIT_S
    while True:
        try:
            return duckdb.connect(database, read_only=read_only, config=dict(config))
        except duckdb.Error as exc:
            if read_only and _is_config_clash(exc):
                return duckdb.connect(database, read_only=False, config=dict(config))
            if not _is_lock_error(exc):
                raise
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"DuckDB file {database} stayed locked by another process past "
                    f"CARRY_DUCKDB_LOCK_TIMEOUT_S: {exc}"
                ) from exc
            time.sleep(wait)
            wait = min(wait * 2, _MAX_WAIT_S)


@contextmanager
def connect(
    database: str | Path,
    *,
    read_only: bool = False,
    config: Mapping[str, Any] | None = None,
    timeout_s: float | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection under the file's lock (module docstring), closed at the end.

    Args:
        database: the DuckDB file (or `:memory:`, `md:...`).
        read_only: open read-only under a shared lock; otherwise read-write under an exclusive one.
        config: DuckDB connection config (`custom_user_agent` is added).
        timeout_s: seconds to wait for both locks; default `lock_timeout_s()`.

    Raises:
        TimeoutError: a lock stayed held past the timeout.
    """
    timeout = lock_timeout_s() if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout
    with file_lock(database, exclusive=not read_only, timeout_s=timeout):
        con = open_with_retry(
            str(database),
            read_only=read_only,
            config={**USER_AGENT, **(config or {})},
            deadline=deadline,
        )
        try:
            yield con
        finally:
            con.close()
