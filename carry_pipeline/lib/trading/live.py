"""Live trading: real orders only behind a config flag AND a confirmation variable.

`live_order_client(enabled=..., credentials=...)` is the only way this codebase builds a ccxt
client with keys. It refuses unless `enabled` is True (the job's `live_trading` config, False by
default) and the environment holds `CARRY_LIVE_TRADING=I_UNDERSTAND`; keys come from `dg.EnvVar`
in the job, and neither the keys nor the guard's errors ever contain them (`Credentials.__repr__`
redacts; the client is a `CcxtExchange`, whose ccxt loggers redact the key and secret and whose
`verbose` printing is off).

`CcxtOrderExecutor` is the live executor: the same `LegExecutor` interface as the paper
`BookExecutor`, behind the same `RiskGate`, so the session, the risk manager and the ledger do not
change. For each leg with an order it takes the venue's current book (from the feed's public
client: the touch it prices the spread against, and the book it records), rounds the amount to
the market's step (`amount_to_precision`; perps in contracts of `contractSize` coins), sends one
market order through the keyed client (`create_order`, never retried: a retried market order can
fill twice) and books what the venue says filled: `filled` coins at `average`, the venue's fee in
USDT (a fee in the base coin is valued at `average`; in any other currency, or none reported,
the taker rate times the executed notional), the half-spread crossed as `spread_cost` and the rest
of `average - mid` as `impact_cost`. A rejected order (ccxt `ExchangeError`: insufficient funds, a
filter) or a network error fills nothing and is reported in `last_errors` (the session books each
as an `order_error` risk event); a network error's order may still have reached the venue, which
the event says.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ccxt
import numpy as np

from carry_env.feeds import Fills, Orders
from carry_pipeline.lib.exchanges.base import Pair
from carry_pipeline.lib.exchanges.ccxt_exchange import CcxtExchange
from carry_pipeline.lib.trading.books import BookSource, Leg, Quote, walk_book
from carry_pipeline.lib.trading.executor import LegFill, OrderError, TakerFees

CONFIRM_VAR = "CARRY_LIVE_TRADING"
CONFIRM_VALUE = "I_UNDERSTAND"


class LiveTradingRefused(RuntimeError):
    """Live trading was asked for without both the flag and the confirmation variable."""


@dataclass(frozen=True)
class Credentials:
    """API keys for a live venue; never printed."""

    api_key: str
    secret: str

    def __repr__(self) -> str:
        return "Credentials(api_key=<redacted>, secret=<redacted>)"

    __str__ = __repr__


def check_live_allowed(enabled: bool, environ: Mapping[str, str] | None = None) -> None:
    """Raise `LiveTradingRefused` unless `enabled` and `CARRY_LIVE_TRADING=I_UNDERSTAND`."""
    env = os.environ if environ is None else environ
    missing = []
    if enabled is not True:
        missing.append("the job config flag live_trading: true")
    if env.get(CONFIRM_VAR) != CONFIRM_VALUE:
        missing.append(f"the environment variable {CONFIRM_VAR}={CONFIRM_VALUE}")
    if missing:
        raise LiveTradingRefused(
            "live trading refused: it needs " + " and ".join(missing) + "; paper trading "
            "(the default) places no order"
        )


def live_order_client(
    *,
    enabled: bool,
    credentials: Credentials | None,
    spot_exchange: str = "binance",
    perp_exchange: str = "binanceusdm",
    api_url: str | None = None,
    timeout_ms: int = 10_000,
    environ: Mapping[str, str] | None = None,
) -> CcxtExchange:
    """A keyed `CcxtExchange` (spot and perp clients able to place orders), after
    `check_live_allowed`.

    Raises:
        LiveTradingRefused: the guard refused, or no credentials were bound.
    """
    check_live_allowed(enabled, environ)
    if credentials is None or not credentials.api_key or not credentials.secret:
        raise LiveTradingRefused(
            "live trading refused: CARRY_API_KEY and CARRY_API_SECRET are not bound (dg.EnvVar)"
        )
    return CcxtExchange(
        spot_exchange,
        perp_exchange,
        api_url=api_url,
        api_key=credentials.api_key,
        secret=credentials.secret,
        timeout_ms=timeout_ms,
        max_retries=0,
    )


class CcxtOrderExecutor:
    """Market orders on a venue through a keyed `CcxtExchange` (see the module docstring).

    Args:
        symbols: the env's symbols (perps, `BTC/USDT:USDT`), in its asset order.
        venue: the keyed client (`live_order_client`); its spot client trades the spot legs, its
            perp client the perp legs.
        books: the current books (the feed's public venue client), for the touch and the record.
        fees: taker rates, used where the venue reports no fee in USDT or the base coin.
    """

    def __init__(
        self,
        symbols: tuple[str, ...],
        venue: CcxtExchange,
        books: BookSource,
        fees: TakerFees,
    ) -> None:
        self.symbols = tuple(symbols)
        self.venue = venue
        self.books = books
        self.fees = fees
        self.last_legs: list[LegFill] = []
        self.last_errors: list[OrderError] = []
        self.sent: list[dict[str, Any]] = []
        """Every order the venue accepted: symbol, side, amount, id, filled, average."""

    def execute(self, orders: Orders) -> Fills:
        """Send each non-zero leg as a market order; book what filled, report what failed."""
        shape = orders.spot_qty.shape
        out = {n: np.zeros(shape) for n in ("spot", "perp", "fees", "spread", "impact")}
        self.last_legs, self.last_errors = [], []
        for i, symbol in enumerate(self.symbols):
            for leg, qty, mid, depth in (
                ("spot", orders.spot_qty, orders.spot_price, orders.spot_depth_usd),
                ("perp", orders.perp_qty, orders.perp_price, orders.perp_depth_usd),
            ):
                q = float(qty[0, i])
                if q == 0.0:
                    continue
                quote = Quote(float(mid[0, i]), float(orders.spread_bps[0, i]), float(depth[0, i]))
                fill = self._send(symbol, leg, q, quote)  # type: ignore[arg-type]
                if fill is None:
                    continue
                self.last_legs.append(fill)
                out[leg][0, i] = fill.filled_qty
                out["fees"][0, i] += fill.fee
                out["spread"][0, i] += fill.spread_cost
                out["impact"][0, i] += fill.impact_cost
        return Fills(out["spot"], out["perp"], out["fees"], out["spread"], out["impact"])

    def _send(self, symbol: str, leg: Leg, qty: float, quote: Quote) -> LegFill | None:
        # One leg: book, amount on the market's step, the order, the fill; None when nothing
        # filled (the reason is in last_errors).
        pair = Pair(symbol.split("/")[0], symbol.split("/")[1].split(":")[0])
        venue_symbol = pair.symbol(leg)
        side = "buy" if qty > 0.0 else "sell"
        figures: dict[str, Any] = {"venue_symbol": venue_symbol, "side": side, "qty": qty}
        try:
            book = self.books.order_book(symbol, leg, quote)
            client = self.venue.client(leg)
            if not client.markets:
                client.load_markets()
            market = client.market(venue_symbol)
            size = float(market.get("contractSize") or 1.0) if leg == "perp" else 1.0
            amount = float(client.amount_to_precision(venue_symbol, abs(qty) / size))
        except (ccxt.BaseError, LookupError, ValueError) as exc:
            self._fail(symbol, leg, qty, f"order not sent: {_name(exc)}", figures)
            return None
        figures["amount"] = amount
        if amount <= 0.0:
            self._fail(symbol, leg, qty, "order not sent: below the market's amount step", figures)
            return None
        try:
            order = client.create_order(venue_symbol, "market", side, amount)
        except ccxt.NetworkError as exc:
            self._fail(
                symbol, leg, qty,
                f"network error sending the order ({_name(exc)}); it may have reached the "
                "venue: nothing is booked, reconcile with the venue's order history",
                figures,
            )  # fmt: skip
            return None
        except ccxt.BaseError as exc:
            self._fail(symbol, leg, qty, f"order rejected: {_name(exc)}", figures)
            return None
        filled = float(order.get("filled") or 0.0) * size
        average = float(order.get("average") or math.nan)
        self.sent.append({**figures, "id": order.get("id"), "filled": filled, "average": average})
        if filled <= 0.0 or not math.isfinite(average):
            status = order.get("status")
            self._fail(symbol, leg, qty, f"order {order.get('id')} filled nothing ({status})",
                       {**figures, "order_id": order.get("id")})  # fmt: skip
            return None
        sign = 1.0 if qty > 0.0 else -1.0
        touch = float(book.asks[0, 0] if qty > 0.0 else book.bids[0, 0])
        fee = _fee_usdt(order, pair, average) or self.fees.rate(leg) * filled * average
        return LegFill(
            0, symbol, leg, qty, sign * filled, quote.mid, average, fee,
            filled * sign * (touch - quote.mid), filled * sign * (average - touch),
            walk_book(book, sign * filled).levels_used, book,
        )  # fmt: skip

    def _fail(self, symbol: str, leg: Leg, qty: float, reason: str, figures: dict) -> None:
        self.last_errors.append(OrderError(symbol, leg, qty, f"{symbol} {leg}: {reason}", figures))


def _name(exc: BaseException) -> str:
    # The error class and the venue's message, without the request (ccxt puts URLs in some).
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _fee_usdt(order: dict[str, Any], pair: Pair, average: float) -> float | None:
    # The order's fees in USDT, or None when the venue reported none (or one in another coin).
    fees = order.get("fees") or ([order["fee"]] if order.get("fee") else [])
    total, known = 0.0, False
    for f in fees:
        cost = f.get("cost")
        if cost is None:
            continue
        if f.get("currency") == pair.quote:
            total, known = total + float(cost), True
        elif f.get("currency") == pair.base:
            total, known = total + float(cost) * average, True
        else:
            return None
    return total if known else None
