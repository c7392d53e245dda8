"""`CcxtExchange`: real exchanges through ccxt (binance spot + binanceusdm perps by default).

Every request goes through `_call`, which classifies a failure by what the venue said, not only by
ccxt's exception class:

- retried with exponential backoff, a bounded number of times: ccxt `NetworkError` and subclasses
  (timeouts, connection resets, `ExchangeNotAvailable` for a bare 5xx, `OnMaintenance`), corrupt
  200 bodies (ccxt silently parses an undecodable body as "no rows"), any HTTP 5xx, and the venue
  codes for transient trouble (`_TRANSIENT_CODES`: Binance -1000 unknown error, -1001
  disconnected, -1007 backend timeout, -1008 server busy, which ccxt raises as `OperationFailed`
  or plain `ExchangeError`; Bybit 10000/10006/10016; OKX 50001/50004/50011/50013/50026);
- rate limits (HTTP 429, and 418 = Binance's IP ban) wait at least the `Retry-After` the venue
  asked for (never less than the backoff); a wait over `max_retry_after_s` fails at once, naming it;
- anything else (unknown symbol -1121, bad key -2014/-2015, rejected parameter -1100/-1102/-1130,
  any other 4xx) is `PermanentExchangeError` at once.

An empty page where the venue should still have rows (a closed bar, or a settlement due before the
window end and now) is a fault, retried like one; if it persists, paging stops there (the end of
the venue's history) and the row-count check names the gap. Funding paging never stops on a page
that is short only after filtering: only a page the venue itself served short is the last one.

Keys never reach a log: every ccxt client logs through `_RedactingLogger`, which replaces the
configured key, secret and password with `***` before a record exists (ccxt's DEBUG log prints the
`X-MBX-APIKEY` request header of signed calls), and ccxt's `verbose` printing is off.

Paging follows each venue's rules: klines and Binance funding are paged forwards from `since`;
Bybit and OKX funding history answer with the newest rows of the range asked for and are paged
backwards from the window end; rows per request are capped at what the venue serves.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import ccxt
import polars as pl

from carry_pipeline.lib.exchanges.base import (
    Market,
    PermanentExchangeError,
    TransientExchangeError,
    add_interval_hours,
    check_window,
    floor_funding_time,
    ms_to_ts,
    reduce_order_book,
    timeframe_delta,
    utc_now,
    with_ingested_at,
)
from carry_pipeline.lib.schemas import (
    FUNDING_SCHEMA,
    OHLCV_SCHEMA,
    ORDER_BOOK_SCHEMA,
    conform,
    empty_frame,
)

# Looking back this far before a window finds the previous settlement, so `interval_hours` is known
# for the window's first row (intervals are at most 8 h on the venues supported).
_FUNDING_LOOKBACK = timedelta(hours=24)

# Rows one request returns at most where a venue serves fewer than `page_limit` may ask for (Bybit
# v5 funding history 200; OKX v5 candles and history-candles 300, funding history 100). Page
# budgets and the "short page = last page" test must count the venue's pages.
_PAGE_CAP: dict[tuple[str, str], int] = {
    ("binance", "ohlcv"): 1000,
    ("binanceusdm", "ohlcv"): 1500,
    ("binanceusdm", "funding"): 1000,
    ("bybit", "ohlcv"): 1000,
    ("bybit", "funding"): 200,
    ("okx", "ohlcv"): 300,
    ("okx", "funding"): 100,
}
# Venues whose funding history answers with the NEWEST `limit` rows of the range asked for, so
# paging forward from `since` skips rows (Bybit, when the range ccxt derives from the current
# funding interval holds more than a page) or only ever gets the latest rows (OKX ignores a lone
# `before`). They are paged backwards from the window end: ccxt param of the upper bound, and
# whether the venue treats it as inclusive.
_FUNDING_UPPER_BOUND: dict[str, tuple[str, bool]] = {
    "bybit": ("until", True),  # -> endTime
    "okx": ("after", False),  # "records earlier than"
}


# Venue error codes (the JSON body's `code`/`retCode`) that mean transient trouble on the venue's
# side, whatever HTTP status and ccxt exception class carry them.
_TRANSIENT_CODES: frozenset[str] = frozenset(
    {
        "-1000",  # Binance UNKNOWN: an unknown error occurred while processing the request
        "-1001",  # Binance DISCONNECTED: internal error; unable to process your request
        "-1007",  # Binance TIMEOUT: timeout waiting for response from backend server
        "-1008",  # Binance SERVER_BUSY: server is currently overloaded
        "10000",  # Bybit server timeout
        "10006",  # Bybit too many visits
        "10016",  # Bybit server error
        "50001",  # OKX service temporarily unavailable
        "50004",  # OKX endpoint request timeout
        "50011",  # OKX rate limit reached
        "50013",  # OKX system busy
        "50026",  # OKX system error
    }
)
_RATE_LIMIT_STATUS = (418, 429)
# A settlement interval assumed before two settlements have been seen (the longest in use).
_MAX_FUNDING_INTERVAL_MS = 8 * 3_600_000
# How long after a settlement a venue may take to list it in the history.
_PUBLISH_GRACE_MS = 5 * 60_000


class CcxtExchange:
    """Market data from ccxt exchanges.

    Args:
        spot_exchange: ccxt id serving spot data ("binance", "bybit", "okx").
        perp_exchange: ccxt id serving linear perpetuals ("binanceusdm", "bybit", "okx").
        api_url: if set, replaces scheme and host of every REST endpoint (keeping paths), for
        proxies,
            testnets and loopback stubs, e.g. "http://127.0.0.1:8080".
        api_key: API key, if any (public data needs none). Pass it from `dg.EnvVar`.
        secret: API secret, if any.
        password: API passphrase (OKX), if any.
        timeout_ms: per-request timeout.
        max_retries: retries of one request after a transient failure (so at most max_retries + 1
            attempts).
        backoff_s: first retry delay; doubles on every further retry.
        max_backoff_s: cap of one retry delay (a venue's `Retry-After` may ask for more).
        max_retry_after_s: the longest `Retry-After` waited for; a longer one (a Binance IP ban
            lasts minutes to days) fails at once with the wait asked for.
        page_limit: rows requested per page (Binance serves at most 1000 spot klines per call);
            capped per venue where it serves fewer (Bybit funding 200, OKX candles 300, OKX
            funding 100).
        order_book_limit: price levels requested per side.
        sleep: the sleep function used between retries (tests pass a recorder).
        clock: returns "now" (UTC).
    """

    def __init__(
        self,
        spot_exchange: str = "binance",
        perp_exchange: str = "binanceusdm",
        *,
        api_url: str | None = None,
        api_key: str | None = None,
        secret: str | None = None,
        password: str | None = None,
        timeout_ms: int = 10_000,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_retry_after_s: float = 300.0,
        page_limit: int = 1000,
        order_book_limit: int = 500,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        _check_config(
            timeout_ms=timeout_ms,
            max_retries=max_retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            max_retry_after_s=max_retry_after_s,
            page_limit=page_limit,
            order_book_limit=order_book_limit,
        )
        self.ids: dict[Market, str] = {"spot": spot_exchange, "perp": perp_exchange}
        self.api_url = api_url
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.page_limit = page_limit
        self.order_book_limit = order_book_limit
        self.sleep = sleep
        self.clock = clock
        self.requests = 0
        self.retries = 0
        creds = {"apiKey": api_key, "secret": secret, "password": password}
        self._clients: dict[Market, ccxt.Exchange] = {}
        for market, ex_id in self.ids.items():
            same = [m for m, i in self.ids.items() if i == ex_id and m in self._clients]
            if same:
                self._clients[market] = self._clients[same[0]]
                continue
            if ex_id not in ccxt.exchanges:
                raise PermanentExchangeError(
                    f"{market}_exchange {ex_id!r} is not a ccxt exchange id (e.g. binance, "
                    "binanceusdm, bybit, okx)"
                )
            config: dict[str, Any] = {"enableRateLimit": True, "timeout": timeout_ms}
            config |= {k: v for k, v in creds.items() if v}
            client = getattr(ccxt, ex_id)(config)
            client.verbose = False  # ccxt's verbose mode print()s request headers (the key)
            client.logger = _RedactingLogger(client.logger, [v for v in creds.values() if v])
            _record_status(client)
            if api_url:
                _override_urls(client, api_url)
            self._clients[market] = client

    def client(self, market: Market) -> ccxt.Exchange:
        """The ccxt instance serving a market leg (tests inject markets with `set_markets`)."""
        return self._clients[market]

    def exchange_name(self, market: Market) -> str:
        """The ccxt id serving this leg ("binance", "binanceusdm", ...)."""
        return self.ids[market]

    # ---------------------------------------------------------------------------------------------

    def check_symbols(self, symbols: list[str]) -> None:
        """Check symbols against each leg's markets (loading them once if not injected).

        Spot symbols (`BTC/USDT`) are looked up on the spot exchange, perp symbols (`BTC/USDT:USDT`)
        on the perp exchange.

        Raises:
            PermanentExchangeError: naming the unknown symbols and a few listed ones.
        """
        for market in ("spot", "perp"):
            wanted = [s for s in symbols if (":" in s) == (market == "perp")]
            if not wanted:
                continue
            client = self._clients[market]
            if not client.markets:
                self._call(client.load_markets, what=f"{client.id}.load_markets")
            missing = [s for s in wanted if s not in client.markets]
            if missing:
                listed = sorted(client.markets)[:8]
                raise PermanentExchangeError(
                    f"{client.id} does not list {missing} ({len(client.markets)} markets, e.g. "
                    f"{listed}); spot symbols look like 'BTC/USDT', perps like 'BTC/USDT:USDT'"
                )

    def fetch_ohlcv(
        self, symbol: str, market: Market, timeframe: str, start: datetime, end: datetime
    ) -> pl.DataFrame:
        """Closed bars opening in `[start, end)`, paginated, in `OHLCV_SCHEMA`.

        Bars still open at fetch time (the exchange's partial last candle) are dropped.
        """
        check_window(start, end)
        self.check_symbols([symbol])
        client = self._clients[market]
        step_ms = int(timeframe_delta(timeframe).total_seconds() * 1000)
        start_ms, end_ms = _ms(start), _ms(end)
        rows: list[list[Any]] = []
        since = start_ms
        limit = self._page_size(client.id, "ohlcv")
        max_pages = math.ceil((end_ms - start_ms) / step_ms / limit) + 2
        what = f"{client.id}.fetch_ohlcv({symbol}, {timeframe})"
        now_ms = _ms(self.clock())
        for _ in range(max_pages):
            # Rows from `since` on, as served; an empty answer while the bar opening at `since`
            # has closed is a lost page, not the end of the data.
            served = self._page(
                lambda s=since: [  # type: ignore[misc]
                    _check_ohlcv_row(r, what)
                    for r in self._call(client.fetch_ohlcv, symbol, timeframe, s, limit, what=what)
                    if r and r[0] >= s
                ],
                expect_rows=since + step_ms <= now_ms,
                what=f"{what} from {ms_to_ts([since])[0]}",
            )
            page = [r for r in served if r[0] < end_ms]
            if not page:
                break
            rows.extend(page)
            since = int(page[-1][0]) + step_ms
            if since >= end_ms or len(page) < len(served):
                break
        else:
            raise TransientExchangeError(
                f"{what}: pagination did not reach {end.isoformat()} within {max_pages} pages "
                f"(stopped at {ms_to_ts([since])[0]})"
            )
        now = self.clock()
        frame = _ohlcv_frame(rows).unique("ts", keep="first").sort("ts")
        frame = frame.filter(pl.col("ts") + timedelta(milliseconds=step_ms) <= now)
        frame = frame.with_columns(
            pl.lit(client.id).alias("exchange"), pl.lit(symbol).alias("symbol")
        )
        return conform(with_ingested_at(frame, now), OHLCV_SCHEMA, table=f"raw_{market}_ohlcv")

    def fetch_funding(self, symbol: str, start: datetime, end: datetime) -> pl.DataFrame:
        """Settlements in `[start, end)`, paginated, times floored to the second,
        `FUNDING_SCHEMA`."""
        check_window(start, end)
        self.check_symbols([symbol])
        client = self._clients["perp"]
        what = f"{client.id}.fetch_funding_rate_history({symbol})"
        since = _ms(start - _FUNDING_LOOKBACK)
        end_ms = _ms(end)
        limit = self._page_size(client.id, "funding")
        # Settlements are at least an hour apart.
        max_pages = math.ceil((end_ms - since) / 3_600_000 / limit) + 2
        if client.id in _FUNDING_UPPER_BOUND:
            records = self._funding_backwards(client, symbol, since, end_ms, limit, max_pages, what)
        else:
            records = self._funding_forwards(client, symbol, since, end_ms, limit, max_pages, what)
        now = self.clock()
        frame = _funding_frame(records, what)
        frame = add_interval_hours(frame.unique("funding_time", keep="first"))
        frame = frame.filter(pl.col("funding_time") >= start).with_columns(
            pl.lit(client.id).alias("exchange"), pl.lit(symbol).alias("symbol")
        )
        return conform(with_ingested_at(frame, now), FUNDING_SCHEMA, table="raw_funding_rates")

    def fetch_order_book(
        self, symbol: str, market: Market, start: datetime, end: datetime
    ) -> pl.DataFrame:
        """One live snapshot if now lies in `[start, end)`, else no rows (no book history exists).

        Amounts are converted to base units with the market's contract size (OKX swaps quote
        contracts: BTC-USDT-SWAP ctVal 0.01 BTC) before depth is summed.
        """
        check_window(start, end)
        now = self.clock()
        if not start <= now < end:
            return empty_frame(ORDER_BOOK_SCHEMA)
        self.check_symbols([symbol])
        client = self._clients[market]
        what = f"{client.id}.fetch_order_book({symbol})"
        book = self._call(client.fetch_order_book, symbol, self.order_book_limit, what=what)
        info = client.market(symbol)
        size = float(info.get("contractSize") or 1.0) if info.get("contract") else 1.0
        summary = reduce_order_book(
            book.get("bids") or [], book.get("asks") or [], size, where=what
        )
        ts = ms_to_ts([book["timestamp"]])[0] if book.get("timestamp") else now
        frame = pl.DataFrame(
            {
                "ts": [ts],
                "exchange": [client.id],
                "symbol": [symbol],
                "market": [market],
                **{k: [v] for k, v in vars(summary).items()},
            }
        )
        return conform(with_ingested_at(frame, now), ORDER_BOOK_SCHEMA, table="raw_order_book")

    # ---------------------------------------------------------------------------------------------

    def _page_size(self, exchange_id: str, kind: str) -> int:
        # Rows per request: page_limit, capped by what the venue serves.
        return min(self.page_limit, _PAGE_CAP.get((exchange_id, kind), self.page_limit))

    def _funding_forwards(
        self,
        client: ccxt.Exchange,
        symbol: str,
        since: int,
        end_ms: int,
        limit: int,
        max_pages: int,
        what: str,
    ) -> list[dict[str, Any]]:
        # Oldest-first venues (Binance): each page starts just after the last row received.
        # A page the venue served short is the last one; a page made short by dropping rows
        # (ccxt drops those older than `since`, we drop duplicates) is not. Rows from `since` on,
        # as served: an empty answer while a settlement is due before the window end and now is a
        # lost page, not the end of the data.
        records: list[dict[str, Any]] = []
        now_ms = _ms(self.clock())
        served_len = [0]

        def fetch(start_ms: int) -> list[dict[str, Any]]:
            raw = self._call(client.fetch_funding_rate_history, symbol, start_ms, limit, what=what)
            served_len[0] = _served_rows(client, len(raw))
            return [r for r in raw if r.get("timestamp") is not None and r["timestamp"] >= start_ms]

        for _ in range(max_pages):
            due = (int(records[-1]["timestamp"]) if records else since) + _funding_step_ms(records)
            served = self._page(
                lambda s=since: fetch(s),  # type: ignore[misc]
                expect_rows=due < min(end_ms, now_ms - _PUBLISH_GRACE_MS),
                what=f"{what} from {ms_to_ts([since])[0]}",
            )
            seen = int(records[-1]["timestamp"]) if records else -1
            page = [r for r in served if seen < r["timestamp"] < end_ms]
            if page:
                records.extend(page)
                since = int(page[-1]["timestamp"]) + 1
            reached_end = any(r["timestamp"] >= end_ms for r in served)
            if not page or reached_end or served_len[0] < limit:
                break
        else:
            raise TransientExchangeError(f"{what}: pagination did not finish in {max_pages} pages")
        return records

    def _funding_backwards(
        self,
        client: ccxt.Exchange,
        symbol: str,
        since: int,
        end_ms: int,
        limit: int,
        max_pages: int,
        what: str,
    ) -> list[dict[str, Any]]:
        # Newest-first venues (Bybit, OKX): ask for [since, upper) and lower `upper` to the oldest
        # row received, until a page comes back short (the range holds no more rows). An empty
        # page after a full one, with a settlement interval or more left above `since`, is a
        # lost page and retried.
        param, inclusive = _FUNDING_UPPER_BOUND[client.id]
        records: list[dict[str, Any]] = []
        upper = end_ms
        served_len = [0]

        def fetch(up: int) -> list[dict[str, Any]]:
            bound = {param: up - 1 if inclusive else up}
            raw = self._call(
                client.fetch_funding_rate_history, symbol, since, limit, bound, what=what
            )
            served_len[0] = len(raw)
            return [r for r in raw if r.get("timestamp") is not None]

        for _ in range(max_pages):
            page = self._page(
                lambda u=upper: fetch(u),  # type: ignore[misc]
                expect_rows=bool(records) and upper - _MAX_FUNDING_INTERVAL_MS > since,
                what=f"{what} before {ms_to_ts([upper])[0]}",
            )
            page = [r for r in page if since <= r["timestamp"] < upper]
            if not page:
                break
            records.extend(page)
            upper = min(int(r["timestamp"]) for r in page)
            if served_len[0] < limit or upper <= since:
                break
        else:
            raise TransientExchangeError(f"{what}: pagination did not finish in {max_pages} pages")
        return sorted(records, key=lambda r: int(r["timestamp"]))

    def _call(self, fn: Callable[..., Any], *args: Any, what: str) -> Any:
        # Bounded retries with exponential backoff on transient errors (Retry-After honoured on
        # rate limits); permanent errors at once.
        client = getattr(fn, "__self__", None)
        for attempt in range(self.max_retries + 1):
            self.requests += 1
            if client is not None:
                client.carry_last_status = None
            try:
                result = fn(*args)
                _check_body(fn, what)
                return result
            except (ccxt.BaseError, _CorruptBody) as exc:
                status = getattr(client, "carry_last_status", None)
                code = _venue_code(client)
                if not _is_transient(exc, status, code):
                    raise PermanentExchangeError(
                        f"{what}: {type(exc).__name__}: {_short(exc)} (HTTP {status}, venue code "
                        f"{code}; not retried: the exchange rejected the request)"
                    ) from exc
                if attempt == self.max_retries:
                    raise TransientExchangeError(
                        f"{what}: gave up after {attempt + 1} attempts; last error "
                        f"{type(exc).__name__} (HTTP {status}, venue code {code}): {_short(exc)}"
                    ) from exc
                self.retries += 1
                self.sleep(self._delay(attempt, status, client, what))
        raise AssertionError("unreachable")  # the loop returns or raises

    def _delay(self, attempt: int, status: int | None, client: Any, what: str) -> float:
        # The backoff, or at least the venue's Retry-After on a rate limit.
        delay = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        if status not in _RATE_LIMIT_STATUS:
            return delay
        asked = _retry_after_s(getattr(client, "last_response_headers", None))
        if asked is None:
            return delay
        if asked > self.max_retry_after_s:
            raise TransientExchangeError(
                f"{what}: HTTP {status}, the venue asks to wait {asked:g} s (Retry-After) before "
                f"the next request, more than max_retry_after_s={self.max_retry_after_s:g}; "
                "rerun after that wait"
            )
        return max(delay, asked)

    def _page(self, fetch: Callable[[], list[Any]], expect_rows: bool, what: str) -> list[Any]:
        # One page; an empty one where rows must exist is retried like any transient fault. If it
        # stays empty the venue's history ends there and the caller stops paging.
        page = fetch()
        for attempt in range(self.max_retries):
            if page or not expect_rows:
                return page
            self.retries += 1
            self.sleep(min(self.backoff_s * 2**attempt, self.max_backoff_s))
            page = fetch()
        if not page and expect_rows:
            _log.warning(
                "%s: still empty after %d retries; the venue's history ends here",
                what,
                self.max_retries,
            )
        return page


def _check_config(**fields: float) -> None:
    # Numeric settings, each named in the error: counts and timeouts > 0, retries and delays >= 0.
    positive = ("timeout_ms", "page_limit", "order_book_limit")
    bad = [
        f"{name}={value!r} must be {'> 0' if name in positive else '>= 0'}"
        for name, value in fields.items()
        if (value <= 0 if name in positive else value < 0) or value != value  # NaN too
    ]
    if bad:
        raise ValueError(f"CcxtExchange config: {'; '.join(bad)}")


def _served_rows(client: Any, parsed: int) -> int:
    # Rows in the venue's last answer, before ccxt dropped any (it filters rows older than
    # `since`, so an overlapping page looks short); `parsed` when the body is not a JSON list.
    body = getattr(client, "last_http_response", None)
    try:
        rows = json.loads(body) if body else None
    except ValueError:
        return parsed
    return len(rows) if isinstance(rows, list) else parsed


def _funding_step_ms(records: list[dict[str, Any]]) -> int:
    # The settlement interval seen last (the longest in use until two settlements are known).
    if len(records) < 2:
        return _MAX_FUNDING_INTERVAL_MS
    return int(records[-1]["timestamp"]) - int(records[-2]["timestamp"])


def _is_transient(exc: BaseException, status: int | None, code: str | None) -> bool:
    # Retryable: network trouble, corrupt bodies, rate limits, any 5xx, transient venue codes.
    if isinstance(exc, (ccxt.NetworkError, _CorruptBody)):
        return True
    if code in _TRANSIENT_CODES:
        return True
    return status is not None and (status >= 500 or status in _RATE_LIMIT_STATUS)


def _venue_code(client: Any) -> str | None:
    # The error code of the last JSON body (Binance/OKX `code`, Bybit `retCode`), if any.
    body = getattr(client, "last_http_response", None)
    if not body:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    code = parsed.get("code", parsed.get("retCode"))
    return None if code is None else str(code)


def _retry_after_s(headers: Any) -> float | None:
    # Seconds asked for by a `Retry-After` header (delta-seconds form), if any.
    if not headers:
        return None
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


def _record_status(client: ccxt.Exchange) -> None:
    # Keep the HTTP status of the last response on the client (ccxt's errors do not carry it).
    original = client.on_rest_response

    def on_rest_response(code: int, reason: str, *args: Any) -> Any:
        client.carry_last_status = int(code)
        return original(code, reason, *args)

    client.carry_last_status = None
    client.on_rest_response = on_rest_response


_log = logging.getLogger(__name__)


class _RedactingLogger:
    """Stands in for a ccxt client's logger: formats each message and replaces every secret with
    `***` before a record exists, so no handler at any level ever sees a key."""

    def __init__(self, logger: logging.Logger, secrets: list[str]) -> None:
        self._logger = logger
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """`text` with every secret replaced by `***`."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self._logger.isEnabledFor(level):
            return
        text = str(msg) % args if args else str(msg)
        kwargs.pop("exc_info", None)
        self._logger.log(level, "%s", self.redact(text), stacklevel=3)

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log at DEBUG, redacted."""
        self._log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log at INFO, redacted."""
        self._log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log at WARNING, redacted."""
        self._log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log at ERROR, redacted."""
        self._log(logging.ERROR, msg, *args, **kwargs)

    def exception(self, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log at ERROR, redacted (no traceback: frames may hold the key)."""
        self._log(logging.ERROR, msg, *args, **kwargs)

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log at `level`, redacted."""
        self._log(level, msg, *args, **kwargs)

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's naming
        """Whether the wrapped logger handles `level`."""
        return self._logger.isEnabledFor(level)


class _CorruptBody(Exception):
    """The exchange answered 200 with a body that is not valid JSON."""


def _check_body(fn: Callable[..., Any], what: str) -> None:
    client = getattr(fn, "__self__", None)
    body = getattr(client, "last_http_response", None)
    if not body:
        return
    try:
        json.loads(body)
    except ValueError as exc:
        raise _CorruptBody(f"{what}: undecodable body {body[:80]!r}") from exc


def _override_urls(client: ccxt.Exchange, api_url: str) -> None:
    # Replace scheme://host of every REST endpoint with api_url, keeping the path (/api/v3,
    # /fapi/v1).
    base = api_url.rstrip("/")
    parsed = urlsplit(base)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise PermanentExchangeError(f"api_url {api_url!r} must look like 'https://host[:port]'")
    hostname = getattr(client, "hostname", None) or "localhost"

    def rewrite(node: Any) -> Any:
        if isinstance(node, str):
            return base + urlsplit(node.replace("{hostname}", hostname)).path
        if isinstance(node, dict):
            return {k: rewrite(v) for k, v in node.items()}
        return node

    client.urls["api"] = rewrite(client.urls["api"])


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "..."


def _check_ohlcv_row(row: list[Any], what: str) -> list[Any]:
    if len(row) < 6 or any(v is None for v in row[:5]):
        raise TransientExchangeError(f"{what}: malformed kline {row!r}")
    return row


def _ohlcv_frame(rows: list[list[Any]]) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame(
            schema={"ts": OHLCV_SCHEMA["ts"], **{c: pl.Float64() for c in _OHLCV_COLS}}
        )
    cols = list(zip(*[r[:6] for r in rows], strict=True))
    frame = pl.DataFrame(
        {"ts": ms_to_ts(list(cols[0]))}
        | {c: pl.Series(cols[i + 1], dtype=pl.Float64) for i, c in enumerate(_OHLCV_COLS)}
    )
    return frame.with_columns(pl.col("volume").fill_null(0.0))


_OHLCV_COLS = ("open", "high", "low", "close", "volume")


def _funding_frame(records: list[dict[str, Any]], what: str) -> pl.DataFrame:
    rates, marks = [], []
    for r in records:
        if r.get("fundingRate") is None:
            raise TransientExchangeError(f"{what}: settlement without a rate: {r.get('info')!r}")
        rates.append(float(r["fundingRate"]))
        mark = (r.get("info") or {}).get("markPrice")
        marks.append(float(mark) if mark not in (None, "") else None)
    return pl.DataFrame(
        {
            "funding_time": ms_to_ts([int(r["timestamp"]) for r in records]),
            "symbol": [""] * len(records),
            "funding_rate": pl.Series(rates, dtype=pl.Float64),
            "mark_price": pl.Series(marks, dtype=pl.Float64),
        }
    ).with_columns(floor_funding_time(pl.col("funding_time")))
