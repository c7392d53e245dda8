"""A real `dagster dev` for the UI tests: started from the repository root on a free loopback port,
with a temporary `DAGSTER_HOME` and a temporary data folder, stopped with its whole process group.

`dagster dev` ignores SIGTERM when started from a shell script and leaves orphaned servers
(STACK_FACTS.md), so it runs in its own session and is stopped with SIGINT to the group, then
SIGKILL if it has not exited in time. Nothing it writes lands in the repository's `data/`: the
DuckDB file comes from `CARRY_DUCKDB`, and every run the tests launch gets `run_roots` (the
training windows, models, TensorBoard logs and reports under the temporary data folder).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]
DAGSTER = Path(sys.executable).with_name("dagster")
"""The `dagster` CLI of the running interpreter's environment (the project's venv)."""
LOCATION = "carry_pipeline"
"""The code location's name in `workspace.yaml`."""


@dataclass(frozen=True)
class Webserver:
    """A running `dagster dev`: where it answers and where its instance and data live."""

    url: str
    port: int
    home: Path
    data: Path
    log: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's combined stdout/stderr, for failure messages."""
        return self.log.read_text(errors="replace")[-chars:]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare_home(home: Path) -> None:
    """`home` as a Dagster instance folder: the project's `dagster.yaml`, and the marker that
    suppresses the UI's "Join the Dagster community" modal (it blocks every click)."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    (home / ".nux").mkdir(exist_ok=True)
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")


def server_env(home: Path, data: Path) -> dict[str, str]:
    """The server's environment: this one without any `CARRY_*` or `DAGSTER_*` variable of the
    caller's shell, then the temporary instance and DuckDB file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARRY_", "DAGSTER_"))}
    env["DAGSTER_HOME"] = str(home)
    env["CARRY_DUCKDB"] = str(data / "carry.duckdb")
    return env


def run_roots(data: Path) -> dict[str, Any]:
    """Run config pointing every file the stages write (besides DuckDB) under `data`."""
    return {
        "feature_settings": {"config": {"windows_root": str(data / "windows")}},
        "model_settings": {
            "config": {
                "models_root": str(data / "models"),
                "tensorboard_root": str(data / "tensorboard"),
            }
        },
        "report_settings": {"config": {"reports_root": str(data / "reports")}},
    }


def graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST one GraphQL query to the server; its `data`, or an AssertionError with its errors."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    if payload.get("errors"):
        raise AssertionError(f"GraphQL errors: {payload['errors']}")
    return dict(payload["data"])


LOCATION_STATUS = """
query { workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


def _location_loaded(url: str) -> bool:
    # True once the code location has loaded; a load error fails at once with its message.
    try:
        data = graphql(url, LOCATION_STATUS)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
    entries = {e["name"]: e for e in data["workspaceOrError"].get("locationEntries", [])}
    entry = entries.get(LOCATION)
    if entry is None or entry["loadStatus"] != "LOADED":
        return False
    loaded = entry["locationOrLoadError"] or {}
    if loaded.get("__typename") == "PythonError":
        raise AssertionError(f"code location {LOCATION} failed to load: {loaded['message']}")
    return True


def wait_until_ready(server: Webserver, timeout_s: float) -> None:
    """Block until the server answers GraphQL with the code location loaded.

    Raises:
        AssertionError: the server exited, or was not ready after `timeout_s`, with its log.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"dagster dev exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        if _location_loaded(server.url):
            return
        time.sleep(1.0)
    raise AssertionError(f"dagster dev not ready after {timeout_s:.0f} s:\n{server.log_tail()}")


def start(home: Path, data: Path, log: Path) -> Webserver:
    """Start `dagster dev -w workspace.yaml` from the repository root on a free loopback port, in
    its own process group (not waiting for it: see `wait_until_ready`)."""
    prepare_home(home)
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [str(DAGSTER), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=server_env(home, data),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Webserver(f"http://127.0.0.1:{port}", port, home, data, log, process)


def stop(server: Webserver, grace_s: float = 20.0) -> None:
    """Stop the server's whole process group: SIGINT (dagster dev shuts its children down), then
    SIGKILL for whatever is left after `grace_s`."""
    pgid = server.process.pid  # start_new_session: the leader's pid is the group id
    with suppress(ProcessLookupError):  # the group has exited
        os.killpg(pgid, signal.SIGINT)
    with suppress(subprocess.TimeoutExpired):
        server.process.wait(timeout=grace_s)
    # The webserver, daemon and code server share the group; none may outlive the test session.
    with suppress(ProcessLookupError):  # the group has exited
        os.killpg(pgid, signal.SIGKILL)
    server.process.wait(timeout=grace_s)
