"""`ChampionService.refresh` without HTTP: nothing reloads while the store is unchanged, new stored
bars are loaded (the latest bar moves with them), and a promoted champion that does not load is
reported while the loaded one keeps serving, without reloading it on every check."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import duckdb
import polars as pl
import pytest

from carry_pipeline.lib.evaluation.champion import append_champion
from carry_pipeline.lib.serving import service as service_module
from carry_pipeline.lib.serving.service import FEATURE_TABLES, ChampionService
from tests.pipeline.serving.conftest import ChampionStore, champion_rows


@pytest.mark.slow  # the trained champion (session fixture) takes 20-40 s
def test_new_bars_reload_and_a_broken_champion_keeps_the_loaded_one(
    champion: ChampionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = str(champion.database)
    # The store without its last bar; the bar's rows are put back below, as an ingest would.
    with duckdb.connect(database) as con:
        [(last,)] = con.sql("select max(ts) from features.market_bars").fetchall()
        held = {t: con.sql(f"select * from features.{t} where ts = ?", params=[last]).pl()
                for t in FEATURE_TABLES}  # fmt: skip
        for t in FEATURE_TABLES:
            con.execute(f"delete from features.{t} where ts = ?", [last])
    events: list[tuple[str, Any]] = []
    svc = ChampionService(database, listener=lambda e, v: events.append((e, v)))
    loads: list[str] = []
    real_load = service_module.load_served_champion
    monkeypatch.setattr(
        service_module,
        "load_served_champion",
        lambda db, version: loads.append(version.source.champion_id) or real_load(db, version),
    )
    assert svc.refresh() and svc.problem is None
    first = svc.current
    assert first is not None and first.market.ts[-1] < last.timestamp() * 1e9
    assert not svc.refresh() and svc.current is first and loads == ["run1:meta_controller"]

    with duckdb.connect(database) as con:
        for t, rows in held.items():
            con.register("held", rows.to_arrow())
            con.execute(f"insert into features.{t} select * from held")
            con.unregister("held")
    assert svc.refresh()
    second = svc.current
    assert second is not None and second.market.n_bars == first.market.n_bars + 1
    assert int(second.market.ts[-1]) == int(last.timestamp() * 1e9)
    assert second.bar(None) == second.market.n_bars - 1  # `latest` is the new bar
    assert [(e, v[1]) for e, v in events if e == "reload"] == [("reload", "first"),
                                                              ("reload", "bars")]  # fmt: skip

    # A promoted champion whose model folder is gone: reported, the loaded one keeps serving.
    row = champion_rows(champion.database).with_columns(
        pl.lit("run3:meta_controller").alias("champion_id"),
        pl.lit(datetime.now(UTC)).cast(pl.Datetime("us", "UTC")).alias("promoted_at"),
        pl.lit("/nowhere/meta/fold0").alias("model_path"),
    )
    with duckdb.connect(database) as con:
        append_champion(con, row)
    assert not svc.refresh() and svc.current is second
    assert svc.problem is not None
    assert "champion run3:meta_controller could not be loaded" in svc.problem
    assert "/nowhere/meta/fold0" in svc.problem
    # The same broken version is not loaded again on the next checks.
    assert not svc.refresh() and not svc.refresh()
    assert loads.count("run3:meta_controller") == 1 and svc.current is second
    assert svc.current.decide(svc.current.bar(None)).champion_id == "run1:meta_controller"
    # One problem for the broken version, not one per check.
    assert svc.reloads == 2 and [e for e, _ in events].count("problem") == 1


def test_a_missing_file_is_a_problem_not_a_crash(tmp_path: Any) -> None:
    svc = ChampionService(str(tmp_path / "absent.duckdb"))
    assert not svc.refresh() and svc.current is None
    assert svc.problem is not None and "absent.duckdb cannot be read" in svc.problem
    assert not (tmp_path / "absent.duckdb").exists()  # read-only: nothing created
