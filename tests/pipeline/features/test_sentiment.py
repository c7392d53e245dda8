"""Tests of carry_pipeline/lib/features/sentiment.py: sources, publication time, window features."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from carry_pipeline.lib.features.sentiment import (
    SentimentSourceConfig,
    SentimentWindowsConfig,
    build_sentiment_windows,
    load_sentiment,
)
from carry_pipeline.lib.schemas import SENTIMENT_SCHEMA

START = datetime(2024, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)


def grid(hours: int, bar: timedelta = timedelta(minutes=15)) -> pl.Series:
    n = int(timedelta(hours=hours) / bar)
    return pl.Series("ts", [START + (i + 1) * bar for i in range(n)]).cast(pl.Datetime("us", "UTC"))


def scores(rows: list[tuple[datetime, datetime, float]]) -> pl.DataFrame:
    return pl.DataFrame(
        [(t, p, "test", s) for t, p, s in rows], schema=SENTIMENT_SCHEMA, orient="row"
    )


def test_score_is_used_only_from_its_publication_time() -> None:
    # The score for 00:00 is published at 01:00; the one for 01:00 at 02:30.
    s = scores([(START, START + H, 0.5), (START + H, START + 2.5 * H, -0.25)])
    out = build_sentiment_windows(
        s,
        grid(4),
        SentimentWindowsConfig(zscore_window="1h", change_window="1h", mean_windows=("1h",)),
    )
    level = dict(zip(out["ts"].to_list(), out["sentiment"].to_list(), strict=True))
    assert level[START + timedelta(minutes=45)] is None  # not yet published
    assert level[START + H] == 0.5  # published exactly at the 01:00 close
    assert level[START + timedelta(hours=2, minutes=15)] == 0.5
    assert level[START + timedelta(hours=2, minutes=30)] == -0.25
    age = dict(zip(out["ts"].to_list(), out["f_sent_age_hours"].to_list(), strict=True))
    assert age[START + 2 * H] == pytest.approx(1.0)


def test_a_revision_replaces_the_score_when_published() -> None:
    # The 00:00 score is revised from 0.1 to 0.9 at 02:00: only bars from 02:00 see the revision.
    s = scores([(START, START, 0.1), (START, START + 2 * H, 0.9)])
    out = build_sentiment_windows(
        s,
        grid(3),
        SentimentWindowsConfig(zscore_window="1h", change_window="1h", mean_windows=("1h",)),
    )
    level = dict(zip(out["ts"].to_list(), out["sentiment"].to_list(), strict=True))
    assert level[START + timedelta(hours=1, minutes=45)] == 0.1
    assert level[START + 2 * H] == 0.9


def test_window_features_hand_computed() -> None:
    # Hourly scores 0.0, 0.2, ..., published on the hour; 1h bars.
    values = [round(0.1 * i, 10) for i in range(10)]
    s = scores([(START + i * H, START + i * H, v) for i, v in enumerate(values)])
    cfg = SentimentWindowsConfig(
        change_window="2h",
        zscore_window="3h",
        mean_windows=("2h",),
        extreme_level=0.6,
        max_age="30m",
    )
    ts = pl.Series("ts", [START + i * H for i in range(10)]).cast(pl.Datetime("us", "UTC"))
    out = build_sentiment_windows(s, ts, cfg)
    row = out.row(5, named=True)  # level 0.5
    assert row["f_sent_change"] == pytest.approx(0.2)  # 0.5 - 0.3
    assert row["f_sent_mean_2h"] == pytest.approx(0.45)  # (0.4 + 0.5) / 2
    assert row["f_sent_z"] == pytest.approx(1.0)  # (0.5 - 0.4) / std(0.3, 0.4, 0.5) = 0.1 / 0.1
    assert (
        row["f_sent_extreme_greed"] == 0.0 and out.row(6, named=True)["f_sent_extreme_greed"] == 1.0
    )
    assert row["f_sent_stale"] == 0.0
    assert out["warmup"].to_list()[:3] == [True, True, False]


def test_no_score_before_the_grid_ends_fails() -> None:
    s = scores([(START + 100 * H, START + 100 * H, 0.0)])
    with pytest.raises(ValueError, match="no score is published by the end of the grid"):
        build_sentiment_windows(s, grid(4))


def test_simulated_source_respects_the_window() -> None:
    out = load_sentiment(SentimentSourceConfig(), START, START + 48 * H)
    assert out.schema == pl.Schema(SENTIMENT_SCHEMA)
    assert out.height == 48
    assert out["published_at"].min() >= START and out["published_at"].max() < START + 48 * H
    assert out["score"].is_between(-1, 1).all()


def test_file_source_with_lag_and_fear_greed_scale(tmp_path: Path) -> None:
    path = tmp_path / "fng.csv"
    path.write_text("date,value\n2024-01-01,25\n2024-01-02,75\n2024-01-03,100\n")
    cfg = SentimentSourceConfig(
        kind="file",
        path=str(path),
        timestamp_column="date",
        score_column="value",
        publication_lag="1h",
        score_range=(0, 100),
    )
    out = load_sentiment(cfg, START, START + timedelta(days=10))
    assert out["score"].to_list() == [-0.5, 0.5, 1.0]
    assert out["published_at"][0] == START + H


def test_parquet_source_with_publication_column(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    pl.DataFrame({"timestamp": [START], "score": [0.3], "pub": [START + 3 * H]}).write_parquet(path)
    cfg = SentimentSourceConfig(kind="file", path=str(path), published_at_column="pub")
    out = load_sentiment(cfg, START, START + timedelta(days=1))
    assert out["published_at"].to_list() == [START + 3 * H]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # A score off the configured scale.
        ("timestamp,score\n2024-01-01,1.5\n", "outside score_range"),
        # A timestamp that is not one.
        ("timestamp,score\nyesterday,0.1\n", "are not timestamps"),
        # A missing column.
        ("time,score\n2024-01-01,0.1\n", r"columns \['timestamp'\] missing"),
    ],
)
def test_bad_files_fail_clearly(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(ValueError, match=message):
        load_sentiment(
            SentimentSourceConfig(kind="file", path=str(path)), START, START + timedelta(days=2)
        )


@pytest.fixture()
def http_source() -> Iterator[str]:
    body = (
        b'{"data": [{"timestamp": 1704067200, "score": 0.25}, '
        b'{"timestamp": 1704070800, "score": -0.5}]}'
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/sentiment"
    server.shutdown()


def test_http_source_on_loopback(http_source: str) -> None:
    cfg = SentimentSourceConfig(kind="http", url=http_source)
    out = load_sentiment(cfg, START, START + timedelta(days=1))
    assert out["score"].to_list() == [0.25, -0.5]
    assert out["ts"].to_list() == [START, START + H]


def test_source_config_is_validated() -> None:
    with pytest.raises(ValueError, match="needs `path`"):
        SentimentSourceConfig(kind="file")
    with pytest.raises(ValueError, match="simulated, file or http"):
        SentimentSourceConfig(kind="ftp")  # type: ignore[arg-type]
