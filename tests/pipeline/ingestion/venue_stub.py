"""Loopback HTTP stubs speaking Bybit v5 and OKX v5 public REST formats, as ccxt 4.5.90 calls them.

`VenueStub` reuses `BinanceStub`'s server, request log and fault queue and swaps the route table.
Each venue's paging is modelled on its documentation (and the reports cited), because that is what
a client gets wrong:

Bybit (`venue="bybit"`):
- `GET /v5/market/kline` (`category`, `symbol`, `interval`, `start`, `end`, `limit` <= 1000,
  default 200): rows newest first. With `start` alone the `limit` oldest bars from the one
  containing `start` (ccxt's bybit.py on issue 26736); with `end`, the newest `limit` in range.
- `GET /v5/market/funding/history` (`startTime`, `endTime`, `limit` 1..200, default 200): rows
  newest first; `startTime` alone is an error (retCode 10001); otherwise the newest `limit` rows up
  to `endTime` (or now). A larger `limit` is served as 200 (ccxt issue 27745 shows both).
- Unknown symbols answer HTTP 200 with retCode 10001, as Bybit does.

OKX (`venue="okx"`):
- `GET /api/v5/market/candles` and `/history-candles` (`instId`, `bar`, `after` = strictly older
  than, `before` = strictly newer than, `limit` <= 300, default 100) and
  `GET /api/v5/public/funding-rate-history` (same cursors, `limit` <= 100): rows newest first, the
  newest `limit` rows that satisfy the cursors; "the latest data will be returned when using
  `before` individually" (OKX docs). Funding history reaches back only `funding_retention`
  ("this endpoint can retrieve data from the last 3 months").
- Candle rows are `[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]`; for swaps `vol` counts
  contracts and `volCcy` is base currency, for spot `vol` is base and `volCcy` quote.
- Unknown instruments answer code 51001 ("Instrument ID does not exist").

Tables are keyed by what the venue receives: Bybit `(category, symbol, interval)`, OKX
`("okx", instId, bar)`; funding by symbol / instId. Binds 127.0.0.1 on an ephemeral port only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.pipeline.ingestion.binance_stub import BinanceStub

BYBIT_KLINE = "/v5/market/kline"
BYBIT_FUNDING = "/v5/market/funding/history"
OKX_CANDLES = "/api/v5/market/candles"
OKX_HISTORY_CANDLES = "/api/v5/market/history-candles"
OKX_FUNDING = "/api/v5/public/funding-rate-history"


class VenueStub(BinanceStub):
    """In-memory Bybit or OKX REST tables behind a loopback HTTP server.

    Args:
        venue: "bybit" or "okx".
        now_ms: the venue's "now" (newest data and OKX's funding retention are measured from it).
        funding_retention: how far back OKX serves funding history.
    """

    def __init__(
        self,
        venue: str,
        now_ms: int,
        funding_retention: timedelta = timedelta(days=92),
    ) -> None:
        super().__init__()
        if venue not in ("bybit", "okx"):
            raise ValueError(f"venue {venue!r} must be 'bybit' or 'okx'")
        self.venue = venue
        self.now_ms = now_ms
        self.retention_ms = int(funding_retention.total_seconds() * 1000)
        # (category or "okx", symbol id, interval as sent) -> venue rows, any order.
        self.candles: dict[tuple[str, str, str], list[list[str]]] = {}
        # symbol id -> (funding time ms, rate) pairs, any order.
        self.rates: dict[str, list[tuple[int, str]]] = {}

    def _empty(self, path: str) -> Any:
        """The venue's answer holding no rows (the "empty" fault)."""
        if self.venue == "bybit":
            return _bybit_ok("linear", "", [])[1]
        return {"code": "0", "msg": "", "data": []}

    def _route(self, path: str, q: dict[str, str]) -> tuple[int, Any]:
        if self.venue == "bybit":
            return self._bybit(path, q)
        return self._okx(path, q)

    # ---------------------------------------------------------------------------------------------

    def _bybit(self, path: str, q: dict[str, str]) -> tuple[int, Any]:
        symbol, category = q.get("symbol", ""), q.get("category", "linear")
        if path == BYBIT_KLINE:
            rows = self.candles.get((category, symbol, q.get("interval", "")))
            if rows is None:
                return _bybit_error(10001, "params error: symbol invalid")
            rows = sorted(rows, key=lambda r: int(r[0]))
            step = int(rows[1][0]) - int(rows[0][0]) if len(rows) > 1 else 60_000
            limit = min(int(q.get("limit", 200)), 1000)
            lo = int(q["start"]) - step + 1 if "start" in q else None  # the bar containing start
            hi = int(q["end"]) if "end" in q else self.now_ms
            keep = [r for r in rows if (lo is None or int(r[0]) >= lo) and int(r[0]) <= hi]
            keep = keep[:limit] if "start" in q and "end" not in q else keep[-limit:]
            return _bybit_ok(category, symbol, keep[::-1])
        if path == BYBIT_FUNDING:
            rates = self.rates.get(symbol)
            if rates is None:
                return _bybit_error(10001, "params error: symbol invalid")
            if "startTime" in q and "endTime" not in q:
                return _bybit_error(10001, "params error: Time is invalid")
            limit = min(int(q.get("limit", 200)), 200)
            lo = int(q.get("startTime", 0))
            hi = int(q.get("endTime", self.now_ms))
            keep = sorted(r for r in rates if lo <= r[0] <= hi)[-limit:]
            items = [
                {"symbol": symbol, "fundingRate": rate, "fundingRateTimestamp": str(ms)}
                for ms, rate in reversed(keep)
            ]
            return _bybit_ok(category, symbol, items)
        return 404, {"retCode": 10001, "retMsg": f"unknown path {path}"}

    def _okx(self, path: str, q: dict[str, str]) -> tuple[int, Any]:
        inst = q.get("instId", "")
        if path in (OKX_CANDLES, OKX_HISTORY_CANDLES):
            rows = self.candles.get(("okx", inst, q.get("bar", "1m")))
            if rows is None:
                return _okx_error("51001", f"Instrument ID {inst} does not exist")
            limit = min(int(q.get("limit", 100)), 300)
            keep = _okx_page([(int(r[0]), r) for r in rows], q, limit)
            return 200, {"code": "0", "msg": "", "data": keep}
        if path == OKX_FUNDING:
            rates = self.rates.get(inst)
            if rates is None:
                return _okx_error("51001", f"Instrument ID {inst} does not exist")
            oldest = self.now_ms - self.retention_ms
            limit = min(int(q.get("limit", 100)), 100)
            items = [
                (
                    ms,
                    {
                        "instType": "SWAP",
                        "instId": inst,
                        "fundingRate": rate,
                        "realizedRate": rate,
                        "fundingTime": str(ms),
                        "method": "current_period",
                        "formulaType": "withRate",
                    },
                )
                for ms, rate in rates
                if ms >= oldest
            ]
            return 200, {"code": "0", "msg": "", "data": _okx_page(items, q, limit)}
        return 404, {"code": "50000", "msg": f"unknown path {path}"}


def _okx_page(items: list[tuple[int, Any]], q: dict[str, str], limit: int) -> list[Any]:
    # OKX cursors are exclusive; the answer is the newest `limit` rows left, newest first.
    after = int(q["after"]) if "after" in q else None
    before = int(q["before"]) if "before" in q else None
    keep = sorted(
        (i for i in items if (after is None or i[0] < after) and (before is None or i[0] > before)),
        key=lambda i: i[0],
    )
    return [body for _, body in reversed(keep[-limit:])]


def _bybit_ok(category: str, symbol: str, items: list[Any]) -> tuple[int, Any]:
    return 200, {
        "retCode": 0,
        "retMsg": "OK",
        "result": {"category": category, "symbol": symbol, "list": items},
        "retExtInfo": {},
        "time": 1704844800000,
    }


def _bybit_error(code: int, msg: str) -> tuple[int, Any]:
    return 200, {"retCode": code, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": 0}


def _okx_error(code: str, msg: str) -> tuple[int, Any]:
    return 200, {"code": code, "msg": msg, "data": []}


def bybit_kline(open_ms: int, o: float, h: float, lo: float, c: float, v: float) -> list[str]:
    """One Bybit v5 kline: [start, open, high, low, close, volume (base), turnover (quote)]."""
    return [
        str(open_ms),
        f"{o:.2f}",
        f"{h:.2f}",
        f"{lo:.2f}",
        f"{c:.2f}",
        f"{v:.5f}",
        f"{v * c:.4f}",
    ]


def okx_candle(
    open_ms: int, o: float, h: float, lo: float, c: float, v: float, ct_val: float | None = None
) -> list[str]:
    """One OKX v5 candle for base volume `v`; a swap (`ct_val` set) counts `vol` in contracts."""
    quote = f"{v * c:.4f}"
    if ct_val is None:  # spot: vol = base, volCcy = quote
        vol, vol_ccy = f"{v:.5f}", quote
    else:  # swap: vol = whole contracts, volCcy = the same amount in base currency
        contracts = round(v / ct_val)
        vol, vol_ccy = str(contracts), f"{contracts * ct_val:.5f}"
    return [str(open_ms), f"{o:.2f}", f"{h:.2f}", f"{lo:.2f}", f"{c:.2f}", vol, vol_ccy, quote, "1"]
