"""The inference service over real HTTP on loopback (uvicorn on a thread; the reload test runs
`python -m carry_pipeline.serve` in a subprocess): its answers equal `ChampionPolicy.predict` on the
same observation, the latest bar's observation is the one a paper session opens with, bad input is
a 422 naming the problem, `/health` and `/metrics` describe the service, and a newly promoted
champion is switched to while a file locked by a writer keeps the loaded one serving."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from stable_baselines3 import PPO

from carry_env.config import EnvConfig
from carry_env.env import CarryTradeEnv
from carry_env.market import MarketData
from carry_pipeline.lib.evaluation.champion import append_champion
from carry_pipeline.lib.evaluation.stage import INFERENCE_THREADS
from carry_pipeline.lib.serving.requests import iso
from carry_pipeline.lib.trading.champion import (
    ChampionPolicy,
    champion_source,
    load_champion_policy,
)
from carry_pipeline.lib.trading.executor import BookExecutor, TakerFees
from carry_pipeline.lib.training.policy import pinned_threads
from tests.pipeline.serving.conftest import (
    ChampionStore,
    champion_rows,
    process_server,
    stored_market,
    thread_server,
    wait_for,
    writable,
)
from tests.pipeline.trading.conftest import FixedBooks

pytestmark = pytest.mark.slow  # the trained champion (session fixture) takes 20-40 s

CHAMPION = "run1:meta_controller"


@dataclass(frozen=True)
class Served:
    """A running service and what the test compares it with."""

    url: str
    store: ChampionStore
    market: MarketData
    policy: ChampionPolicy
    """The champion loaded directly (`load_champion_policy`), for reference answers."""


@pytest.fixture(scope="module")
def served(
    trained_champion: ChampionStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    database = tmp_path_factory.mktemp("served") / "carry.duckdb"
    shutil.copy(trained_champion.database, database)
    store = ChampionStore(database, trained_champion.model_path)
    market = stored_market(database)
    policy = load_champion_policy(str(database), champion_source(str(database)), market)
    with thread_server(database) as url:
        yield Served(url, store, market, policy)


def paper_env(market: MarketData, bar: int) -> tuple[CarryTradeEnv, np.ndarray]:
    """The env `run_paper_session` builds (paper executor) with a live feed's open-ended episode
    starting at `bar`, and its first observation."""
    config = EnvConfig()
    executor = BookExecutor(market.symbols, FixedBooks({}), TakerFees.from_env_config(config))
    env = CarryTradeEnv(market, config, executor=executor)
    obs, _ = env.reset(seed=0, options={"start": bar, "open_end": True})
    return env, obs


def backtest_env(market: MarketData, bar: int) -> tuple[CarryTradeEnv, np.ndarray]:
    """The backtest's env (sim executor) reset at `bar`, and its first observation."""
    env = CarryTradeEnv(market, EnvConfig())
    obs, _ = env.reset(seed=0, options={"start": bar})
    return env, obs


def reference(policy: ChampionPolicy, env: CarryTradeEnv, obs: np.ndarray) -> dict[str, Any]:
    """What `ChampionPolicy.predict` / `explain` give on `obs` as the first decision on `env`,
    keyed by symbol as the service answers."""
    symbols = env.market.symbols
    policy.reset(env)
    with pinned_threads(INFERENCE_THREADS):
        action, _ = policy.predict(obs, deterministic=True)
    explained = policy.explain(obs)
    outputs = dict(explained["expert_outputs"])
    per_symbol = lambda values: dict(zip(symbols, values, strict=True))  # noqa: E731
    return {
        "action": per_symbol(np.asarray(action, dtype=np.float64).tolist()),
        "expert_outputs": {k: per_symbol(v) for k, v in outputs.items() if k != "exposure"},
        "gating_weights": explained["gating_weights"],
        "anomaly_multiplier": per_symbol(outputs["exposure"]),
    }


def decided(body: dict[str, Any]) -> dict[str, Any]:
    """The decision part of an answer."""
    return {
        k: body[k] for k in ("action", "expert_outputs", "gating_weights", "anomaly_multiplier")
    }


def post(url: str, body: Any) -> httpx.Response:
    return httpx.post(f"{url}/action", json=body, timeout=30)


def test_a_posted_observation_gets_what_champion_policy_predict_returns(served: Served) -> None:
    m, url = served.market, served.url
    last = m.n_bars - 1
    names = list(CarryTradeEnv(m).observation_names)
    env, base = backtest_env(m, last - 1)
    tweaked = base.copy()
    # Another account: less cash, in drawdown, long carry on BTC. The meta-controller and the
    # experts see these entries, so the answer must change with them.
    for name, value in {"cash": 0.4, "drawdown": 0.05, "BTC/USDT:USDT:spot_exposure": 0.3,
                        "BTC/USDT:USDT:perp_exposure": -0.3}.items():  # fmt: skip
        tweaked[names.index(name)] = value
    answers = []
    for bar, obs in [(last - 1, base), (last - 1, tweaked), (last - 6, base)]:
        env, _ = backtest_env(m, bar)
        r = post(url, {"observation": obs.tolist(), "ts": iso(int(m.ts[bar]))})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["champion_id"] == CHAMPION and body["ts"] == iso(int(m.ts[bar]))
        assert "observation" not in body  # posted, not built
        assert decided(body) == reference(served.policy, env, obs)  # the same numbers
        answers.append(decided(body))
    # The posted account state and the bar's windows both reach the decision.
    assert answers[0]["gating_weights"] != answers[1]["gating_weights"]
    assert answers[0]["expert_outputs"] != answers[2]["expert_outputs"]
    # Requests are independent: the first one again, after the others, answers the same.
    again = post(url, {"observation": base.tolist(), "ts": iso(int(m.ts[last - 1]))})
    assert decided(again.json()) == answers[0]
    # Without ts a posted observation is decided at the last bar, as a paper session there.
    env, obs = paper_env(m, last)
    r = post(url, {"observation": obs.tolist()})
    assert r.json()["ts"] == iso(int(m.ts[last]))
    assert decided(r.json()) == reference(served.policy, env, obs)


def test_latest_decides_on_the_observation_a_paper_session_opens_with(served: Served) -> None:
    m, url = served.market, served.url
    last = m.n_bars - 1
    env, obs = paper_env(m, last)
    r = post(url, {"latest": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ts"] == iso(int(m.ts[last])) and body["symbols"] == list(m.symbols)
    assert body["observation"] == obs.tolist()
    assert decided(body) == reference(served.policy, env, obs)
    # A stored bar before the last: the backtest's own env builds the same observation there.
    env, obs = backtest_env(m, last - 3)
    body = post(url, {"ts": iso(int(m.ts[last - 3]))}).json()
    assert body["observation"] == obs.tolist()
    assert decided(body) == reference(served.policy, env, obs)
    # One symbol: that asset's numbers of the full answer, nothing else.
    full = post(url, {"latest": True}).json()
    eth = post(url, {"latest": True, "symbols": ["ETH/USDT:USDT"]}).json()
    assert eth["action"] == {"ETH/USDT:USDT": full["action"]["ETH/USDT:USDT"]}
    assert eth["anomaly_multiplier"].keys() == {"ETH/USDT:USDT"}
    assert eth["gating_weights"] == full["gating_weights"]


def _observation(n: int, at: int | None = None, value: str = "0.0") -> bytes:
    # A JSON observation of n zeros with `value` (raw JSON text) at index `at`.
    values = ["0.0"] * n
    if at is not None:
        values[at] = value
    return ('{"observation": [' + ", ".join(values) + "]}").encode()


BAD_INPUTS = [
    # (case, body, what the message must say); N is the champion's observation size
    ("too short", lambda n, ts: _observation(n - 4),
     lambda n: f"observation has {n - 4} values; the champion expects {n}"),
    ("too long", lambda n, ts: _observation(n + 1),
     lambda n: f"observation has {n + 1} values; the champion expects {n}"),
    ("NaN", lambda n, ts: _observation(n, 2, "NaN"),
     lambda n: "1 non-finite value: [2] (BTC/USDT:USDT:basis_10bp) = nan"),
    ("infinity", lambda n, ts: _observation(n, n - 1, "-Infinity"),
     lambda n: f"1 non-finite value: [{n - 1}]"),
    ("beyond the bounds", lambda n, ts: _observation(n, 0, "1e9"),
     lambda n: "outside the env's bounds +-1e+06: [0] (BTC/USDT:USDT:spot_vs_sma_pct)"),
    ("unknown symbol", lambda n, ts: b'{"latest": true, "symbols": ["DOGE/USDT:USDT"]}',
     lambda n: "unknown symbol 'DOGE/USDT:USDT'; the champion trades ['BTC/USDT:USDT'"),
    ("malformed JSON", lambda n, ts: b'{"latest": tru', lambda n: "JSON decode error"),
    ("not an object", lambda n, ts: b"[1, 2, 3]", lambda n: "valid dictionary"),
    ("observation is a string", lambda n, ts: b'{"observation": "0.1, 0.2"}',
     lambda n: "observation: Input should be a valid list"),
    ("a string value", lambda n, ts: _observation(n, 2, '"0.5"'),
     lambda n: "observation.2: Input should be a valid number"),
    ("a null value", lambda n, ts: _observation(n, 5, "null"),
     lambda n: "observation.5: Input should be a valid number"),
    ("latest is not a boolean", lambda n, ts: b'{"latest": "yes"}',
     lambda n: "latest: Input should be a valid boolean"),
    ("symbols is a string", lambda n, ts: b'{"latest": true, "symbols": "BTC/USDT:USDT"}',
     lambda n: "symbols: Input should be a valid list"),
    ("no bar and no observation", lambda n, ts: b"{}",
     lambda n: "give an observation, latest: true, or the ts of a stored bar"),
    ("latest and ts", lambda n, ts: f'{{"latest": true, "ts": "{ts}"}}'.encode(),
     lambda n: "give latest: true or ts, not both"),
    ("ts between bars", lambda n, ts: f'{{"ts": "{ts[:14]}30:00Z"}}'.encode(),
     lambda n: "is not a bar of the stored features"),
    ("ts without a zone", lambda n, ts: f'{{"ts": "{ts[:-1]}"}}'.encode(),
     lambda n: "has no time zone"),
    ("ts not a time", lambda n, ts: b'{"ts": "yesterday"}', lambda n: "ts: Input should be"),
    ("recurrent state", lambda n, ts: b'{"latest": true, "state": [0.0]}',
     lambda n: "state: Extra inputs are not permitted"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_422_that_says_what_was_wrong(
    served: Served, case: str, body: Any, message: Any
) -> None:
    n = len(CarryTradeEnv(served.market).observation_names)
    ts = iso(int(served.market.ts[-1]))
    r = httpx.post(
        f"{served.url}/action",
        content=body(n, ts),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 422, r.text
    assert message(n) in r.json()["detail"]


def test_health_describes_the_served_champion(served: Served) -> None:
    r = httpx.get(f"{served.url}/health", timeout=30)
    assert r.status_code == 200
    h, m = r.json(), served.market
    names = list(CarryTradeEnv(m).observation_names)
    assert h["status"] == "ok" and h["store_problem"] is None
    assert (h["champion_id"], h["model_path"], h["fold"]) == (CHAMPION, served.store.model_path, 0)
    assert h["observation_size"] == len(names) == 141 and h["observation_names"] == names
    assert h["symbols"] == ["BTC/USDT:USDT", "ETH/USDT:USDT"] and h["bars"] == m.n_bars
    assert h["last_bar"] == iso(int(m.ts[-1])) and h["reloads"] == 1
    assert datetime.fromisoformat(h["loaded_at"]) <= datetime.now(UTC)


def _samples(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _request_key(route: str, method: str, status: int) -> tuple[str, frozenset]:
    labels = {"route": route, "method": method, "status": str(status)}
    return ("carry_serve_requests_total", frozenset(labels.items()))


def test_metrics_count_requests_by_route_and_status(served: Served) -> None:
    url = served.url
    before = _samples(url)
    for _ in range(2):
        assert post(url, {"latest": True}).status_code == 200
    assert post(url, {"latest": True, "symbols": ["XRP"]}).status_code == 422
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    assert httpx.get(f"{url}/no/such/page", timeout=30).status_code == 404
    after = _samples(url)
    delta = lambda key: after.get(key, 0.0) - before.get(key, 0.0)  # noqa: E731
    assert delta(_request_key("/action", "POST", 200)) == 2
    assert delta(_request_key("/action", "POST", 422)) == 1
    assert delta(_request_key("/health", "GET", 200)) == 1
    assert delta(_request_key("unmatched", "GET", 404)) == 1
    count = ("carry_serve_request_duration_seconds_count", frozenset({("route", "/action")}))
    assert delta(count) == 3
    assert after[("carry_serve_champion_reloads_total", frozenset({("reason", "first")}))] == 1
    info = {"champion_id": CHAMPION, "model_path": served.store.model_path, "fold": "0"}
    assert after[("carry_serve_champion_info", frozenset(info.items()))] == 1


def _perturbed_copy(model_path: str, dest: Path) -> str:
    # The champion's meta-controller with other gating weights: its action head moved by noise.
    shutil.copytree(model_path, dest)
    model = PPO.load(dest / "model.zip", device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.policy.action_net.parameters():
            p.add_(torch.randn(p.shape, generator=generator))
    model.save(dest / "model.zip")
    return str(dest)


def _health(url: str) -> httpx.Response:
    return httpx.get(f"{url}/health", timeout=30)


def test_a_promoted_champion_is_served_and_a_locked_file_keeps_the_loaded_one(
    champion: ChampionStore, tmp_path: Path
) -> None:
    database = champion.database
    row_a = champion_rows(database)
    row_b = row_a.with_columns(
        pl.lit("run2:meta_controller").alias("champion_id"),
        pl.lit("run2").alias("run_id"),
        pl.lit(datetime.now(UTC)).cast(row_a.schema["promoted_at"]).alias("promoted_at"),
        pl.lit(_perturbed_copy(champion.model_path, tmp_path / "meta_b")).alias("model_path"),
    )
    with writable(database) as con:
        con.execute("delete from models.champion")
    with process_server(database, poll_seconds=0.2) as url:
        # Nothing promoted yet: 503 saying so, on /health and /action alike.
        r = _health(url)
        assert r.status_code == 503 and "no champion has been promoted" in r.json()["detail"]
        r = post(url, {"latest": True})
        assert r.status_code == 503 and "no champion has been promoted" in r.json()["detail"]
        with writable(database) as con:
            append_champion(con, row_a)
        wait_for(lambda: _health(url).status_code == 200, 120, "champion A to load")
        a = post(url, {"latest": True}).json()
        assert a["champion_id"] == CHAMPION
        # A writer holds the file (DuckDB: one writing process) and promotes B meanwhile.
        con = writable(database)
        try:
            append_champion(con, row_b)
            health = wait_for(
                lambda: (h := _health(url).json()).get("store_problem") and h, 60, "the lock"
            )
            assert "lock" in health["store_problem"].lower() and health["status"] == "degraded"
            assert health["champion_id"] == CHAMPION  # still serving A
            locked = post(url, {"latest": True})
            assert locked.status_code == 200 and decided(locked.json()) == decided(a)
        finally:
            con.close()
        health = wait_for(
            lambda: (h := _health(url).json())["champion_id"] == "run2:meta_controller" and h,
            120,
            "champion B to load",
        )
        assert health["status"] == "ok" and health["reloads"] == 2
        assert health["model_path"] == row_b["model_path"][0]
        b = post(url, {"latest": True}).json()
        assert b["champion_id"] == "run2:meta_controller"
        market = stored_market(database)
        policy = load_champion_policy(str(database), champion_source(str(database)), market)
        env, obs = paper_env(market, market.n_bars - 1)
        assert decided(b) == reference(policy, env, obs)  # B's numbers
        assert b["gating_weights"] != a["gating_weights"]  # not A's
        samples = _samples(url)
        reloads = {dict(k[1])["reason"]: v for k, v in samples.items()
                   if k[0] == "carry_serve_champion_reloads_total"}  # fmt: skip
        assert reloads == {"first": 1.0, "champion": 1.0}
        assert samples[("carry_serve_store_problems_total", frozenset())] >= 2  # empty, locked
        info = [dict(k[1]) for k in samples if k[0] == "carry_serve_champion_info"]
        assert [i["champion_id"] for i in info] == ["run2:meta_controller"]
