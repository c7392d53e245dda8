"""The champion end to end: a tiny meta-controller (and its four experts, the long-term one an LSTM)
trained through the models assets on the simulated exchange's features, a `models.champion` row
for it, `champion_model_sensor` evaluated against a real instance in which
`reports/champion_model` materialised, and the run it requests executed with `paper_trading_job`
for two simulated days: ledger rows with the experts' outputs and the gating weights, and the
tracking report in the output's metadata; a session stopped and resumed acts as an uninterrupted
one, the LSTM's state restored from the ledger; and the champion on the ccxt feed (the loopback
Binance stub), its windows growing with the live bars, seeing the pipeline's observations."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import numpy as np
import polars as pl
import pytest
import torch

from carry_env.config import EnvConfig
from carry_env.env import CarryTradeEnv
from carry_env.market import MarketData
from carry_pipeline.defs.trading.jobs import paper_trading_job
from carry_pipeline.defs.trading.sensors import champion_model_sensor
from carry_pipeline.lib.evaluation.champion import CHAMPION_SCHEMA, append_champion
from carry_pipeline.lib.exchanges import CcxtExchange
from carry_pipeline.lib.exchanges.simulated import SimulatedExchange
from carry_pipeline.lib.features.bars import MarketBarsConfig, build_market_bars
from carry_pipeline.lib.features.carry import CarryFeaturesConfig, build_carry_features
from carry_pipeline.lib.features.folds import FOLD_SCHEMA
from carry_pipeline.lib.features.normalisation import compute_normalisation_stats
from carry_pipeline.lib.features.pipeline import build_market_frame, combine_features
from carry_pipeline.lib.features.sentiment import build_sentiment_windows
from carry_pipeline.lib.features.windows import TrainingWindowsConfig, write_training_windows
from carry_pipeline.lib.trading.feeds import SENTIMENT_HISTORY, VirtualClock, fetch_raw
from carry_pipeline.lib.trading.ledger import Ledger
from carry_pipeline.lib.trading.policy_state import unpack_state
from carry_pipeline.lib.training.observation import ObservationBuilder, WindowSet
from carry_pipeline.lib.training.policy import ExpertPolicy
from tests.pipeline.models.test_model_assets import EXPERTS, TINY, _materialize, meta_controller
from tests.pipeline.trading.feed_setup import load_stub, write_raw
from tests.pipeline.trading.test_ccxt_job import _live_books
from tests.pipeline.trading.venue_stub import TradingStub

START = datetime(2024, 1, 1, tzinfo=UTC)
DAYS = 12
HIGHER = ("4h",)
HOUR = timedelta(hours=1)
# The long-term expert in its LSTM form (sb3-contrib RecurrentPPO), so the champion is recurrent.
RECURRENT = json.dumps(
    {**json.loads(TINY), "algorithm": "RecurrentPPO",
     "observation": {"history_windows": 1, "history_stride": 1}}
)  # fmt: skip
# The meta-controller decides every 2 hourly bars (its default is 8 bars), so a 4-bar session has
# both decision bars and held bars, one decision of them on a bar polled live.
META = json.dumps({**json.loads(TINY), "decision_bars": 2})


def _upstream(database: Path, windows_root: Path) -> None:
    # The features and datasets tables the models assets read, from the simulated exchange (seed
    # 1) by the pipeline's functions, with one fold: the latest window over every usable bar.
    end = START + timedelta(days=DAYS)
    exchange = SimulatedExchange(seed=1, clock=lambda: end)
    raw = fetch_raw(exchange, ("BTC", "ETH"), "1h", START, end)
    bars = build_market_bars(raw["spot"], raw["perp"], raw["funding"], raw["order_book"],
                             MarketBarsConfig(bar="1h"))  # fmt: skip
    carry = build_carry_features(bars, CarryFeaturesConfig(higher_timeframes=HIGHER))
    sentiment = build_sentiment_windows(
        exchange.fetch_sentiment(START - SENTIMENT_HISTORY, end), bars["ts"]
    )
    features = combine_features(carry, sentiment)
    usable = features.filter(~pl.col("warmup"))["ts"]
    hour = timedelta(hours=1)
    folds = pl.DataFrame([{"fold": 0, "is_latest": True, "scheme": "anchored",
                           "train_start": usable.min(), "train_end": usable.max() + hour,
                           "test_start": None, "test_end": None, "embargo_hours": 1.0}],
                         schema=FOLD_SCHEMA)  # fmt: skip
    stats = compute_normalisation_stats(features, folds)
    manifest = write_training_windows(
        features, stats, folds, windows_root, TrainingWindowsConfig(lookback=8), bar=hour
    )
    tables = {"features.market_bars": bars, "features.carry_features": carry,
              "features.sentiment_windows": sentiment, "datasets.walk_forward_folds": folds,
              "datasets.normalisation_stats": stats,
              "datasets.training_windows": manifest}  # fmt: skip
    with duckdb.connect(str(database)) as con:
        for name, table in tables.items():
            con.execute(f"create schema if not exists {name.split('.')[0]}")
            con.register("t", table.to_arrow())
            con.execute(f"create or replace table {name} as select * from t")
            con.unregister("t")


def build_champion_store(root: Path) -> tuple[Path, str]:
    """Under `root`: the upstream tables, the experts and meta-controller trained through the
    models assets, and a `models.champion` row for the meta-controller; `(database, model_path)`.
    """
    torch.set_num_threads(1)
    store = {"database": root / "carry.duckdb", "models": root / "models"}
    _upstream(store["database"], root / "windows")
    assert _materialize(store, [*EXPERTS, meta_controller], long_term=RECURRENT, meta=META).success
    with duckdb.connect(str(store["database"])) as con:
        model = con.execute("select model_path, data_sha256, trained_at from "
                            "models.meta_controller where fold = 0").fetchone()  # fmt: skip
        assert model is not None
        row = pl.DataFrame([{"champion_id": "run1:meta_controller", "run_id": "run1",
                             "promoted_at": datetime.now(UTC), "policy": "meta_controller",
                             "model_path": model[0], "fold": 0, "data_sha256": model[1],
                             "trained_at": model[2], "fold_metrics": "[]", "decision": "[]",
                             "rule": "{}"}], schema=CHAMPION_SCHEMA)  # fmt: skip
        append_champion(con, row)
    return store["database"], str(model[0])


@pytest.fixture(scope="module")
def champion_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return build_champion_store(tmp_path_factory.mktemp("champion"))


@dg.asset(key=["reports", "champion_model"])
def champion_model_stand_in() -> dg.MaterializeResult:
    """Test-only stand-in for the reports stage's asset (its `champion_id` metadata)."""
    return dg.MaterializeResult(metadata={"champion_id": "run1:meta_controller"})


@pytest.mark.slow
def test_sensor_launches_a_paper_session_of_the_champion(
    champion_store: tuple[Path, str], tmp_path: Path
) -> None:
    database, _ = champion_store
    defs = dg.Definitions(assets=[champion_model_stand_in], jobs=[paper_trading_job],
                          sensors=[champion_model_sensor])  # fmt: skip
    with dg.instance_for_test() as instance:
        dg.materialize([champion_model_stand_in], instance=instance)
        tick = champion_model_sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, definitions=defs)
        )
        [request] = tick.run_requests
        assert request.run_key == "champion-run1:meta_controller"
        config = request.run_config["ops"]["paper_session"]["config"]
        # The requested config as it is, plus where this test's store is and a short session.
        config = {**config, "database": str(database), "days": DAYS,
                  "higher_timeframes": list(HIGHER), "max_bars": 48,
                  "report_dir": str(tmp_path / "reports")}  # fmt: skip
        result = paper_trading_job.execute_in_process(
            run_config={"ops": {"paper_session": {"config": config}}},
            instance=instance,
            tags=request.tags,
        )
    assert result.success
    [out] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    meta = {k: v.value for k, v in out.event_specific_data.metadata.items()}
    assert meta["new_bars"] == meta["bars"] == 48 and abs(meta["pnl_gap"]) <= 0.15
    assert Path(meta["tracking_plot_path"]).read_bytes()[:4] == b"\x89PNG"
    session = "champion-run1:meta_controller"
    with duckdb.connect(str(database), read_only=True) as con:
        assert con.execute("select count(*) from paper.sessions where session_id = ?",
                           [session]).fetchone() == (1,)  # fmt: skip
        assert con.execute("select count(*) from paper.equity where session_id = ?",
                           [session]).fetchone() == (48,)  # fmt: skip
        rows = con.execute("select expert_outputs, gating_weights from paper.decisions "
                           "where session_id = ? and feed_fault = '' order by bar",
                           [session]).fetchall()  # fmt: skip
    assert len(rows) == 48
    # Suggestions are stored on the meta-controller's decision bars (every 2nd), null between.
    decided = [r for r in rows if json.loads(r[1]) is not None]
    assert len(decided) == 24 and all(json.loads(r[0]) is None for r in rows if r not in decided)
    outputs, weights = json.loads(decided[-1][0]), json.loads(decided[-1][1])
    assert {"short_term", "long_term", "sentiment", "exposure"} <= set(outputs)
    assert len(outputs["short_term"]) == 2  # one suggestion per asset
    assert set(weights) == {"short_term", "long_term", "sentiment", "flat"}
    assert sum(weights.values()) == pytest.approx(1.0)


@pytest.mark.slow
def test_a_model_folder_that_is_gone_fails_naming_it(champion_store: tuple[Path, str]) -> None:
    database, _ = champion_store
    config = {"session_id": "gone", "database": str(database), "policy": "/nowhere/meta/fold0"}
    result = paper_trading_job.execute_in_process(
        run_config={"ops": {"paper_session": {"config": config}}}, raise_on_error=False
    )
    assert not result.success
    errors = " ".join(str(e.event_specific_data.error) for e in result.all_events
                      if e.event_type_value == "STEP_FAILURE")  # fmt: skip
    assert "model folder /nowhere/meta/fold0 does not exist" in errors


def _run(database: Path, tmp_path: Path, session: str, max_bars: int) -> None:
    config = {"session_id": session, "policy": "champion", "database": str(database),
              "days": DAYS, "higher_timeframes": list(HIGHER), "max_bars": max_bars,
              "report_dir": str(tmp_path / "reports")}  # fmt: skip
    result = paper_trading_job.execute_in_process(
        run_config={"ops": {"paper_session": {"config": config}}}
    )
    assert result.success


@pytest.mark.slow
def test_a_resumed_champion_session_acts_as_an_uninterrupted_one(
    champion_store: tuple[Path, str], tmp_path: Path
) -> None:
    # "split" stops after 10 bars and is resumed to 24; "whole" runs 24 at once. The resume
    # restores the meta-controller's state (the LSTM expert's (h, c), the running statistics)
    # from paper.policy_state instead of asking the models again, and every decision matches.
    database, _ = champion_store
    _run(database, tmp_path, "whole", 24)
    _run(database, tmp_path, "split", 10)
    ledger = Ledger(database)
    try:
        packed = ledger.policy_state("split", 9)
    finally:
        ledger.close()
    assert packed is not None
    core = unpack_state(packed)["policy"]["core"]
    lstm = [s for s in core["states"] if isinstance(s, tuple)]
    assert len(lstm) == 1 and lstm[0][0].shape[-1] > 0  # the long-term expert's (h, c)
    assert np.abs(lstm[0][0]).sum() > 0.0
    _run(database, tmp_path, "split", 24)
    sql = ("select bar, policy_action, expert_outputs, gating_weights from paper.decisions "
           "where session_id = ? order by bar")  # fmt: skip
    with duckdb.connect(str(database), read_only=True) as con:
        split = con.execute(sql, ["split"]).fetchall()
        whole = con.execute(sql, ["whole"]).fetchall()
    assert len(split) == 24 and split == whole


def _perturb_kline(stub: TradingStub, base: str, open_at: datetime, factor: float) -> None:
    # The stub's perp kline of `base` opening at `open_at` closes `factor` times higher.
    rows = stub.klines[("/fapi/v1/klines", f"{base}USDT", "1h")]
    [i] = [j for j, r in enumerate(rows) if r[0] == int(open_at.timestamp() * 1000)]
    close = float(rows[i][4]) * factor
    rows[i] = [*rows[i][:2], f"{max(float(rows[i][2]), close):.2f}", rows[i][3], f"{close:.2f}",
               *rows[i][5:]]  # fmt: skip


def _live_champion_run(
    stub: TradingStub, database: Path, tmp_path: Path, session: str, seen: list[Any]
) -> tuple[VirtualClock, list[tuple[Any, ...]], list[Any]]:
    # A 4-bar champion session on the ccxt feed; its decisions and the experts' observations.
    seen.clear()
    feed = {"kind": "ccxt", "api_url": stub.url, "timeout_ms": 1000, "max_retries": 0}
    config = {"session_id": session, "policy": "champion", "database": str(database),
              "start": START.date().isoformat(), "higher_timeframes": list(HIGHER),
              "max_bars": 4, "feed": feed, "report_dir": str(tmp_path / "reports"),
              "risk": {"max_leverage": 5.0, "sentiment_alert_hours": 2.5}}  # fmt: skip
    clock = VirtualClock(START + timedelta(days=DAYS, seconds=2))
    result = paper_trading_job.execute_in_process(
        run_config={"ops": {"paper_session": {"config": config}}},
        resources={"paper_clock": clock},
    )
    assert result.success
    with duckdb.connect(str(database), read_only=True) as con:
        decisions = con.execute("select bar, obs_digest, gating_weights <> 'null' from "
                                "paper.decisions where session_id = ? order by bar",
                                [session]).fetchall()  # fmt: skip
    # A decision bar asks every expert, a held bar the anomaly expert alone (the risk overlay).
    n_experts = len({name for name, _, _ in seen})
    decided = sum(d for _, _, d in decisions)
    asked = decided * n_experts + (len(decisions) - decided)
    return clock, decisions, list(seen[:asked])  # then the tracking backtest


@pytest.mark.slow
def test_champion_on_the_ccxt_feed_sees_the_pipelines_observations(
    champion_store: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The champion on the loopback Binance stub for four bars (the last bar DuckDB holds, then
    # three polled live), its windows growing bar by bar. Every expert's observation at every bar
    # equals, bit for bit, the one built from the pipeline's own training_windows (written by
    # write_training_windows over features computed once over the whole history, with the
    # statistics saved beside the champion) and the backtest env's observation of the same bars.
    # Sentiment is the stored scores carried forward (and agrees with the stored
    # sentiment_windows): 3 h old at the third bar, past a 2.5 h threshold, alerted there.
    # A later bar's kline moved by 3 % leaves every earlier observation unchanged.
    database, model_path = champion_store
    cut = START + timedelta(days=DAYS)
    stub = TradingStub(("BTC", "ETH"))
    load_stub(stub, START, DAYS + 1)
    stub.start()
    try:
        client = CcxtExchange(api_url=stub.url, max_retries=0, clock=lambda: cut)
        write_raw(database, fetch_raw(client, ("BTC", "ETH"), "1h", START, cut))
        # The scores features.sentiment_windows was built from (the last published an hour
        # before the first bar), as sentiment_scores stores them.
        scores = SimulatedExchange(seed=1, clock=lambda: cut).fetch_sentiment(
            START - SENTIMENT_HISTORY, cut
        )
        with duckdb.connect(str(database)) as con:
            con.execute("create or replace table features.sentiment_scores as select * from scores")
        seen: list[Any] = []
        act = ExpertPolicy.act

        def recording(self: ExpertPolicy, obs: dict[str, np.ndarray], *a: Any, **k: Any) -> Any:
            seen.append(
                (self.spec.name, self.spec.observation, {n: v.copy() for n, v in obs.items()})
            )
            return act(self, obs, *a, **k)

        monkeypatch.setattr(ExpertPolicy, "act", recording)
        clock, decisions, observed = _live_champion_run(stub, database, tmp_path, "live", seen)
        assert [b - decisions[0][0] for b, _, _ in decisions] == [0, 1, 2, 3]
        # Decision bars at even UTC hours, held (NaN, no suggestions stored) bars between.
        decided = [b for b, _, d in decisions if d]
        assert len(decided) == 2 and decided[1] - decided[0] == 2

        # The pipeline's view of the same bars, computed after the fact over the whole history.
        truth = CcxtExchange(api_url=stub.url, max_retries=0, clock=lambda: cut + 5 * HOUR)
        raw = fetch_raw(truth, ("BTC", "ETH"), "1h", START, cut + 5 * HOUR)
        raw["order_book"] = _live_books(stub, [cut + timedelta(seconds=2), *clock.waits])
        bars = build_market_bars(raw["spot"], raw["perp"], raw["funding"], raw["order_book"],
                                 MarketBarsConfig(bar="1h"))  # fmt: skip
        carry = build_carry_features(bars, CarryFeaturesConfig(higher_timeframes=HIGHER))
        sentiment = build_sentiment_windows(scores, bars["ts"])
        market = MarketData.from_frame(build_market_frame(bars, carry, sentiment))
        first, last = decisions[0][0], decisions[-1][0]
        assert int(market.ts[decided[0]]) // 10**9 % 7_200 == 0  # the 2-hour period's first bar
        ts = [datetime.fromtimestamp(int(market.ts[b]) / 1e9, tz=UTC) for b in (0, first, last)]
        folds = pl.DataFrame([{"fold": 0, "is_latest": False, "scheme": "anchored",
                               "train_start": ts[0], "train_end": ts[1], "test_start": ts[1],
                               "test_end": ts[2] + HOUR, "embargo_hours": 0.0}],
                             schema=FOLD_SCHEMA)  # fmt: skip
        stats = pl.read_parquet(Path(model_path) / "normalisation_stats.parquet")
        manifest = write_training_windows(
            combine_features(carry, sentiment), stats, folds, tmp_path / "windows",
            TrainingWindowsConfig(lookback=8), bar=HOUR,
        )  # fmt: skip
        windows = WindowSet.from_manifest_row(
            manifest.filter(pl.col("segment") == "test").row(0, named=True)
        )
        digests, env_obs = _replayed(database, "live", market, first)
        assert [d for _, d, _ in decisions] == digests  # the env part, bit for bit
        names = CarryTradeEnv(market, EnvConfig()).observation_names
        # A decision bar asks the three gated experts and the anomaly expert; a held bar asks
        # the anomaly expert alone (the risk overlay reads it every bar).
        asked = [(b, 4 if b in decided else 1) for b, _, _ in decisions]
        assert len(observed) == sum(n for _, n in asked) == 4 * 2 + 2
        at = [b for b, n in asked for _ in range(n)]
        for bar, (name, spec, obs) in zip(at, observed, strict=True):
            assert bar in decided or name == "anomaly"
            builder = ObservationBuilder(windows, spec, market.ts, names, market.symbols)
            want = builder.build(env_obs[bar - first][None, :], np.array([bar]))
            assert float(want["global"][0, -2]) == 1.0  # a complete window at every bar
            for part in ("window", "asset", "global"):
                np.testing.assert_array_equal(obs[part], want[part], err_msg=f"{name} {part}")
        with duckdb.connect(str(database), read_only=True) as con:
            alerts = con.execute("select bar from paper.alerts where session_id = 'live' "
                                 "and kind = 'sentiment_stale'").fetchall()  # fmt: skip
        assert alerts == [(first + 2,)]

        # The BTC perp kline closing at the third bar's close, 3 % higher: the first two bars'
        # observations are the same, bit for bit; the third one's windows are not.
        _perturb_kline(stub, "BTC", cut + HOUR, 1.03)
        _, moved_decisions, moved = _live_champion_run(stub, database, tmp_path, "moved", seen)
        assert [b for b, _, _ in moved_decisions] == [b for b, _, _ in decisions]
        assert len(moved) == len(observed)
        for bar in sorted(set(at)):
            group = [j for j, b in enumerate(at) if b == bar]
            if bar < first + 2:
                for j in group:
                    for part in ("window", "asset", "global"):
                        np.testing.assert_array_equal(moved[j][2][part], observed[j][2][part])
            else:  # from the third bar on (decided or held), the windows hold the moved close
                assert any(
                    not np.array_equal(moved[j][2]["window"], observed[j][2]["window"])
                    for j in group
                )
    finally:
        stub.stop()


def _replayed(
    database: Path, session: str, market: MarketData, start: int
) -> tuple[list[str], list[np.ndarray]]:
    # The backtest env's observations of `market` from `start`, stepped with the session's fills.
    from carry_pipeline.lib.trading.session import _stored_fills

    ledger = Ledger(database)
    try:
        stored = ledger.replay_bars(session)
    finally:
        ledger.close()

    class Stored:
        rb: Any = None

        def execute(self, orders: Any) -> Any:
            return _stored_fills(self.rb, orders, market.symbols)

    ex = Stored()
    env = CarryTradeEnv(market, EnvConfig(), executor=ex)
    obs, _ = env.reset(seed=0, options={"start": start})
    digests, observations = [], []
    for rb in stored:
        digests.append(hashlib.sha256(obs.tobytes()).hexdigest())
        observations.append(obs.copy())
        ex.rb = rb
        obs, *_ = env.step(np.asarray(rb.action))
    return digests, observations
