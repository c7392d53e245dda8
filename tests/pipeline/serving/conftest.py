"""Fixtures of the inference-service tests: the paper-trading tests' trained champion (a tiny
meta-controller and its four experts on twelve simulated days, with a `models.champion` row), and
servers on loopback: uvicorn in a thread of this process, or `python -m carry_pipeline.serve` in a
subprocess (the one documented command, and a second process for DuckDB's file lock)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import httpx
import polars as pl
import pytest
import uvicorn

from carry_env.market import MarketData
from carry_pipeline.lib.duckdb_io import utc_frame
from carry_pipeline.lib.training.registry import market_data
from carry_pipeline.serve import create_app
from tests.pipeline.trading.test_champion_session import build_champion_store

ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class ChampionStore:
    """A DuckDB file with the features, datasets and a `models.champion` row, and its champion's
    meta-controller folder."""

    database: Path
    model_path: str


@pytest.fixture(scope="session")
def trained_champion(tmp_path_factory: pytest.TempPathFactory) -> ChampionStore:
    """Built once per session (about 20-40 s on a loaded 2-core machine)."""
    database, model_path = build_champion_store(tmp_path_factory.mktemp("serving"))
    return ChampionStore(database, model_path)


@pytest.fixture
def champion(trained_champion: ChampionStore, tmp_path: Path) -> ChampionStore:
    """A private copy of the trained store's DuckDB file (the model folders are shared, read
    only)."""
    database = tmp_path / "carry.duckdb"
    shutil.copy(trained_champion.database, database)
    return ChampionStore(database, trained_champion.model_path)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def thread_server(database: Path, poll_seconds: float = 60.0) -> Iterator[str]:
    """uvicorn serving `create_app(database)` on a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(str(database), poll_seconds), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def process_server(database: Path, poll_seconds: float) -> Iterator[str]:
    """`python -m carry_pipeline.serve` in its own process group; yields its base URL once it
    answers `/health` (200 or 503), and stops it with SIGINT."""
    port = free_port()
    cmd = [sys.executable, "-m", "carry_pipeline.serve", "--host", "127.0.0.1", "--port",
           str(port), "--database", str(database), "--poll-seconds", str(poll_seconds)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url) or proc.poll() is not None, 180, "the server to answer")
        assert proc.poll() is None, f"the server exited with {proc.returncode}"
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=5)
    except httpx.TransportError:
        return False
    return True


def wait_for(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    """Poll `condition` every 0.1 s until it is truthy; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def writable(database: Path, seconds: float = 30.0) -> duckdb.DuckDBPyConnection:
    """A read-write connection, retried while another process holds the file briefly (the
    server's read-only checks)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return duckdb.connect(str(database))
        except duckdb.IOException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def stored_market(database: Path) -> MarketData:
    """The market as the models and reports stages build it from the features tables."""
    with duckdb.connect(str(database), read_only=True) as con:
        tables = [
            utc_frame(con.sql(f"select * from features.{name}").pl())
            for name in ("market_bars", "carry_features", "sentiment_windows")
        ]
    return market_data(*tables)


def champion_rows(database: Path) -> pl.DataFrame:
    """`models.champion` as stored."""
    with duckdb.connect(str(database), read_only=True) as con:
        return utc_frame(con.sql("select * from models.champion order by promoted_at").pl())
