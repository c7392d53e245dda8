"""The `exchange` resource builds the configured client and rejects inconsistent configuration."""

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
