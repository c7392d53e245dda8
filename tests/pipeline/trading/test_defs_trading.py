"""`paper_trading_job` in process on the simulated feed, and `champion_model_sensor` against a
real instance."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from carry_pipeline.defs.trading.jobs import champion_model_path, paper_trading_job
from carry_pipeline.defs.trading.sensors import champion_model_sensor
from carry_pipeline.lib.duckdb_io import CarryDuckDBIOManager
from carry_pipeline.lib.trading.live import LiveTradingRefused, check_live_allowed


def test_job_runs_a_simulated_paper_session(tmp_path: Path) -> None:
    # Bound to the code location's default IO manager (DuckDB, tables only), as the sensor's runs
    # are under the daemon: the op's output must not need storing.
    db = str(tmp_path / "carry.duckdb")
    config = {"session_id": "job", "database": db, "days": 12, "higher_timeframes": ["4h"],
              "risk": {"max_leverage": 5.0}}  # fmt: skip
    defs = dg.Definitions(
        jobs=[paper_trading_job], resources={"io_manager": CarryDuckDBIOManager(database=db)}
    )
    result = defs.resolve_job_def("paper_trading_job").execute_in_process(
        run_config={"ops": {"paper_session": {"config": config}}}
    )
    assert result.success
    [event] = [e for e in result.all_node_events if e.is_successful_output]
    assert event.event_specific_data.metadata["new_bars"].value == 48
    con = duckdb.connect(db, read_only=True)
    assert con.execute("select count(*) from paper.equity where session_id='job'").fetchone() == (
        48,
    )
    con.close()


def test_champion_model_path_without_a_table_is_a_clear_error(tmp_path: Path) -> None:
    duckdb.connect(str(tmp_path / "c.duckdb")).close()
    with pytest.raises(ValueError, match="no models.champion table"):
        champion_model_path(str(tmp_path / "c.duckdb"))


@dg.asset(key=["reports", "champion_model"])
def champion_model_for_test() -> dg.MaterializeResult:
    """Test-only stand-in for the evaluation stage's asset: same key, a champion id as metadata."""
    return dg.MaterializeResult(metadata={"champion_id": "m42"})


def test_sensor_requests_one_run_per_champion() -> None:
    # A real instance in which reports/champion_model (a test-only asset) has materialised twice
    # with the same champion: one run request, keyed by the champion; the cursor then yields none.
    defs = dg.Definitions(
        assets=[champion_model_for_test], jobs=[paper_trading_job], sensors=[champion_model_sensor]
    )
    with dg.instance_for_test() as instance:
        dg.materialize([champion_model_for_test], instance=instance)
        ctx = dg.build_sensor_context(instance=instance, definitions=defs)
        first = champion_model_sensor.evaluate_tick(ctx)
        assert [r.run_key for r in first.run_requests] == ["champion-m42"]
        cfg = first.run_requests[0].run_config["ops"]["paper_session"]["config"]
        assert cfg["policy"] == "champion" and cfg["session_id"] == "champion-m42"
        again = dg.build_sensor_context(instance=instance, definitions=defs, cursor=first.cursor)
        assert champion_model_sensor.evaluate_tick(again).run_requests == []


def test_live_trading_needs_the_flag_and_the_variable() -> None:
    ok = {"CARRY_LIVE_TRADING": "I_UNDERSTAND"}
    for enabled, env in (
        (False, {}),
        (True, {}),
        (False, ok),
        (True, {"CARRY_LIVE_TRADING": "yes"}),
    ):
        with pytest.raises(LiveTradingRefused, match="live trading refused"):
            check_live_allowed(enabled, env)
    check_live_allowed(True, ok)


def test_job_refuses_live_trading_and_keys_leak_nowhere(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    secret = "SECRETKEY-7f3a9c"
    os.environ["CARRY_API_KEY"] = secret
    try:
        db = str(tmp_path / "carry.duckdb")
        config = {"session_id": "live", "database": db, "live_trading": True}
        with dg.instance_for_test() as instance:
            result = paper_trading_job.execute_in_process(
                run_config={"ops": {"paper_session": {"config": config}}},
                instance=instance,
                raise_on_error=False,
            )
            assert not result.success
            logs = " ".join(str(e) for e in instance.all_logs(result.run_id))
        assert "CARRY_LIVE_TRADING=I_UNDERSTAND" in logs
        out = capfd.readouterr()
        assert secret not in logs + out.out + out.err
        if Path(db).exists():
            assert secret.encode() not in Path(db).read_bytes()
    finally:
        del os.environ["CARRY_API_KEY"]
