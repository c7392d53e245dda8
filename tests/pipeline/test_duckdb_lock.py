"""`carry_pipeline/lib/duckdb_lock.py` and its use by the DuckDB IO manager and resource: writers of
one file from several processes wait for each other instead of failing on DuckDB's "Could not set
lock", readers wait for writers outside the protocol, and a stuck holder gives a clear error."""

import multiprocessing
import os
import time
from multiprocessing.connection import Connection
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from dagster import AssetExecutionContext

from carry_pipeline.lib import duckdb_lock
from carry_pipeline.lib.duckdb_io import CarryDuckDBIOManager, CarryDuckDBResource, read_table

# Spawned, not forked: in the full suite the test process already runs torch, numba and DuckDB
# threads, and a forked child can inherit one of their locks held and hang.
SPAWN = multiprocessing.get_context("spawn")
KEYS = [f"p{i:02d}" for i in range(16)]
DAYS = dg.StaticPartitionsDefinition(KEYS)
ROWS = 200_000
"""Rows per partition: enough that each write holds the file for a while (a wider collision)."""


@dg.asset(key_prefix="t", partitions_def=DAYS, metadata={"partition_expr": "part"})
def rows(context: AssetExecutionContext) -> pl.DataFrame:
    """`ROWS` rows of the partition, tagged with the writing process."""
    return pl.DataFrame({"part": context.partition_key, "pid": os.getpid(), "i": range(ROWS)})


def _write_partitions(database: str, keys: list[str], start: Connection) -> None:
    # Child: wait for the go signal, then materialise each key through the IO manager.
    start.recv()
    for key in keys:
        dg.materialize(
            [rows],
            resources={"io_manager": CarryDuckDBIOManager(database=database)},
            partition_key=key,
        )


def _hold(database: str, plain: bool, seconds: float, ready: Connection) -> None:
    # Child: hold the file for `seconds`, through the lock (plain=False) or as an outsider.
    if plain:
        con = duckdb.connect(database)
        con.execute("create table if not exists held (x int)").fetchall()
        ready.send("held")
        time.sleep(seconds)
        con.close()
        return
    with duckdb_lock.connect(database) as con:
        con.execute("create table if not exists held (x int)").fetchall()
        ready.send("held")
        time.sleep(seconds)


def _start_holder(database: Path, *, plain: bool, seconds: float) -> multiprocessing.Process:
    parent, child = SPAWN.Pipe()
    proc = SPAWN.Process(target=_hold, args=(str(database), plain, seconds, child))
    proc.start()
    assert parent.poll(60) and parent.recv() == "held"
    return proc


def test_two_processes_writing_through_the_io_manager_at_once_both_land(tmp_path: Path) -> None:
    database = str(tmp_path / "carry.duckdb")
    keys = KEYS
    go = []
    procs = []
    for share in (keys[0::2], keys[1::2]):
        parent, child = SPAWN.Pipe()
        proc = SPAWN.Process(target=_write_partitions, args=(database, share, child))
        proc.start()
        go.append(parent)
        procs.append(proc)
    for pipe in go:
        pipe.send("go")
    for proc in procs:
        proc.join(300)
        assert proc.exitcode == 0, "a writer failed (DuckDB lock conflict?)"
    stored = read_table(database, "t.rows")
    counts = stored.group_by("part").len().sort("part")
    assert counts["part"].to_list() == keys  # every write landed ...
    assert (counts["len"] == ROWS).all()  # ... whole, and none twice
    assert stored["pid"].n_unique() == 2


def test_an_io_manager_write_waits_for_a_writer_holding_the_lock(tmp_path: Path) -> None:
    database = tmp_path / "carry.duckdb"
    holder = _start_holder(database, plain=False, seconds=1.5)
    t0 = time.monotonic()
    result = dg.materialize(
        [rows],
        resources={"io_manager": CarryDuckDBIOManager(database=str(database))},
        partition_key="p00",
    )
    waited = time.monotonic() - t0
    holder.join(30)
    assert result.success
    assert waited > 0.5  # it queued behind the holder instead of failing at once
    assert read_table(database, "t.rows")["part"].unique().to_list() == ["p00"]


@pytest.mark.parametrize("read_only", [True, False])
def test_a_connection_retries_while_an_outsider_holds_the_file(
    tmp_path: Path, read_only: bool
) -> None:
    database = tmp_path / "carry.duckdb"
    holder = _start_holder(database, plain=True, seconds=1.0)  # e.g. the duckdb CLI
    with CarryDuckDBResource(database=str(database)).get_connection(read_only=read_only) as con:
        assert con.execute("select count(*) from held").fetchall() == [(0,)]
    holder.join(30)
    assert holder.exitcode == 0


def test_a_stuck_holder_times_out_naming_the_lock_file_and_its_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "carry.duckdb"
    holder = _start_holder(database, plain=False, seconds=3.0)
    monkeypatch.setenv("CARRY_DUCKDB_LOCK_TIMEOUT_S", "0.3")
    held = rf"carry\.duckdb\.lock; it is held by pid {holder.pid}"
    with pytest.raises(TimeoutError, match=held), duckdb_lock.connect(database, read_only=True):
        pass
    holder.join(30)


def test_readers_share_the_lock_and_nested_connections_reuse_it(tmp_path: Path) -> None:
    database = tmp_path / "carry.duckdb"
    with duckdb_lock.connect(database) as con:
        con.execute("create table t as select 1 as x").fetchall()
        # Nested in the same process: no deadlock; a read inside a write reads through it.
        with duckdb_lock.connect(database, read_only=True) as inner:
            assert inner.execute("select x from t").fetchall() == [(1,)]
    # A shared hold does not exclude another reader process.
    with duckdb_lock.file_lock(database, exclusive=False):
        proc = SPAWN.Process(target=read_table, args=(str(database), "t"))
        proc.start()
        proc.join(30)
        assert proc.exitcode == 0
        # ... but a write inside a read of the same process is refused, not deadlocked.
        refused = pytest.raises(RuntimeError, match="write was opened inside a read")
        with refused, duckdb_lock.connect(database):
            pass


@pytest.mark.parametrize(
    ("database", "lock"),
    [
        ("data/carry.duckdb", Path("data/carry.duckdb.lock")),  # beside the file
        (":memory:", None),  # nothing shared between processes
        ("md:carry", None),  # MotherDuck serialises on its side
        ("s3://bucket/carry.duckdb", None),  # remote: no local lock file
    ],
)
def test_lock_path(database: str, lock: Path | None) -> None:
    assert duckdb_lock.lock_path(database) == lock


@pytest.mark.parametrize("raw", ["0", "-3", "soon"])
def test_a_bad_lock_timeout_is_refused(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARRY_DUCKDB_LOCK_TIMEOUT_S", raw)
    with pytest.raises(ValueError, match="CARRY_DUCKDB_LOCK_TIMEOUT_S"):
        duckdb_lock.lock_timeout_s()


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    missing = pytest.raises(FileNotFoundError, match="folder .*nowhere does not exist")
    with missing, duckdb_lock.connect(tmp_path / "nowhere" / "carry.duckdb"):
        pass
