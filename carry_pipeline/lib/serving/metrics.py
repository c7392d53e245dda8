"""Prometheus metrics of the inference service, on its own `CollectorRegistry` (`GET /metrics`).

- `carry_serve_requests_total{route,method,status}`: answered requests; `route` is the matched
  route's path (`/action`, `/health`, `/metrics`), `unmatched` for any other path, so random URLs
  cannot grow the label set.
- `carry_serve_request_duration_seconds{route}`: histogram of the wall time per request.
- `carry_serve_champion_reloads_total{reason}`: champions loaded: `first`, `champion` (a new row
  of `models.champion`), `bars` (the same champion on new stored bars).
- `carry_serve_store_problems_total`: checks of the DuckDB file that could not read it (locked by
  a writer, missing, a missing table; each check) and promoted champions that did not load (once
  each: a broken version is not retried until the store changes).
- `carry_serve_champion_info{champion_id,model_path,fold}`: 1, labelled with the champion being
  served; `carry_serve_champion_loaded_timestamp_seconds`: when it was loaded.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
"""Seconds; a decision of the five small networks takes a few milliseconds."""


class ServiceMetrics:
    """The service's counters, histogram and champion info."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "carry_serve_requests",
            "HTTP requests answered, by route, method and status code",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "carry_serve_request_duration_seconds",
            "Wall seconds per request",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reloads = Counter(
            "carry_serve_champion_reloads", "Champions loaded, by reason", ["reason"], registry=r
        )
        self.problems = Counter(
            "carry_serve_store_problems",
            "Failed reads of the DuckDB file and champions that did not load",
            registry=r,
        )
        self.champion = Info("carry_serve_champion", "The champion being served", registry=r)
        self.loaded_at = Gauge(
            "carry_serve_champion_loaded_timestamp_seconds",
            "Unix time the served champion was loaded",
            registry=r,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def listener(self, event: str, value: Any) -> None:
        """`ChampionService`'s listener: reloads and store problems."""
        if event == "reload":
            served, reason = value
            self.reloads.labels(reason).inc()
            source = served.source
            self.champion.info(
                {
                    "champion_id": source.champion_id,
                    "model_path": source.model_path,
                    "fold": str(source.fold),
                }
            )
            self.loaded_at.set(served.loaded_at.timestamp())
        elif event == "problem":
            self.problems.inc()

    def text(self) -> bytes:
        """The exposition a scrape returns."""
        return generate_latest(self.registry)
