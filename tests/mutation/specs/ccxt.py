"""Curated mutations of the ccxt exchange client and the `exchange` resource (issue 8 sections 2-4):
retry classification, Retry-After, mid-range empty pages, short funding pages, config validation,
credentials, key redaction and live order-book appends. Each was applied by hand and fails at
least one of its tests."""

from __future__ import annotations

from tests.mutation.spec import Mutation

CCXT = "carry_pipeline/lib/exchanges/ccxt_exchange.py"
RESOURCES = "carry_pipeline/defs/ingestion/resources.py"
FAULTS = "tests/pipeline/ingestion/test_ccxt_faults.py"
RESOURCE_TESTS = "tests/pipeline/ingestion/test_resources.py"
VENUES = "tests/pipeline/ingestion/test_ccxt_venues.py"
SNAPSHOTS = "carry_pipeline/defs/ingestion/order_book_snapshots.py"
SNAPSHOT_TESTS = "tests/pipeline/ingestion/test_order_book_snapshots.py"
BASE = "carry_pipeline/lib/exchanges/base.py"
FIXTURE_TESTS = "tests/pipeline/ingestion/test_ccxt_fixtures.py"

MUTATIONS: list[Mutation] = [
    Mutation(
        id="ccxt-5xx-json-not-retried",
        path=CCXT,
        old="    if code in _TRANSIENT_CODES:\n        return True\n"
        "    return status is not None and (status >= 500 or status in _RATE_LIMIT_STATUS)",
        new="    return False",
        tests=(f"{FAULTS}::test_binance_transient_codes_are_retried",),
        note="only ccxt NetworkErrors retried: Binance 5xx with -1000/-1001/-1008 fail at once",
    ),
    Mutation(
        id="ccxt-venue-code-ignored",
        path=CCXT,
        old="    if code in _TRANSIENT_CODES:\n        return True\n",
        new="",
        tests=(f"{FAULTS}::test_binance_transient_codes_are_retried",),
        note="transient venue codes on a 200 answer (Bybit/OKX style) are not retried",
    ),
    Mutation(
        id="ccxt-4xx-retried",
        path=CCXT,
        old="(status >= 500 or status in _RATE_LIMIT_STATUS)",
        new="(status >= 400 or status in _RATE_LIMIT_STATUS)",
        tests=(f"{FAULTS}::test_rejections_fail_at_once",),
        note="unknown symbol, bad key and rejected parameter are retried",
    ),
    Mutation(
        id="ccxt-retry-after-ignored",
        path=CCXT,
        old="        return max(delay, asked)",
        new="        return delay",
        tests=(f"{FAULTS}::test_retry_after_is_honoured",),
        note="a 429/418 retries after the backoff even when the venue asked for longer",
    ),
    Mutation(
        id="ccxt-long-ban-slept",
        path=CCXT,
        old="        if asked > self.max_retry_after_s:",
        new="        if asked > self.max_retry_after_s * 1e6:",
        tests=(f"{FAULTS}::test_a_long_ban_fails_at_once_naming_the_wait",),
        note="a two-hour Retry-After is slept through instead of failing at once",
    ),
    Mutation(
        id="ccxt-empty-page-is-end",
        path=CCXT,
        old="            if page or not expect_rows:",
        new="            if True:",
        tests=(
            f"{FAULTS}::test_empty_page_mid_range_is_retried",
            f"{FAULTS}::test_empty_funding_page_mid_range_is_retried",
        ),
        note="an empty page in the middle of a range ends the paging (rows lost)",
    ),
    Mutation(
        id="ccxt-open-bar-retried",
        path=CCXT,
        old="                expect_rows=since + step_ms <= now_ms,",
        new="                expect_rows=True,",
        tests=(f"{FAULTS}::test_no_retry_for_bars_not_yet_closed",),
        note="an empty page past the last closed bar is retried as if rows were lost",
    ),
    Mutation(
        id="ccxt-dedup-short-page-is-last",
        path=CCXT,
        old="            served_len[0] = _served_rows(client, len(raw))",
        new="            served_len[0] = len(raw)",
        tests=(f"{FAULTS}::test_funding_page_short_after_dedup_is_not_the_end",),
        note="funding paging stops on a page ccxt shortened by dropping an overlapping row",
    ),
    Mutation(
        id="ccxt-binance-funding-cap-missing",
        path=CCXT,
        old='    ("binanceusdm", "funding"): 1000,\n',
        new="",
        tests=(f"{FAULTS}::test_funding_page_served_short_by_the_venue_cap_is_not_the_end",),
        note="page_limit 2000: Binance's 1000-row page looks short and ends funding paging",
    ),
    Mutation(
        id="ccxt-zero-page-limit-accepted",
        path=CCXT,
        old="(value <= 0 if name in positive else value < 0)",
        new="(value < 0 if name in positive else value < 0)",
        tests=(f"{FAULTS}::test_bad_numeric_config_names_the_field",),
        note="page_limit 0 / order_book_limit 0 accepted by the client",
    ),
    Mutation(
        id="resource-page-limit-unchecked",
        path=RESOURCES,
        old="        default=1000,\n        gt=0,\n",
        new="        default=1000,\n",
        tests=(f"{RESOURCE_TESTS}::test_bad_numeric_config_fails_when_configured",),
        note="page_limit: 0 passes resource configuration and fails only at fetch time",
    ),
    Mutation(
        id="resource-launch-config-drops-keys",
        path=RESOURCES,
        old="    return value if value else (os.environ.get(name) or None)",
        new="    return value",
        tests=(f"{RESOURCE_TESTS}::test_launch_config_keeps_the_env_bound_keys",),
        note="a launch config for `exchange` silently replaces the dg.EnvVar keys with None",
    ),
    Mutation(
        id="ccxt-key-not-redacted",
        path=CCXT,
        old="_RedactingLogger(client.logger, [v for v in creds.values() if v])",
        new="_RedactingLogger(client.logger, [])",
        tests=(f"{RESOURCE_TESTS}::test_no_key_reaches_any_log_or_the_event_log",),
        note="ccxt's DEBUG log prints the X-MBX-APIKEY header in clear",
    ),
    Mutation(
        id="snapshots-appended-twice",
        path=SNAPSHOTS,
        old='f"where not exists (select 1 from {TABLE} t where {on})"',
        new='f"where {on!r} is not null"',
        tests=(f"{SNAPSHOT_TESTS}::test_live_snapshots_appended_once",),
        note="a re-run of the snapshot job stores the same books again (duplicate rows)",
    ),
    Mutation(
        id="ccxt-backwards-empty-page-is-end",
        path=CCXT,
        old="expect_rows=bool(records) and upper - _MAX_FUNDING_INTERVAL_MS > since,",
        new="expect_rows=False,",
        tests=(f"{VENUES}::test_empty_funding_page_mid_range_is_retried",),
        note="Bybit/OKX funding paging ends on a lost (empty) page after a full one",
    ),
    Mutation(
        id="book-depth-band-from-touch",
        path=BASE,
        old="lo, hi = mid * (1.0 - bps * 1e-4) * (1 - 1e-12), mid * (1.0 + bps * 1e-4)"
        " * (1 + 1e-12)",
        new="lo, hi = best_bid * (1.0 - bps * 1e-4), best_ask * (1.0 + bps * 1e-4)",
        tests=(f"{FIXTURE_TESTS}::test_binance_swap_order_book_depth",),
        note="depth bands measured from the best bid/ask instead of mid: a wide book looks deep"
        " (the recorded Binance book's 10 bp bid depth goes from 0 to 32M USDT); the fixture test"
        " used to take its expectation from reduce_order_book itself and could not see this",
    ),
]
