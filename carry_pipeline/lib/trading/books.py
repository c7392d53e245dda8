"""Order books the paper executor fills against, where they come from, and how a market order walks
them.

An `OrderBook` holds price levels in coins (base units), best first. A `BookSource` returns the
current book of one leg; it is handed the env's planning quote (`Quote`) so that a model source can
synthesise a book around it, while a venue source (the simulated exchange's snapshots here, ccxt's
`fetch_order_book` later) ignores it and returns what the venue shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import polars as pl

from carry_env.config import EnvConfig
from carry_pipeline.lib.exchanges.base import BookSummary

Leg = Literal["spot", "perp"]


@dataclass(frozen=True)
class Quote:
    """The env's view of one leg when it planned the order (anomalies included).

    Attributes:
        mid: planning mid price; fills are booked at it and every difference is a cost.
        spread_bps: quoted spread in bp.
        depth_usd: USDT resting within 10 bp of mid per side.
    """

    mid: float
    spread_bps: float
    depth_usd: float


@dataclass(frozen=True, eq=False)
class OrderBook:
    """One side-by-side snapshot of a leg's book.

    Attributes:
        symbol: the env's symbol of the asset (e.g. `BTC/USDT:USDT`).
        leg: "spot" or "perp".
        bids: `[k, 2]` array of (price, coins), best (highest) first.
        asks: `[k, 2]` array of (price, coins), best (lowest) first.
        source: where the book came from ("model", "simulated", "ccxt:binance", ...).
    """

    symbol: str
    leg: Leg
    bids: np.ndarray
    asks: np.ndarray
    source: str

    def __post_init__(self) -> None:
        where = f"order book {self.symbol} {self.leg} ({self.source})"
        for side, levels, order in (("bids", self.bids, -1.0), ("asks", self.asks, 1.0)):
            a = np.asarray(levels, dtype=np.float64)
            if a.ndim != 2 or a.shape[1] != 2 or a.shape[0] == 0:
                raise ValueError(f"{where}: {side} must be a non-empty [k, 2] array, got {a.shape}")
            if not np.isfinite(a).all() or (a <= 0.0).any():
                raise ValueError(f"{where}: {side} has non-positive or non-finite levels")
            if (order * np.diff(a[:, 0]) <= 0.0).any():
                raise ValueError(f"{where}: {side} prices are not strictly ordered best first")
            object.__setattr__(self, side, a)
        if self.bids[0, 0] >= self.asks[0, 0]:
            raise ValueError(
                f"{where}: crossed book, best bid {self.bids[0, 0]} >= best ask {self.asks[0, 0]}"
            )

    @property
    def mid(self) -> float:
        """(best bid + best ask) / 2."""
        return float(self.bids[0, 0] + self.asks[0, 0]) / 2.0

    def to_record(self) -> dict[str, Any]:
        """The book as plain lists, for the ledger."""
        return {
            "symbol": self.symbol,
            "leg": self.leg,
            "source": self.source,
            "bids": self.bids.tolist(),
            "asks": self.asks.tolist(),
        }


@dataclass(frozen=True)
class Walk:
    """A market order walked through one side of a book.

    Attributes:
        requested_qty: signed coins asked for (> 0 buys the asks, < 0 sells into the bids).
        filled_qty: signed coins filled (same sign, |filled| <= |requested|).
        vwap: volume-weighted fill price (nan when nothing filled).
        best_price: the touch of the side walked (best ask for a buy, best bid for a sell).
        levels_used: levels touched, the last possibly partly.
    """

    requested_qty: float
    filled_qty: float
    vwap: float
    best_price: float
    levels_used: int

    @property
    def unfilled_qty(self) -> float:
        """Signed coins the book could not take (the remainder of an exhausted book)."""
        return self.requested_qty - self.filled_qty

    @property
    def notional(self) -> float:
        """USDT exchanged: |filled| * vwap (0 when nothing filled)."""
        return abs(self.filled_qty) * self.vwap if self.filled_qty != 0.0 else 0.0


def walk_book(book: OrderBook, qty: float) -> Walk:
    """Fill a market order of `qty` coins level by level: asks for a buy, bids for a sell.

    Each level fills up to its size at its price; when every level is used the rest is unfilled.

    Raises:
        ValueError: `qty` is not finite.
    """
    if not math.isfinite(qty):
        raise ValueError(f"order quantity {qty!r} for {book.symbol} {book.leg} is not finite")
    side = book.asks if qty > 0.0 else book.bids
    left = abs(qty)
    cost = 0.0
    used = 0
    for price, size in side:
        if left <= 0.0:
            break
        take = min(left, size)
        cost += take * price
        left -= take
        used += 1
    filled = abs(qty) - left
    vwap = cost / filled if filled > 0.0 else math.nan
    return Walk(qty, math.copysign(filled, qty) if filled > 0.0 else 0.0, vwap, side[0, 0], used)


@runtime_checkable
class BookSource(Protocol):
    """Where the paper executor gets the current book of one leg."""

    def order_book(self, symbol: str, leg: Leg, reference: Quote) -> OrderBook:
        """The book of `symbol`'s `leg` now; `reference` is the env's planning quote (a venue source
        ignores it)."""
        ...


class ModelBookSource:
    """Books synthesised from the env's own cost model around its planning quote.

    The touch sits at `mid * (1 +- (spread/2 + tick))`; level j covers the notional `[x_j, x_j+1)`
    (measured at mid) and is priced at the model's average marginal cost over it, `mid * (1 +
    (C(x_j+1) - C(x_j)) / (x_j+1 - x_j))` with `C(x) = k x^2 / depth` (linear) or `k x^1.5 /
    sqrt(depth)` (sqrt). Walking whole levels therefore costs exactly what `SimExecutor` charges
    for a taker order; a partly used last level is off by at most `k * dx^2 / (4 * depth)` USDT
    (linear, `dx` the level width). With impact off (`slippage=False` or `slippage_k=0`) the book
    is one level and walking it reproduces the sim's cost exactly.

    Args:
        config: the env config whose spread, tick and impact the books reproduce.
        levels: levels per side when impact is on.
        span_depths: the side holds `span_depths * depth_usd` of notional in all.
    """

    def __init__(self, config: EnvConfig, levels: int = 400, span_depths: float = 40.0) -> None:
        if levels < 1:
            raise ValueError(f"ModelBookSource levels={levels} must be >= 1")
        if not span_depths > 0.0:
            raise ValueError(f"ModelBookSource span_depths={span_depths} must be > 0")
        self.config = config
        self.levels = levels
        self.span_depths = span_depths

    @property
    def impact_on(self) -> bool:
        """Whether the books have depth-dependent levels (the env's impact is on)."""
        return self.config.slippage and self.config.slippage_k > 0.0

    def level_width_usd(self, depth_usd: float) -> float:
        """Notional (at mid) of one level for a leg of `depth_usd`."""
        return self.span_depths * depth_usd / (self.levels if self.impact_on else 1)

    def order_book(self, symbol: str, leg: Leg, reference: Quote) -> OrderBook:
        """A book of `self.levels` levels per side (one with impact off) around `reference.mid`."""
        c = self.config
        mid, depth = reference.mid, reference.depth_usd
        touch = (reference.spread_bps * 0.5e-4 if c.spread else 0.0) + (
            c.tick_bps * 1e-4 if c.slippage else 0.0
        )
        n = self.levels if self.impact_on else 1
        edges = np.linspace(0.0, self.span_depths * depth, n + 1)
        if self.impact_on:
            cum = _impact_cost(edges, depth, c.slippage_k, c.slippage_model)
            marginal = np.diff(cum) / np.diff(edges)
        else:
            marginal = np.zeros(n)
        offsets = touch + marginal
        coins = np.diff(edges) / mid
        asks = np.column_stack([mid * (1.0 + offsets), coins])
        bids = np.column_stack([mid * (1.0 - offsets), coins])
        return OrderBook(symbol, leg, bids, asks, "model")


def _impact_cost(x: np.ndarray, depth: float, k: float, model: str) -> np.ndarray:
    # The env's impact in USDT for a taker notional x (carry_env.kernel.leg_costs, without tick).
    if model == "linear":
        return k * x * x / depth
    return k * x * np.sqrt(x / depth)


class SimulatedExchangeBooks:
    """Books of the simulated exchange: its latest snapshot summary at the paper clock, as levels.

    `SimulatedExchange.fetch_order_book` serves top of book and USDT depth within +-10 and +-50 bp
    per side (the raw table's columns); `ladder_from_summary` turns one snapshot into levels.

    Args:
        exchange: a `SimulatedExchange` (or any client with its `fetch_order_book`).
        clock: returns the paper session's current time (UTC); the latest snapshot at or before it
            is used.
        lookback: the exchange's snapshot interval; the snapshot used is at most two of them old.
        levels_per_band: levels per depth band in the ladder.
    """

    def __init__(
        self,
        exchange: Any,
        clock: Any,
        lookback: timedelta = timedelta(hours=1),
        levels_per_band: int = 5,
    ) -> None:
        self.exchange = exchange
        self.clock = clock
        self.lookback = lookback
        self.levels_per_band = levels_per_band

    def order_book(self, symbol: str, leg: Leg, reference: Quote) -> OrderBook:
        """The latest snapshot of `symbol`'s leg at the clock, as a ladder (`reference` unused).

        Raises:
            LookupError: the exchange has no snapshot in that window.
        """
        now: datetime = self.clock()
        base = symbol.split("/")[0]
        venue_symbol = f"{base}/USDT" if leg == "spot" else f"{base}/USDT:USDT"
        # The simulator serves windows on its snapshot grid: fetch from one step before the step
        # containing `now` to the step after it, then keep ts <= now.
        step = self.lookback.total_seconds()
        start = datetime.fromtimestamp((now.timestamp() // step - 1) * step, tz=now.tzinfo)
        end = datetime.fromtimestamp((now.timestamp() // step + 1) * step, tz=now.tzinfo)
        frame = self.exchange.fetch_order_book(venue_symbol, leg, start, end)
        frame = frame.filter(pl.col("ts") <= now)
        if frame.height == 0:
            raise LookupError(f"no {leg} order book for {symbol} in [{start}, {now}]")
        row = frame.sort("ts").row(-1, named=True)
        summary = BookSummary(
            row["best_bid"],
            row["best_ask"],
            row["mid"],
            row["spread_bps"],
            row["bid_depth_10bps_usd"],
            row["ask_depth_10bps_usd"],
            row["bid_depth_50bps_usd"],
            row["ask_depth_50bps_usd"],
        )
        return ladder_from_summary(symbol, leg, summary, self.levels_per_band, source="simulated")


def ladder_from_summary(
    symbol: str, leg: Leg, summary: BookSummary, levels_per_band: int = 5, source: str = "summary"
) -> OrderBook:
    """Levels that reproduce a book summary: per side, the 10 bp depth spread evenly over
    `levels_per_band` levels from the touch to 10 bp, then the rest of the 50 bp depth evenly from
    10 bp to 50 bp.

    Each band's notional is split equally between its levels (coins = notional / price), so the
    ladder's depth within 10 and 50 bp equals the summary's.

    Raises:
        ValueError: a band has no room (the touch at or beyond 10 bp) or negative depth.
    """
    n = levels_per_band
    if n < 1:
        raise ValueError(f"levels_per_band={n} must be >= 1")
    mid = summary.mid
    sides = []
    for sign, best, d10, d50 in (
        (-1.0, summary.best_bid, summary.bid_depth_10bps_usd, summary.bid_depth_50bps_usd),
        (1.0, summary.best_ask, summary.ask_depth_10bps_usd, summary.ask_depth_50bps_usd),
    ):
        if d10 <= 0.0 or d50 < d10:
            raise ValueError(
                f"{symbol} {leg} book summary: depths 10 bp {d10}, 50 bp {d50} must satisfy "
                "0 < depth_10 <= depth_50"
            )
        p10 = mid * (1.0 + sign * 10e-4)
        if sign * (p10 - best) <= 0.0:
            raise ValueError(f"{symbol} {leg} book summary: touch {best} is beyond 10 bp of {mid}")
        inner = np.linspace(best, p10, n)
        outer = np.linspace(p10, mid * (1.0 + sign * 50e-4), n + 1)[1:]
        prices = np.concatenate([inner, outer])
        notional = np.concatenate([np.full(n, d10 / n), np.full(n, (d50 - d10) / n)])
        keep = notional > 0.0
        sides.append(np.column_stack([prices[keep], notional[keep] / prices[keep]]))
    return OrderBook(symbol, leg, sides[0], sides[1], source)
