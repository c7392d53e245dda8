"""The code location loads from `defs/`, every job resolves, the schedule targets yesterday."""

from datetime import UTC, datetime

import dagster as dg
import pytest

from carry_pipeline.definitions import defs
from carry_pipeline.defs.ingestion.partitions import configured_assets


def test_definitions_load_and_every_job_resolves() -> None:
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {
        "raw/raw_spot_ohlcv",
        "raw/raw_perp_ohlcv",
        "raw/raw_funding_rates",
        "raw/raw_order_book",
    } <= keys
    jobs = defs.resolve_all_job_defs()
    assert "ingest_job" in {j.name for j in jobs}
    for job in jobs:
        resolved = defs.resolve_job_def(job.name)
        assert resolved.graph.node_defs, job.name
    assert {"io_manager", "duckdb", "exchange"} <= set(defs.resources or {})


def test_raw_assets_share_the_exchange_pool_and_raw_schema() -> None:
    graph = defs.resolve_asset_graph()
    for name in ("raw_spot_ohlcv", "raw_perp_ohlcv", "raw_funding_rates", "raw_order_book"):
        node = graph.get(dg.AssetKey(["raw", name]))
        assert node.group_name == "ingestion"
        assert node.pools == {"exchange_api"}
        assert node.backfill_policy == dg.BackfillPolicy.single_run()  # one run per asset


# Dagster tags multi-partition runs "dagster/partition/<dimension>" itself, then warns about it.
@pytest.mark.filterwarnings("ignore:Non-compliant tag keys:DeprecationWarning")
def test_ingest_schedule_requests_yesterday_for_every_asset() -> None:
    schedule = defs.resolve_schedule_def("ingest_schedule")
    context = dg.build_schedule_context(
        repository_def=defs.get_repository_def(),
        scheduled_execution_time=datetime(2024, 3, 5, 0, 30, tzinfo=UTC),
    )
    requests = list(schedule.evaluate_tick(context).run_requests or [])
    keys = sorted(r.partition_key for r in requests)
    assert keys == sorted(f"{b}|2024-03-04" for b in configured_assets())


def test_configured_assets_validation() -> None:
    assert configured_assets(" btc, eth ,btc") == ["BTC", "ETH"]
    try:
        configured_assets("BTC/USDT")
    except ValueError as exc:
        assert "invalid: ['BTC/USDT']" in str(exc)
    else:
        raise AssertionError("a symbol is not a base currency")
