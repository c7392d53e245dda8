"""The ingestion tests' loopback Binance stub, extended for trading: market metadata
(`exchangeInfo`, so ccxt's own `load_markets` runs against the stub) and the two market-order
endpoints (`POST /api/v3/order`, `POST /fapi/v1/order`), which record every order and fill it by
walking the stub's depth book. Faults queued with `inject(path, ...)` apply to the order paths
too ("400:-2010" insufficient balance, "400:-1013" filter failure, "timeout", "503")."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.pipeline.ingestion import binance_stub
from tests.pipeline.ingestion.binance_stub import BinanceStub, _send, _send_raw

ORDER_PATHS = {"/api/v3/order": "/api/v3/depth", "/fapi/v1/order": "/fapi/v1/depth"}
"""Order path -> the depth path whose book fills it."""
MESSAGES = {
    **binance_stub.BINANCE_MESSAGES,
    -1013: "Filter failure: LOT_SIZE",
    -2010: "Account has insufficient balance for requested action.",
}


def _filters(tick: str, step: str) -> list[dict[str, str]]:
    return [
        {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000", "tickSize": tick},
        {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "9000", "stepSize": step},
        {"filterType": "MARKET_LOT_SIZE", "minQty": step, "maxQty": "9000", "stepSize": step},
    ]


def spot_info(base: str) -> dict[str, Any]:
    """One spot symbol of `GET /api/v3/exchangeInfo`."""
    return {"symbol": f"{base}USDT", "status": "TRADING", "baseAsset": base,
            "baseAssetPrecision": 8, "quoteAsset": "USDT", "quotePrecision": 8,
            "quoteAssetPrecision": 8, "orderTypes": ["LIMIT", "MARKET"],
            "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
            "permissions": ["SPOT"], "filters": _filters("0.01", "0.00001")}  # fmt: skip


def perp_info(base: str) -> dict[str, Any]:
    """One USD-M perpetual of `GET /fapi/v1/exchangeInfo`."""
    return {"symbol": f"{base}USDT", "pair": f"{base}USDT", "contractType": "PERPETUAL",
            "deliveryDate": 4133404800000, "onboardDate": 1569398400000, "status": "TRADING",
            "baseAsset": base, "quoteAsset": "USDT", "marginAsset": "USDT",
            "pricePrecision": 2, "quantityPrecision": 3, "baseAssetPrecision": 8,
            "quotePrecision": 8, "underlyingType": "COIN", "orderTypes": ["LIMIT", "MARKET"],
            "timeInForce": ["GTC"], "filters": _filters("0.10", "0.001")}  # fmt: skip


class TradingStub(BinanceStub):
    """`BinanceStub` plus `exchangeInfo` for `bases` and recorded, book-walked market orders.

    Attributes:
        orders: `(path, params)` of every order request received (signed form fields).
        fee_rate: commission charged on each fill's quote notional.
    """

    def __init__(self, bases: tuple[str, ...] = ("BTC", "ETH"), fee_rate: float = 0.0004) -> None:
        super().__init__()
        self.bases = bases
        self.fee_rate = fee_rate
        self.orders: list[tuple[str, dict[str, str]]] = []
        self._next_id = 1000

    def _route(self, path: str, q: dict[str, str]) -> tuple[int, Any]:
        info = {"timezone": "UTC", "serverTime": int(time.time() * 1000), "rateLimits": []}
        if path == "/api/v3/exchangeInfo":
            return 200, {**info, "symbols": [spot_info(b) for b in self.bases]}
        if path == "/fapi/v1/exchangeInfo":
            return 200, {**info, "assets": [], "symbols": [perp_info(b) for b in self.bases]}
        if path == "/dapi/v1/exchangeInfo":
            return 200, {**info, "symbols": []}
        if path == "/sapi/v1/margin/isolated/allPairs":  # signed; ccxt lists margins with keys
            return 200, []
        return super()._route(path, q)

    def _handle_post(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        path = parts.path
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0)).decode()
        params = {k: v[0] for k, v in parse_qs(parts.query + "&" + body).items()}
        self.requests.append((path, params))
        if path not in ORDER_PATHS:
            return _send(h, 404, {"code": -1, "msg": f"unknown path {path}"})
        self.orders.append((path, params))
        queue = self.faults.get(path)
        fault = queue.popleft() if queue else None
        if fault == "timeout":
            time.sleep(self.delay_s)
        elif fault in ("500", "503"):
            return _send_raw(h, int(fault), b"<html>upstream unavailable</html>")
        elif fault and ":" in fault:
            status, _, code = fault.partition(":")
            return _send(h, int(status), {"code": int(code), "msg": MESSAGES[int(code)]})
        _send(h, 200, self._fill(path, params))

    def _fill(self, path: str, q: dict[str, str]) -> dict[str, Any]:
        # Walk the stub's book for the order's quantity: asks for a buy, bids for a sell.
        book = self.depth[(ORDER_PATHS[path], q["symbol"])]
        side = book["asks"] if q["side"] == "BUY" else book["bids"]
        left, cost = float(q["quantity"]), 0.0
        fills = []
        for price, size in side:
            take = min(left, float(size))
            if take <= 0:
                break
            cost += take * float(price)
            left -= take
            fills.append({"price": price, "qty": f"{take:.8f}",
                          "commission": f"{take * float(price) * self.fee_rate:.8f}",
                          "commissionAsset": "USDT", "tradeId": len(fills)})  # fmt: skip
        executed = float(q["quantity"]) - left
        self._next_id += 1
        common = {"symbol": q["symbol"], "orderId": self._next_id,
                  "clientOrderId": q.get("newClientOrderId", ""), "price": "0",
                  "origQty": q["quantity"], "executedQty": f"{executed:.8f}",
                  "status": "FILLED" if left <= 1e-12 else "EXPIRED", "timeInForce": "GTC",
                  "type": "MARKET", "side": q["side"]}  # fmt: skip
        now = int(time.time() * 1000)
        if path == "/api/v3/order":
            return {**common, "transactTime": now, "cummulativeQuoteQty": f"{cost:.8f}",
                    "fills": fills}  # fmt: skip
        avg = cost / executed if executed else 0.0
        return {**common, "avgPrice": f"{avg:.8f}", "cumQuote": f"{cost:.8f}",
                "reduceOnly": False, "positionSide": "BOTH", "updateTime": now}  # fmt: skip
