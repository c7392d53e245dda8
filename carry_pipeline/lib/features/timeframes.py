"""Durations and bar arithmetic shared by the feature and dataset functions.

Durations are written the way polars and ccxt write them (`"15m"`, `"1h"`, `"4h"`, `"1d"`, `"7d"`,
`"2w"`); a window given as a duration becomes a number of bars of the grid it is applied to.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import polars as pl

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


def parse_duration(text: str) -> timedelta:
    """Parse a duration such as `"15m"`, `"4h"`, `"1d"` or `"2w"`.

    Args:
        text: an integer followed by one unit among s, m, h, d, w.

    Returns:
        The duration as a `timedelta`.

    Raises:
        ValueError: the text is not of that form or is zero.
    """
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"duration {text!r} is not of the form <integer><unit> with unit one of s, m, h, d, w "
            "(e.g. '15m', '4h', '1d')"
        )
    value = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if value <= timedelta(0):
        raise ValueError(f"duration {text!r} must be positive")
    return value


def bars_in(window: str | timedelta, bar: timedelta, *, what: str = "window") -> int:
    """Number of bars of length `bar` in `window`, which must be a whole multiple of the bar.

    Args:
        window: a duration string or `timedelta`.
        bar: the bar length.
        what: the name of the setting, used in the error message.

    Raises:
        ValueError: `window` is not a positive whole multiple of `bar`.
    """
    span = parse_duration(window) if isinstance(window, str) else window
    count, rest = divmod(span, bar)
    if rest or count < 1:
        raise ValueError(f"{what} {window} is not a whole multiple of the {bar} bar")
    return int(count)


def infer_bar(ts: pl.Series, *, what: str = "frame") -> timedelta:
    """The bar length of a regular, sorted timestamp column (its smallest positive step).

    Args:
        ts: timestamps of one symbol, sorted ascending.
        what: the frame's name, used in the error message.

    Raises:
        ValueError: fewer than two distinct timestamps.
    """
    steps = ts.unique().sort().diff().drop_nulls()
    if steps.len() == 0:
        raise ValueError(f"{what}: need at least two distinct timestamps to infer the bar length")
    step = steps.min()
    assert isinstance(step, timedelta)
    return step


def per_year(bar: timedelta) -> float:
    """Number of bars in a 365-day year (crypto trades around the clock)."""
    return timedelta(days=365) / bar


def ts_bounds(ts: pl.Series, *, what: str) -> tuple[datetime, datetime]:
    """First and last timestamp of a datetime column.

    Raises:
        ValueError: the column is empty (or not of datetimes).
    """
    lo, hi = ts.min(), ts.max()
    if not isinstance(lo, datetime) or not isinstance(hi, datetime):
        raise ValueError(f"{what}: no timestamps")
    return lo, hi


def share(flags: pl.Series) -> float:
    """Fraction of true values in a boolean (or 0/1) column; 0 for an empty one."""
    value = flags.cast(pl.Float64).mean()
    return float(value) if isinstance(value, int | float) else 0.0
