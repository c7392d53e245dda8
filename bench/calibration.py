"""Simulated vs real market statistics: funding prints and the 8h perp-spot basis.

Run: `.venv/bin/python bench/calibration.py [--seed N]`. The simulated side is `carry_env.synthetic`
(8h bars, 2018-2031); the real side reads `../shared/data/real` (or `$CARRY_REAL_DATA`) when present
and prints only the simulated columns otherwise. The real files are read in place, never copied.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import polars as pl

from carry_env.synthetic import simulate_market

REAL = Path(
    os.environ.get("CARRY_REAL_DATA", Path(__file__).resolve().parents[2] / "shared/data/real")
)
ROWS = [
    ("funding n", "n", "{:.0f}"),
    ("funding mean (bp/8h)", "mean", "{:.3f}"),
    ("funding median (bp)", "median", "{:.3f}"),
    ("share at 1 bp floor", "floor", "{:.1%}"),
    ("share < 0", "neg", "{:.1%}"),
    ("min (bp)", "min", "{:.2f}"),
    ("max (bp)", "max", "{:.2f}"),
    ("longest negative run", "run", "{:.0f}"),
    ("ann. carry", "ann", "{:.2%}"),
    ("basis mean (bp)", "b_mean", "{:.2f}"),
    ("basis std (bp)", "b_std", "{:.2f}"),
    ("basis p1 / p5", "b_lo", "{}"),
    ("basis median", "b_med", "{:.2f}"),
    ("basis p95 / p99", "b_hi", "{}"),
    ("basis share < 0", "b_neg", "{:.1%}"),
    ("basis -6..-2 / 0..2 / 4..8", "b_modes", "{}"),
    ("corr(basis, funding)", "corr", "{:.2f}"),
]


def funding_stats(rate: np.ndarray) -> dict[str, object]:
    """Statistics of a series of per-8h funding prints (fractions)."""
    bp = rate * 1e4
    neg = np.concatenate([[0], (bp < 0).astype(int), [0]])
    runs = np.diff(np.flatnonzero(np.diff(neg)))[::2]
    return {
        "n": bp.size,
        "mean": bp.mean(),
        "median": float(np.median(bp)),
        "floor": float(np.mean(np.round(rate, 8) == 0.0001)),
        "neg": float(np.mean(bp < 0)),
        "min": bp.min(),
        "max": bp.max(),
        "run": int(runs.max()) if runs.size else 0,
        "ann": rate.mean() * 3 * 365,
    }


def basis_stats(basis_bp: np.ndarray, rate: np.ndarray | None) -> dict[str, object]:
    """Statistics of the basis (bp) and its correlation with the funding print at the same close."""
    q = np.percentile(basis_bp, [1, 5, 50, 95, 99])
    modes = [((basis_bp > lo) & (basis_bp < hi)).mean() for lo, hi in ((-6, -2), (0, 2), (4, 8))]
    out: dict[str, object] = {
        "b_mean": basis_bp.mean(),
        "b_std": basis_bp.std(),
        "b_lo": f"{q[0]:.1f} / {q[1]:.1f}",
        "b_med": q[2],
        "b_hi": f"{q[3]:.1f} / {q[4]:.1f}",
        "b_neg": float((basis_bp < 0).mean()),
        "b_modes": " / ".join(f"{m:.2f}" for m in modes),
    }
    if rate is not None:
        ok = ~np.isnan(rate)
        out["corr"] = float(np.corrcoef(basis_bp[ok], rate[ok])[0, 1])
    return out


def simulated(seed: int) -> dict[str, dict[str, object]]:
    """Statistics of the simulator's BTC and ETH, 8h bars over its whole epoch."""
    frame = simulate_market(
        ("BTC/USDT:USDT", "ETH/USDT:USDT"), "2018-01-01", "2031-12-31", "8h", seed
    )
    cols: dict[str, dict[str, object]] = {}
    for sym in ("BTC/USDT:USDT", "ETH/USDT:USDT"):
        f = frame.filter(pl.col("symbol") == sym)
        rate = f["funding_rate"].to_numpy()
        basis = ((f["perp_price"] / f["spot_price"] - 1.0) * 1e4).to_numpy()
        cols[f"sim {sym[:3]} s{seed}"] = funding_stats(rate) | basis_stats(basis, rate)
    return cols


def real() -> dict[str, dict[str, object]]:
    """Statistics of the real files (Binance funding 2020-23; aligned closes + funding 2023-25)."""
    cols: dict[str, dict[str, object]] = {}
    sv = REAL / "supervik_funding"
    gb = REAL / "gobbles404_perp_arb"
    for base in ("BTC", "ETH"):
        path = sv / f"{base}-USDT_binance_2020-01-01_2024-01-01_funding_history.csv"
        if path.exists():
            rate = pl.read_csv(path)["Funding Rate"].to_numpy()
            cols[f"real {base} 20-23"] = funding_stats(rate)
        path = gb / f"{base}USDT_8h.csv"
        if path.exists():
            d = pl.read_csv(path, infer_schema_length=10_000).drop_nulls(
                ["spot_close", "perp_close"]
            )
            basis = ((d["perp_close"] / d["spot_close"] - 1.0) * 1e4).to_numpy()
            rate = d["funding_rate"].cast(pl.Float64).to_numpy()
            f = funding_stats(rate[~np.isnan(rate)])
            cols[f"real {base} 23-25"] = f | basis_stats(basis, rate)
    return cols


def main() -> None:
    """Print the side-by-side table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cols = simulated(args.seed) | real()
    if not any(k.startswith("real") for k in cols):
        print(f"(real data not found under {REAL}; printing the simulated side only)")
    names = list(cols)
    table = [
        [label] + ["-" if cols[n].get(key) is None else fmt.format(cols[n][key]) for n in names]
        for label, key, fmt in ROWS
    ]
    width = max(len(c) for row in [["", *names], *table] for c in row[1:])
    print(f"{'statistic':28s}" + "".join(f"{n:>{width + 2}s}" for n in names))
    for row in table:
        print(f"{row[0]:28s}" + "".join(f"{c:>{width + 2}s}" for c in row[1:]))


if __name__ == "__main__":
    main()
