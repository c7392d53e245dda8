"""The definitions on a Dagster instance backed by a real local PostgreSQL server
(`config/dagster-postgres.yaml`): `dagster job execute` runs `carry_pipeline_job` with the demo
profile, the multiprocess executor (`config/multiprocess.yaml`) and a short window, and the run is
read back from Postgres: SUCCESS, every stage's steps, the four experts side by side.

The server is Debian's PostgreSQL (`.ci/run` installs it), initialised in a temporary folder and
started on a free loopback port as the `postgres` user when the tests run as root (PostgreSQL
refuses root), and stopped at the end, whatever happened.

The window is the smallest that runs every stage (six days of BTC, one fold + the latest window,
short feature windows, 256 timesteps per training): `config/demo.yaml`'s four months take minutes
of training alone, too long for a test run on two cores.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml

from tests.pipeline.models.test_parallel_training import most_at_once

ROOT = Path(__file__).resolve().parents[2]
PG_ROOT = Path("/usr/lib/postgresql")
"""Debian's versioned program folders (`15/bin`, ...); the newest wins, then PATH."""
PASSWORD = "carry-test-secret"
EXPERT_STEPS = {f"models__{n}_expert" for n in ("anomaly", "short_term", "long_term", "sentiment")}
SHORT_FEATURES = {
    # Every window short enough for six days of data (the demo profile needs four months).
    "zscore_window": "4h",
    "funding_zscore_periods": 3,
    "return_horizons": ["1h", "4h"],
    "vol_window": "4h",
    "vol_of_vol_window": "8h",
    "moments_window": "4h",
    "microstructure_window": "4h",
    "correlation_window": "4h",
    "correlation_pair": None,  # one asset ingested
    "higher_timeframes": ["1h"],
    "ema_length": 10,
    "sentiment_change_window": "2h",
    "sentiment_zscore_window": "6h",
    "sentiment_mean_windows": ["2h", "6h"],
    "sentiment_history": "1d",
    "n_folds": 1,
    "train_span": "2d",
    "test_span": "12h",
    "embargo": "1h",
    "lookback": 8,
    "pit_samples": 1,
    "pit_history": "2d",
    "pit_future": "12h",
}
FILES = ("demo.yaml", "multiprocess.yaml")
TAGS = {
    "dagster/asset_partition_range_start": "BTC|2024-01-01",
    "dagster/asset_partition_range_end": "BTC|2024-01-06",
}


@dataclass(frozen=True)
class Server:
    """A running PostgreSQL server on loopback."""

    port: int
    user: str
    password: str

    def env(self, db_name: str) -> dict[str, str]:
        """The `DAGSTER_PG_*` variables `config/dagster-postgres.yaml` reads."""
        return {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": db_name,
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
        }

    def connect(self, db_name: str) -> "psycopg2.extensions.connection":
        """A psycopg2 connection to `db_name`."""
        return psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=db_name,
        )


def _pg(name: str) -> str:
    # A PostgreSQL program: Debian's newest versioned folder first, then PATH.
    found = sorted(
        (p for p in PG_ROOT.glob(f"*/bin/{name}") if p.parts[-3].isdigit()),
        key=lambda p: int(p.parts[-3]),
    )
    path = str(found[-1]) if found else shutil.which(name)
    if path is None:
        pytest.skip(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return str(path)


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: drop to the `postgres` user when we are root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], timeout: float) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{cmd[0:4]} failed ({done.returncode}): {done.stderr[-2000:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgres() -> Iterator[Server]:
    """initdb in a temporary folder, start on a free port, yield, stop (even on failure)."""
    initdb, pg_ctl = _pg("initdb"), _pg("pg_ctl")
    # Under /tmp, not pytest's tmp_path: its root-only parent would lock the postgres user out.
    base = Path(tempfile.mkdtemp(prefix="carry-pg-"))
    data, sockets, log = base / "data", base / "sockets", base / "server.log"
    sockets.mkdir()
    (base / "pwfile").write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        for p in (sockets, base / "pwfile"):
            shutil.chown(p, "postgres")
    server = Server(port=_free_port(), user="carry", password=PASSWORD)
    started = False
    try:
        _run(
            _as_postgres(
                [
                    initdb,
                    "-D",
                    str(data),
                    "-U",
                    server.user,
                    f"--pwfile={base / 'pwfile'}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "-E",
                    "UTF8",
                ]
            ),
            timeout=180,
        )
        options = f"-p {server.port} -k {sockets} -c listen_addresses=127.0.0.1"
        try:
            _run(
                _as_postgres(
                    [
                        pg_ctl,
                        "-D",
                        str(data),
                        "-l",
                        str(log),
                        "-w",
                        "-t",
                        "120",
                        "-o",
                        options,
                        "start",
                    ]
                ),
                timeout=180,
            )
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\nserver log: {log.read_text()[-2000:]}") from exc
        started = True
        yield server
    finally:
        if started:
            _run(_as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]), timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def _overrides(root: Path) -> dict:
    """Run config over the demo profile: the short window, every output under `root`."""
    database = str(root / "carry.duckdb")
    return {
        "resources": {
            "feature_settings": {
                "config": {**SHORT_FEATURES, "windows_root": str(root / "windows")}
            },
            "model_settings": {
                "config": {"profile": "demo", "timesteps": 256, "models_root": str(root / "models")}
            },
            "report_settings": {"config": {"reports_root": str(root / "reports")}},
            "io_manager": {"config": {"database": database}},
            "duckdb": {"config": {"database": database}},
        }
    }


def _step_spans(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float]]:
    # STEP_START .. STEP_SUCCESS of every step of the run, from its event log.
    marks: dict[str, dict[str, float]] = {}
    for e in instance.all_logs(run_id):
        kind = e.dagster_event.event_type_value if e.dagster_event else None
        if e.step_key and kind in ("STEP_START", "STEP_SUCCESS"):
            marks.setdefault(e.step_key, {})[kind] = e.timestamp
    return {k: (m["STEP_START"], m["STEP_SUCCESS"]) for k, m in marks.items() if len(m) == 2}


def test_postgres_config_reads_credentials_from_the_environment() -> None:
    config = yaml.safe_load((ROOT / "config" / "dagster-postgres.yaml").read_text())
    db = config["storage"]["postgres"]["postgres_db"]
    fields = {k: v for k, v in db.items() if k != "scheme"}
    assert set(fields) == {"hostname", "port", "db_name", "username", "password"}
    assert all(set(v) == {"env"} and v["env"].startswith("DAGSTER_PG_") for v in fields.values())
    # The same run and pool limits as the SQLite instance of dagster.yaml.
    sqlite = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert config["concurrency"] == sqlite["concurrency"]


@pytest.mark.parametrize("job_name", ["carry_pipeline_job", "retrain_job"])
def test_multiprocess_config_merges_with_the_demo_profile(job_name: str) -> None:
    from carry_pipeline.definitions import defs

    demo, parallel = (yaml.safe_load((ROOT / "config" / f).read_text()) for f in FILES)
    config = dg.validate_run_config(defs.resolve_job_def(job_name), {**demo, **parallel})
    multiprocess = config["execution"]["multi_or_in_process_executor"]["multiprocess"]
    assert multiprocess["max_concurrent"] == 4
    assert (
        "carry_pipeline.definitions"
        in multiprocess["start_method"]["forkserver"]["preload_modules"]
    )


@pytest.mark.slow
def test_main_job_on_a_postgres_instance_with_parallel_experts(
    postgres: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = postgres.connect("postgres")
    admin.autocommit = True  # create database refuses to run inside a transaction
    admin.cursor().execute("create database dagster")
    admin.close()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "config" / "dagster-postgres.yaml", home / "dagster.yaml")
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(yaml.safe_dump(_overrides(tmp_path)))
    env = {**os.environ, "DAGSTER_HOME": str(home), **postgres.env("dagster")}
    cli = Path(sys.executable).parent / "dagster"
    t0 = time.perf_counter()
    done = subprocess.run(
        [
            str(cli),
            "job",
            "execute",
            "-m",
            "carry_pipeline",
            "-j",
            "carry_pipeline_job",
            "-c",
            str(ROOT / "config" / "demo.yaml"),
            "-c",
            str(ROOT / "config" / "multiprocess.yaml"),
            "-c",
            str(overrides),
            "--tags",
            json.dumps(TAGS),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    seconds = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr[-4000:]
    print(f"carry_pipeline_job on Postgres, multiprocess: {seconds:.0f} s")

    # Read the run back from Postgres, through Dagster and as plain SQL.
    for key, value in postgres.env("dagster").items():
        monkeypatch.setenv(key, value)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        [run] = instance.get_runs()
        assert run.job_name == "carry_pipeline_job" and run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["dagster/asset_partition_range_end"] == "BTC|2024-01-06"
        spans = _step_spans(instance, run.run_id)
    stages = {k.split("__", 1)[0] for k in spans}
    assert {"raw", "features", "datasets", "models", "reports"} <= stages
    assert "reports__champion_model" in spans
    assert set(spans) >= EXPERT_STEPS
    assert most_at_once([spans[k] for k in EXPERT_STEPS]) >= 2, spans
    with postgres.connect("dagster") as con, con.cursor() as cur:
        cur.execute("select status from runs where run_id = %s", [run.run_id])
        assert cur.fetchall() == [("SUCCESS",)]
        cur.execute(
            "select count(*) from event_logs where run_id = %s and dagster_event_type = "
            "'STEP_SUCCESS'",
            [run.run_id],
        )
        assert cur.fetchone()[0] == len(spans)  # type: ignore[index]
    con.close()
