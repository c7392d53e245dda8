"""`BookExecutor`: the paper executor, filling the env's market orders by walking order books.

It implements carry_env's `Executor` protocol, so `CarryTradeEnv(..., executor=BookExecutor(...))`
runs the same `step` as a backtest with only the fills differing. Per leg it fetches the current
book from a `BookSource`, walks the asks (buy) or bids (sell), charges the taker fee, and reports
the filled quantity at the planning mid with every difference from mid as a cost, exactly as
`carry_env.feeds.Fills` asks:

- `spread_cost = |filled| * |touch - mid|` (the half-spread actually crossed),
- `impact_cost = |filled| * |vwap - touch|` (the levels walked beyond the touch),
- `fees = taker_fee * |filled| * vwap` (what an exchange charges: fee on executed notional), or
  `taker_fee * |filled| * mid` with `fee_basis="mid"`, the convention of `SimExecutor`, used to
  prove parity with the backtest.

Market orders are takers: the env's `maker_fraction` (a share of notional filled passively by
resting limit orders) does not apply, and the executor refuses a config with `maker_fraction > 0`
rather than silently charging a different fee than the backtest models. An exhausted book fills
partly; the remainder is unfilled and reported in `last_legs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from carry_env.config import EnvConfig
from carry_env.feeds import Fills, Orders
from carry_pipeline.lib.trading.books import BookSource, Leg, OrderBook, Quote, walk_book

FeeBasis = Literal["fill", "mid"]


@dataclass(frozen=True)
class TakerFees:
    """Taker fee rates (fractions of notional) per leg.

    Attributes:
        spot: spot taker fee.
        perp: perp taker fee.
    """

    spot: float
    perp: float

    @classmethod
    def from_env_config(cls, config: EnvConfig) -> TakerFees:
        """The env's taker fees (zero when `config.fees` is off).

        Raises:
            ValueError: `config.maker_fraction > 0`: market orders cannot earn the maker fee.
        """
        if config.maker_fraction > 0.0:
            raise ValueError(
                f"EnvConfig.maker_fraction={config.maker_fraction} models resting limit orders; "
                "the paper executor sends market orders, which always pay the taker fee. Use "
                "maker_fraction=0 for a paper session (and its backtest)."
            )
        if not config.fees:
            return cls(0.0, 0.0)
        return cls(config.spot_taker_fee_bps * 1e-4, config.perp_taker_fee_bps * 1e-4)

    def rate(self, leg: Leg) -> float:
        """The fee rate of `leg`."""
        return self.spot if leg == "spot" else self.perp


@dataclass(frozen=True)
class LegFill:
    """One leg's order, walked: what was asked, what filled, at what price and cost, against which
    book.

    Attributes:
        env: env index in the batch (0 for `CarryTradeEnv`).
        symbol: the asset's symbol.
        leg: "spot" or "perp".
        requested_qty: signed coins the env ordered.
        filled_qty: signed coins filled.
        mid: the env's planning mid (fills are booked at it).
        vwap: fill price (nan when nothing filled).
        fee: USDT fee charged.
        spread_cost: USDT of half-spread crossed.
        impact_cost: USDT of levels walked beyond the touch.
        levels_used: book levels touched.
        book: the book filled against.
    """

    env: int
    symbol: str
    leg: Leg
    requested_qty: float
    filled_qty: float
    mid: float
    vwap: float
    fee: float
    spread_cost: float
    impact_cost: float
    levels_used: int
    book: OrderBook

    @property
    def unfilled_qty(self) -> float:
        """Signed coins left unfilled (the book was exhausted)."""
        return self.requested_qty - self.filled_qty


@dataclass(frozen=True)
class OrderError:
    """An order the venue rejected or that failed on the network; nothing of it is booked.

    Attributes:
        symbol: the asset's symbol.
        leg: "spot" or "perp".
        qty: signed coins that were to be sent.
        reason: what happened, for a person (the error class and the venue's message).
        figures: the numbers behind it (amount sent, client order id, error class).
    """

    symbol: str
    leg: Leg
    qty: float
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class LegExecutor(Protocol):
    """An `Executor` that reports each leg it traded (`last_legs`, for `paper.fills`) and each
    order that failed (`last_errors`, for `paper.risk_events`) after every `execute`; the paper
    session's executor behind the risk gate (`BookExecutor`, or the live `CcxtOrderExecutor`)."""

    last_legs: list[LegFill]
    last_errors: list[OrderError]

    def execute(self, orders: Orders) -> Fills:
        """Fill `orders`; never raises for market or venue reasons."""
        ...


class BookExecutor:
    """Fills `Orders` against order books from a `BookSource` (see the module docstring).

    Args:
        symbols: the env's symbols, in its asset order.
        books: the book source.
        fees: taker fee rates (`TakerFees.from_env_config(config)`).
        fee_basis: "fill" (fee on executed notional, the exchange's rule) or "mid"
            (`SimExecutor`'s convention).
    """

    def __init__(
        self,
        symbols: tuple[str, ...] | list[str],
        books: BookSource,
        fees: TakerFees,
        fee_basis: FeeBasis = "fill",
    ) -> None:
        if fee_basis not in ("fill", "mid"):
            raise ValueError(f"BookExecutor fee_basis={fee_basis!r} must be 'fill' or 'mid'")
        self.symbols = tuple(symbols)
        self.books = books
        self.fees = fees
        self.fee_basis = fee_basis
        self.last_legs: list[LegFill] = []
        """The legs of the last `execute` call that had an order (zero orders fetch no book)."""
        self.last_errors: list[OrderError] = []
        """Always empty: walking a book cannot be rejected."""

    def execute(self, orders: Orders) -> Fills:
        """Walk each non-zero leg's book; return the filled quantities and their costs."""
        shape = orders.spot_qty.shape
        if shape[1] != len(self.symbols):
            raise ValueError(
                f"orders have {shape[1]} assets; the executor was built for {len(self.symbols)}"
            )
        out = {n: np.zeros(shape) for n in ("spot", "perp", "fees", "spread", "impact")}
        self.last_legs = []
        for b in range(shape[0]):
            for i, symbol in enumerate(self.symbols):
                for leg, qty, mid, depth in (
                    ("spot", orders.spot_qty, orders.spot_price, orders.spot_depth_usd),
                    ("perp", orders.perp_qty, orders.perp_price, orders.perp_depth_usd),
                ):
                    q = float(qty[b, i])
                    if q == 0.0:
                        continue
                    quote = Quote(
                        float(mid[b, i]), float(orders.spread_bps[b, i]), float(depth[b, i])
                    )
                    fill = self.fill_leg(b, symbol, leg, q, quote)  # type: ignore[arg-type]
                    self.last_legs.append(fill)
                    out[leg][b, i] = fill.filled_qty
                    out["fees"][b, i] += fill.fee
                    out["spread"][b, i] += fill.spread_cost
                    out["impact"][b, i] += fill.impact_cost
        return Fills(out["spot"], out["perp"], out["fees"], out["spread"], out["impact"])

    def fill_leg(self, env: int, symbol: str, leg: Leg, qty: float, quote: Quote) -> LegFill:
        """Walk one leg's current book for `qty` coins and price the result against `quote.mid`."""
        book = self.books.order_book(symbol, leg, quote)
        w = walk_book(book, qty)
        filled = abs(w.filled_qty)
        if filled == 0.0:
            return LegFill(env, symbol, leg, qty, 0.0, quote.mid, math.nan, 0.0, 0.0, 0.0, 0, book)
        side = 1.0 if qty > 0.0 else -1.0
        spread_cost = filled * side * (w.best_price - quote.mid)
        impact_cost = filled * side * (w.vwap - w.best_price)
        price = w.vwap if self.fee_basis == "fill" else quote.mid
        fee = self.fees.rate(leg) * filled * price
        return LegFill(
            env,
            symbol,
            leg,
            qty,
            w.filled_qty,
            quote.mid,
            w.vwap,
            fee,
            spread_cost,
            impact_cost,
            w.levels_used,
            book,
        )
