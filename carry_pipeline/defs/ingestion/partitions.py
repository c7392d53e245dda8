"""Partitions of the raw assets: one UTC day x one asset (base currency).

The asset dimension holds base currencies (`BTC`, `ETH`): a key maps to the spot symbol `BTC/USDT`
and the perp symbol `BTC/USDT:USDT`, so one key partitions every raw table. Both dimensions are read
once, when the code location loads:

- `CARRY_ASSETS`: comma-separated bases (default `BTC,ETH`);
- `CARRY_START_DATE`: first daily partition (default `2024-01-01`); the last is yesterday (UTC).

Multi-partition keys look like `2024-01-05|BTC` (dimensions in alphabetical order: asset, date).
"""

from __future__ import annotations

import os
import re

import dagster as dg

DEFAULT_ASSETS = ("BTC", "ETH")
DEFAULT_START_DATE = "2024-01-01"
_BASE_RE = re.compile(r"^[A-Z0-9]{1,20}$")


def configured_assets(raw: str | None = None) -> list[str]:
    """Base currencies from `CARRY_ASSETS` (or `raw`), upper-cased and checked.

    Raises:
        ValueError: an empty list or a base that is not 1-20 letters/digits.
    """
    text = os.environ.get("CARRY_ASSETS", ",".join(DEFAULT_ASSETS)) if raw is None else raw
    bases = [b.strip().upper() for b in text.split(",") if b.strip()]
    bad = [b for b in bases if not _BASE_RE.match(b)]
    if not bases or bad:
        raise ValueError(
            f"CARRY_ASSETS={text!r} must list base currencies like 'BTC,ETH'"
            + (f"; invalid: {bad}" if bad else "")
        )
    return list(dict.fromkeys(bases))


asset_partitions = dg.StaticPartitionsDefinition(configured_assets())
date_partitions = dg.DailyPartitionsDefinition(
    start_date=os.environ.get("CARRY_START_DATE", DEFAULT_START_DATE), timezone="UTC"
)
ingest_partitions = dg.MultiPartitionsDefinition(
    {"date": date_partitions, "asset": asset_partitions}
)
