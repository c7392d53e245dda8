"""The `exchange` resource builds the configured client and rejects inconsistent configuration."""

import io
import logging
from datetime import timedelta

import dagster as dg
import pydantic
import pytest

from carry_pipeline.defs.ingestion.resources import ExchangeResource
from carry_pipeline.lib.exchanges import (
    CcxtExchange,
    PermanentExchangeError,
    ReplayExchange,
    SimulatedExchange,
)


def test_each_kind_builds_its_client(tmp_path) -> None:
    assert isinstance(ExchangeResource().client(), SimulatedExchange)  # the offline default
    ccxt_client = ExchangeResource(kind="ccxt", api_url="http://127.0.0.1:1").client()
    assert isinstance(ccxt_client, CcxtExchange)
    assert ccxt_client.exchange_name("perp") == "binanceusdm"
    assert isinstance(
        ExchangeResource(kind="replay", replay_path=str(tmp_path)).client(), ReplayExchange
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"kind": "replay"}, "replay_path is not set"),  # replay without a folder
        ({"timeframe": "15x"}, "exchange.timeframe"),  # not a ccxt timeframe
        ({"kind": "ccxt", "perp_exchange": "nope"}, "not a ccxt exchange id"),  # unknown venue
        ({"kind": "ccxt", "max_retries": -1}, "max_retries"),  # retries must be bounded and >= 0
    ],
)
def test_bad_configuration_is_permanent(config: dict, message: str) -> None:
    with pytest.raises((PermanentExchangeError, ValueError), match=message):
        ExchangeResource(**config).client()


def test_credentials_are_not_in_the_repr_of_env_bound_config(monkeypatch) -> None:
    # Keys come from dg.EnvVar: the definitions bind them only when the variables exist.
    from carry_pipeline.defs.ingestion.resources import resources

    monkeypatch.setenv("CARRY_API_KEY", "k-123")
    defs = resources()
    exchange = defs.resources["exchange"]
    assert "k-123" not in repr(exchange)
    monkeypatch.delenv("CARRY_API_KEY")
    assert resources().resources["exchange"].api_key is None


# --- numeric config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("page_limit", 0), ("timeout_ms", -5), ("max_retries", -1), ("backoff_s", -1.0)],
)
def test_bad_numeric_config_fails_when_configured(field: str, value: float) -> None:
    # At construction, naming the field: no client is built, no request retried.
    with pytest.raises(pydantic.ValidationError, match=rf"{field}\n.*greater than"):
        ExchangeResource(kind="ccxt", **{field: value})


def test_bad_numeric_launch_config_fails_at_resource_init() -> None:
    calls = []

    @dg.asset
    def probe(exchange: ExchangeResource) -> None:
        calls.append(exchange.page_limit)

    with pytest.raises(dg.DagsterResourceFunctionError) as info:
        dg.materialize(
            [probe],
            resources={"exchange": ExchangeResource()},
            run_config={"resources": {"exchange": {"config": {"kind": "ccxt", "page_limit": 0}}}},
        )
    assert "page_limit" in str(info.value.__cause__) and calls == []


# --- credentials ---------------------------------------------------------------------------------

README_CONFIG = {
    "kind": "ccxt",
    "spot_exchange": "binance",
    "perp_exchange": "binanceusdm",
    "timeframe": "15m",
}


@pytest.mark.parametrize("launch", [None, README_CONFIG, {"kind": "ccxt", "page_limit": 500}])
def test_launch_config_keeps_the_env_bound_keys(monkeypatch, launch: dict | None) -> None:
    # A launch config for `exchange` replaces the code location's dg.EnvVar bindings; the keys
    # must still reach the ccxt clients.
    from carry_pipeline.defs.ingestion.resources import resources

    monkeypatch.setenv("CARRY_API_KEY", "k-123")
    monkeypatch.setenv("CARRY_API_SECRET", "s-456")
    seen: list[tuple] = []

    @dg.asset
    def probe(exchange: ExchangeResource) -> None:
        client = exchange.model_copy(update={"kind": "ccxt"}).client()
        for market in ("spot", "perp"):
            ccxt_client = client.client(market)
            seen.append((market, ccxt_client.apiKey, ccxt_client.secret))

    run_config = {"resources": {"exchange": {"config": launch}}} if launch else None
    result = dg.materialize([probe], resources=resources().resources, run_config=run_config)
    assert result.success
    assert seen == [("spot", "k-123", "s-456"), ("perp", "k-123", "s-456")]


def test_no_key_reaches_any_log_or_the_event_log(monkeypatch, caplog, capfd, stub) -> None:
    # Keys set, Python logging at DEBUG (ccxt's logger prints request headers, X-MBX-APIKEY
    # included, for signed calls): a signed call and a fetch against the stub through Dagster.
    from carry_pipeline.defs.ingestion.resources import resources
    from tests.pipeline.ingestion.conftest import DAY, binance_markets

    key, secret = "k-LEAKCHECK-7f3a9", "s-LEAKCHECK-c41e2"
    monkeypatch.setenv("CARRY_API_KEY", key)
    monkeypatch.setenv("CARRY_API_SECRET", secret)
    caplog.set_level(logging.DEBUG)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)

    @dg.asset
    def probe(context: dg.AssetExecutionContext, exchange: ExchangeResource) -> dg.Output[int]:
        client = exchange.client()
        binance_markets(client)
        client.client("spot").fetch_currencies()  # signed: sends X-MBX-APIKEY
        frame = client.fetch_ohlcv("BTC/USDT", "spot", "5m", DAY, DAY + timedelta(hours=1))
        context.log.debug(f"fetched {frame.height} rows with {client.client('spot').headers}")
        return dg.Output(frame.height, metadata={"rows": frame.height})

    instance = dg.DagsterInstance.ephemeral()
    try:
        result = dg.materialize(
            [probe],
            resources=resources().resources,
            run_config={
                "resources": {"exchange": {"config": {"kind": "ccxt", "api_url": stub.url}}}
            },
            instance=instance,
        )
    finally:
        logging.getLogger().removeHandler(handler)
    assert result.success and result.output_for_node("probe") == 12
    logged = caplog.text + stream.getvalue()
    assert "X-MBX-APIKEY" in logged and "***" in logged  # the header line was logged, redacted
    out, err = capfd.readouterr()
    events = "".join(repr(e) for e in instance.all_logs(result.run_id))
    events += "".join(repr(e) for e in result.all_events)
    for text in (logged, out, err, events, "".join(r.getMessage() for r in caplog.records)):
        assert key not in text and secret not in text
