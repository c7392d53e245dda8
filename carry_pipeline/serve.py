"""The inference service: `python -m carry_pipeline.serve` (`make serve`).

A FastAPI app over `lib/serving`: the current champion of `models.champion` in the DuckDB file,
answering on the stored features.

- `POST /action`: `{"latest": true}` or `{"ts": "<bar time>"}` builds the env observation of a
  fresh account at that bar from the store; `{"observation": [...]}` (optionally with `ts`, else
  at the latest bar) decides on a posted env observation (`GET /health` lists its entries).
  `symbols` picks which assets come back. The answer: `action`, `expert_outputs` and
  `anomaly_multiplier` per symbol, `gating_weights`, `champion_id`, the bar's `ts`, and the
  `observation` when the service built it. Bad input is a 422 naming what was wrong; no champion
  is a 503.
- `GET /health`: the served champion (id, model path, fold, loaded-at, observation size and names,
  symbols, stored bars) and `store_problem` when the last check of the file failed (e.g. locked by
  a writer: the loaded champion keeps answering); 503 while no champion is loaded, saying why.
- `GET /metrics`: Prometheus exposition (`lib/serving/metrics.py`).

The champion is loaded at start-up and the store is checked every `--poll-seconds`; a new
champion row or new stored bars are loaded in the background and switched to when ready.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

from carry_pipeline.lib.duckdb_io import default_database
from carry_pipeline.lib.serving.metrics import ServiceMetrics
from carry_pipeline.lib.serving.requests import (
    RequestError,
    check_observation,
    iso,
    payload,
    select_symbols,
)
from carry_pipeline.lib.serving.service import ChampionService, ServedChampion

POLL_SECONDS = 5.0
"""Default seconds between checks of the DuckDB file for a new champion or new bars."""


class ActionRequest(BaseModel):
    """The body of `POST /action` (module docstring)."""

    model_config = ConfigDict(extra="forbid")

    observation: list[Annotated[float, Strict()]] | None = Field(
        default=None, description="The env observation, in GET /health's observation_names order."
    )
    latest: Annotated[bool, Strict()] = Field(
        default=False, description="Decide at the last stored bar."
    )
    ts: datetime | None = Field(default=None, description="Decide at this stored bar (UTC).")
    symbols: list[Annotated[str, Strict()]] | None = Field(
        default=None, description="Assets to return (default every asset the champion trades)."
    )

    @model_validator(mode="after")
    def _one_bar(self) -> ActionRequest:
        if self.latest and self.ts is not None:
            raise ValueError("give latest: true or ts, not both")
        if self.observation is None and not self.latest and self.ts is None:
            raise ValueError("give an observation, latest: true, or the ts of a stored bar")
        return self


def _validation_message(exc: RequestValidationError) -> str:
    # "observation.3: Input should be a valid number; ..." without FastAPI's `body` prefix.
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = err.get("msg", "invalid")
        detail = (err.get("ctx") or {}).get("error")
        if err.get("type") == "json_invalid" and detail:
            msg = f"{msg}: {detail}"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return str(getattr(route, "path", "unmatched"))


def _no_champion(service: ChampionService) -> JSONResponse:
    return JSONResponse(
        status_code=503,
        content={
            "status": "no_champion",
            "detail": f"no champion is being served: {service.problem or 'not loaded yet'}",
        },
    )


def _health(service: ChampionService, served: ServedChampion) -> dict[str, Any]:
    m, src = served.market, served.source
    return {
        "status": "degraded" if service.problem else "ok",
        "champion_id": src.champion_id,
        "model_path": src.model_path,
        "fold": src.fold,
        "loaded_at": served.loaded_at.isoformat(),
        "observation_size": len(served.observation_names),
        "observation_names": served.observation_names,
        "symbols": list(m.symbols),
        "bars": m.n_bars,
        "first_bar": iso(int(m.ts[0])),
        "last_bar": iso(int(m.ts[-1])),
        "database": service.database,
        "checked_at": service.checked_at.isoformat() if service.checked_at else None,
        "store_problem": service.problem,
        "reloads": service.reloads,
    }


def create_app(database: str, poll_seconds: float = POLL_SECONDS) -> FastAPI:
    """The service over `database`, checking it every `poll_seconds`."""
    metrics = ServiceMetrics()
    service = ChampionService(database, listener=metrics.listener)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.refresh()
        service.start(poll_seconds)
        yield
        service.stop()

    app = FastAPI(title="carry inference service", lifespan=lifespan)
    app.state.service, app.state.metrics = service, metrics

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        metrics.observe_request(
            _route(request), request.method, response.status_code, time.perf_counter() - started
        )
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _validation_message(exc)})

    @app.post("/action")
    def action(body: ActionRequest) -> Any:
        served = service.current
        if served is None:
            return _no_champion(service)
        try:
            symbols = select_symbols(body.symbols, served.market.symbols)
            bar = served.bar(body.ts)
            posted = (
                None
                if body.observation is None
                else check_observation(body.observation, served.observation_names)
            )
        except RequestError as exc:
            return JSONResponse(status_code=422, content={"detail": str(exc)})
        decision = served.decide(bar, posted)
        return payload(decision, symbols, with_observation=posted is None)

    @app.get("/health")
    def health() -> Any:
        served = service.current
        if served is None:
            return _no_champion(service)
        return _health(service, served)

    @app.get("/metrics")
    def scrape() -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    return app


def main(argv: list[str] | None = None) -> None:
    """Parse the flags and run the service with uvicorn until interrupted."""
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m carry_pipeline.serve", description="The carry inference service."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--database",
        default=None,
        help="DuckDB file (default $CARRY_DUCKDB, else data/carry.duckdb)",
    )
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=POLL_SECONDS,
        help=f"seconds between checks for a new champion (default {POLL_SECONDS:g})",
    )
    args = parser.parse_args(argv)
    if args.poll_seconds <= 0:
        parser.error(f"--poll-seconds must be > 0, got {args.poll_seconds}")
    app = create_app(args.database or default_database(), args.poll_seconds)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
