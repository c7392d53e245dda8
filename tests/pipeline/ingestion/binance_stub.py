"""A loopback HTTP server speaking Binance's public REST formats, with fault injection.

Serves spot (`/api/v3/klines`, `/api/v3/depth`) and USD-M (`/fapi/v1/klines`,
`/fapi/v1/fundingRate`, `/fapi/v1/depth`) from in-memory tables, honouring
`startTime`/`endTime`/`limit` like Binance (ascending rows from `startTime`, at most `limit`).
`faults[path]` is a queue of faults consumed one per request to that path: "429", "418", "500",
"503", "timeout" (sleeps `delay_s` before answering), "malformed" (200 with a truncated JSON body),
"empty" (200 `[]`, a page lost mid-range), "<status>:<code>" (that HTTP status with Binance's JSON
error body, e.g. "503:-1008" server busy, "400:-1102" rejected parameter, "401:-2015" bad key) and
"<429|418>:retry=<s>" (a rate limit with a `Retry-After: <s>` header).
Unknown symbols answer 400 `{"code": -1121}` as Binance does. The server binds 127.0.0.1 on an
ephemeral port and never touches the network.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

KLINE_PATHS = ("/api/v3/klines", "/fapi/v1/klines")
DEPTH_PATHS = ("/api/v3/depth", "/fapi/v1/depth")
FUNDING_PATH = "/fapi/v1/fundingRate"
# Signed endpoints (X-MBX-APIKEY header) that ccxt's fetch_currencies calls when keys are set.
SIGNED_PATHS = ("/sapi/v1/capital/config/getall", "/sapi/v1/margin/allPairs")
# Binance's messages for the error codes the fault queue can send.
BINANCE_MESSAGES = {
    -1000: "An unknown error occured while processing the request.",
    -1001: "Internal error; unable to process your request. Please try again.",
    -1008: "Server is currently overloaded with other requests. Please try again in a few minutes.",
    -1102: "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.",
    -1121: "Invalid symbol.",
    -2015: "Invalid API-key, IP, or permissions for action.",
}
MAX_LIMIT = {"/api/v3/klines": 1000, "/fapi/v1/klines": 1500, FUNDING_PATH: 1000}


class BinanceStub:
    """In-memory Binance REST tables behind a loopback HTTP server."""

    def __init__(self, delay_s: float = 0.6) -> None:
        # (path, symbol id, interval) -> kline rows in Binance's 12-field string format.
        self.klines: dict[tuple[str, str, str], list[list[Any]]] = {}
        self.funding: dict[str, list[dict[str, Any]]] = {}
        self.depth: dict[tuple[str, str], dict[str, Any]] = {}
        self.faults: dict[str, deque[str]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.delay_s = delay_s
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:54321."""
        assert self._server is not None, "start() the stub first"
        return f"http://127.0.0.1:{self._server.server_port}"

    def inject(self, path: str, *faults: str) -> None:
        """Queue faults for the next requests to `path`."""
        self.faults.setdefault(path, deque()).extend(faults)

    def count(self, path: str) -> int:
        """Requests received on `path`."""
        return sum(1 for p, _ in self.requests if p == path)

    def start(self) -> BinanceStub:
        """Serve GET (and POST, through `_handle_post`) in a daemon thread."""
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                stub._handle(self)

            def do_POST(self) -> None:  # noqa: N802
                stub._handle_post(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        """Shut the server down."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ---------------------------------------------------------------------------------------------

    def _handle_post(self, h: BaseHTTPRequestHandler) -> None:
        # Public market data is GET only; a subclass with order endpoints overrides this.
        _send(h, 405, {"code": -1, "msg": f"POST {h.path} is not served by this stub"})

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        path = parts.path
        params = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.requests.append((path, params))
        queue = self.faults.get(path)
        fault = queue.popleft() if queue else None
        if fault == "empty":
            return _send(h, 200, self._empty(path))
        if fault and ":" in fault:
            status, _, arg = fault.partition(":")
            if arg.startswith("retry="):
                body = {"code": -1003, "msg": "Too many requests; IP banned."}
                return _send(h, int(status), body, {"Retry-After": arg.removeprefix("retry=")})
            return _send(h, int(status), {"code": int(arg), "msg": BINANCE_MESSAGES[int(arg)]})
        if fault in ("429", "418"):
            return _send(h, int(fault), {"code": -1003, "msg": "Too many requests; IP banned."})
        if fault in ("500", "503"):
            return _send_raw(h, int(fault), b"<html>upstream unavailable</html>")
        if fault == "malformed":
            return _send_raw(h, 200, b'[[1704067200000,"42000.1",')
        if fault == "timeout":
            time.sleep(self.delay_s)
        status, body = self._route(path, params)
        _send(h, status, body)

    def _empty(self, path: str) -> Any:
        """The venue's answer holding no rows (Binance: a bare list)."""
        return []

    def _route(self, path: str, q: dict[str, str]) -> tuple[int, Any]:
        symbol = q.get("symbol", "")
        if path in KLINE_PATHS:
            rows = self.klines.get((path, symbol, q.get("interval", "")))
            if rows is None:
                return _bad_symbol()
            return 200, _window(rows, q, lambda r: int(r[0]), MAX_LIMIT[path], 500)
        if path == FUNDING_PATH:
            rows = self.funding.get(symbol)
            if rows is None:
                return _bad_symbol()
            return 200, _window(rows, q, lambda r: int(r["fundingTime"]), 1000, 100)
        if path in SIGNED_PATHS:
            return 200, []
        if path in DEPTH_PATHS:
            book = self.depth.get((path, symbol))
            return (200, book) if book is not None else _bad_symbol()
        return 404, {"code": -1, "msg": f"unknown path {path}"}


def _window(
    rows: list[Any], q: dict[str, str], key: Any, max_limit: int, default: int
) -> list[Any]:
    start = int(q.get("startTime", 0))
    end = int(q["endTime"]) if "endTime" in q else None
    limit = min(int(q.get("limit", default)), max_limit)
    out = [r for r in rows if key(r) >= start and (end is None or key(r) <= end)]
    return out[:limit]


def _bad_symbol() -> tuple[int, Any]:
    return 400, {"code": -1121, "msg": "Invalid symbol."}


def _send(
    h: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None
) -> None:
    _send_raw(h, status, json.dumps(body).encode(), headers)


def _send_raw(
    h: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str] | None = None
) -> None:
    try:
        h.send_response(status)
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client timed out and hung up first: that is the point of a "timeout" fault


def kline_row(
    open_ms: int, step_ms: int, o: float, h: float, lo: float, c: float, v: float
) -> list:
    """One kline in Binance's format (prices and volumes as decimal strings)."""
    return [
        open_ms,
        f"{o:.2f}",
        f"{h:.2f}",
        f"{lo:.2f}",
        f"{c:.2f}",
        f"{v:.5f}",
        open_ms + step_ms - 1,
        f"{v * c:.4f}",
        100,
        f"{v / 2:.5f}",
        f"{v * c / 2:.4f}",
        "0",
    ]
