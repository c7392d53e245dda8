"""The backtest report: PNG plots and a Markdown page in a folder, and small embedded copies for
Dagster metadata.

Inputs are the walk-forward tables (`reports.equity_curves`, `reports.positions`,
`reports.backtest_metrics`) and, optionally, the meta-controller's expert weights (`ts`, then one
column per expert). Each policy's folds are chained into one out-of-sample curve: within a fold the
bar returns are the recorded equity's, each fold starts from the previous fold's end (folds restart
from the initial cash in the backtest, so their returns compound), ordered by fold.

`render_report` writes, under `out_dir` (`data/reports/<run>/` in the pipeline):
- `equity.png`: chained equity of every policy (the candidate and the baselines), start = 1;
- `drawdown.png`: drawdown of every chained curve;
- `monthly_returns.png`: the candidate's calendar-month returns, year x month heatmap (in %);
- `positions.png`: the candidate's signed spot notional per symbol as a fraction of equity, and
  its gross leverage with the env's leverage limit;
- `costs.png`: per policy, funding captured against fees, slippage and borrow paid (quote currency);
- `expert_weights.png` when expert weights are given: stacked weights over time;
- `report.md`: the metrics table (mean over folds), the decision text when given, and every image.
Each image is `size` inches at `dpi` (exactly `size * dpi` pixels: saved without tight bounding
boxes). `metadata_markdown` embeds the same figures as PNG data URIs at `thumb_dpi` (a few tens of
KB each; STACK_FACTS: the UI shows Markdown of 1,000 characters or more behind a link).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: Dagster runs and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

REPORT_METRICS = ("total_return", "annual_return", "sharpe", "sortino", "max_drawdown",
                  "funding", "fees", "slippage", "borrow", "cost_ratio", "fills", "liquidations",
                  "avg_leverage")  # fmt: skip
"""Columns of the report's metrics table."""


@dataclass(frozen=True)
class Report:
    """What `render_report` wrote: the Markdown file and each image by name."""

    markdown: Path
    images: dict[str, Path]
    thumbnails: dict[str, bytes]
    """The same figures as small PNGs, for `metadata_markdown`."""


def chained_equity(curves: pl.DataFrame) -> pl.DataFrame:
    """Per policy, the folds chained into one curve: `policy`, `ts`, `equity` (start 1).

    Raises:
        ValueError: a column the report needs is missing.
    """
    _require(curves, ("fold", "policy", "step", "ts", "equity"), "equity_curves")
    return (
        curves.sort("policy", "fold", "step")
        .with_columns(
            r=(pl.col("equity") / pl.col("equity").shift(1) - 1.0)
            .over("policy", "fold")
            .fill_null(0.0)
        )
        .with_columns(equity=(1.0 + pl.col("r")).cum_prod().over("policy"))
        .select("policy", "ts", "equity", "fold", "step")
    )


def monthly_returns(chained: pl.DataFrame, policy: str) -> pl.DataFrame:
    """Calendar-month returns of one chained curve: `year`, `month`, `ret` (the last equity of the
    month over the last of the month before, the first month from the curve's start)."""
    one = chained.filter(pl.col("policy") == policy).sort("ts")
    if one.height == 0:
        raise ValueError(f"monthly_returns: no curve for policy {policy!r}")
    ends = (
        one.group_by_dynamic("ts", every="1mo")
        .agg(pl.col("equity").last().alias("end"))
        .with_columns(start=pl.col("end").shift(1).fill_null(one.get_column("equity")[0]))
    )
    return ends.select(
        year=pl.col("ts").dt.year(), month=pl.col("ts").dt.month(),
        ret=pl.col("end") / pl.col("start") - 1.0,
    )  # fmt: skip


def build_figures(
    curves: pl.DataFrame,
    metrics: pl.DataFrame,
    *,
    candidate: str,
    positions: pl.DataFrame | None = None,
    expert_weights: pl.DataFrame | None = None,
    size: tuple[float, float] = (8.0, 4.0),
) -> dict[str, Figure]:
    """Every figure of the report by name (module docstring), not yet saved.

    Raises:
        ValueError: the candidate has no equity curve, or a table lacks a column it needs.
    """
    if curves.filter(pl.col("policy") == candidate).height == 0:
        raise ValueError(f"report: no equity curve for the candidate {candidate!r}")
    chained = chained_equity(curves)
    figs = {
        "equity": _equity_figure(chained, candidate, size),
        "drawdown": _drawdown_figure(chained, size),
        "monthly_returns": _monthly_figure(monthly_returns(chained, candidate), candidate, size),
        "positions": _positions_figure(curves, positions, candidate, size),
        "costs": _costs_figure(metrics, size),
    }
    if expert_weights is not None:
        figs["expert_weights"] = _weights_figure(expert_weights, size)
    return figs


def render_report(
    out_dir: str | Path,
    curves: pl.DataFrame,
    metrics: pl.DataFrame,
    *,
    candidate: str,
    positions: pl.DataFrame | None = None,
    expert_weights: pl.DataFrame | None = None,
    title: str = "Walk-forward backtest",
    decision_markdown: str | None = None,
    size: tuple[float, float] = (8.0, 4.0),
    dpi: int = 100,
    thumb_dpi: int = 40,
) -> Report:
    """Write the report's PNGs and `report.md` into `out_dir` (created) and return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = build_figures(curves, metrics, candidate=candidate, positions=positions,
                         expert_weights=expert_weights, size=size)  # fmt: skip
    images, thumbs = {}, {}
    for name, fig in figs.items():
        images[name] = out / f"{name}.png"
        fig.savefig(images[name], dpi=dpi, format="png")
        thumbs[name] = _png(fig, thumb_dpi)
        plt.close(fig)
    md = out / "report.md"
    md.write_text(_markdown(title, metrics, candidate, images, decision_markdown))
    return Report(md, images, thumbs)


def metadata_markdown(report: Report, names: Sequence[str] | None = None) -> str:
    """The report's thumbnails as Markdown images with PNG data URIs (for `MetadataValue.md`)."""
    chosen = list(names) if names is not None else list(report.thumbnails)
    parts = []
    for name in chosen:
        b64 = base64.b64encode(report.thumbnails[name]).decode("ascii")
        parts.append(f"![{name}](data:image/png;base64,{b64})")
    return "\n\n".join(parts)


# ---- figures ----


def _png(fig: Figure, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    return buf.getvalue()


def _figure(size: tuple[float, float], rows: int = 1) -> tuple[Figure, list]:
    fig, axes = plt.subplots(rows, 1, figsize=size, squeeze=False, sharex=rows > 1)
    return fig, [a[0] for a in axes]


def _equity_figure(chained: pl.DataFrame, candidate: str, size: tuple[float, float]) -> Figure:
    fig, (ax,) = _figure(size)
    for policy in chained.get_column("policy").unique(maintain_order=True):
        one = chained.filter(pl.col("policy") == policy)
        width = 2.0 if policy == candidate else 1.0
        ax.plot(one["ts"].to_numpy(), one["equity"].to_numpy(), label=policy, lw=width)
    ax.set_title("Out-of-sample equity (folds chained, start = 1)")
    ax.legend(fontsize="small")
    return fig


def _drawdown_figure(chained: pl.DataFrame, size: tuple[float, float]) -> Figure:
    fig, (ax,) = _figure(size)
    for policy in chained.get_column("policy").unique(maintain_order=True):
        one = chained.filter(pl.col("policy") == policy)
        e = one["equity"].to_numpy()
        ax.plot(one["ts"].to_numpy(), -(1.0 - e / np.maximum.accumulate(e)) * 100, label=policy)
    ax.set_title("Drawdown (%)")
    ax.legend(fontsize="small")
    return fig


def _monthly_figure(monthly: pl.DataFrame, candidate: str, size: tuple[float, float]) -> Figure:
    years = sorted(monthly.get_column("year").unique().to_list())
    grid = np.full((len(years), 12), np.nan)
    for y, m, r in monthly.iter_rows():
        grid[years.index(y), m - 1] = r * 100
    fig, (ax,) = _figure(size)
    lim = max(float(np.nanmax(np.abs(grid))), 1e-9)
    ax.imshow(grid, cmap="RdYlGn", vmin=-lim, vmax=lim, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize="x-small")
    ax.set_xticks(range(12), ["J", "F", "M", "A", "M", "J", "J", "A", "S", "O", "N", "D"])
    ax.set_yticks(range(len(years)), [str(y) for y in years])
    ax.set_title(f"{candidate}: monthly returns (%)")
    return fig


def _positions_figure(
    curves: pl.DataFrame,
    positions: pl.DataFrame | None,
    candidate: str,
    size: tuple[float, float],
) -> Figure:
    fig, (top, bottom) = _figure(size, rows=2)
    cand = curves.filter(pl.col("policy") == candidate).sort("fold", "step")
    if positions is not None:
        _require(positions, ("policy", "ts", "symbol", "spot_qty", "spot_mark"), "positions")
        pos = (
            positions.filter(pl.col("policy") == candidate)
            .join(cand.select("fold", "step", "equity"), on=["fold", "step"], how="left")
            .with_columns(weight=pl.col("spot_qty") * pl.col("spot_mark") / pl.col("equity"))
        )
        for sym in pos.get_column("symbol").unique(maintain_order=True):
            one = pos.filter(pl.col("symbol") == sym).sort("ts")
            top.plot(one["ts"].to_numpy(), one["weight"].to_numpy(), label=sym)
        top.legend(fontsize="x-small")
    top.set_title(f"{candidate}: spot notional / equity, and gross leverage")
    ts = cand["ts"].to_numpy()
    bottom.plot(ts, cand["leverage"].to_numpy(), label="leverage")
    bottom.plot(ts, cand["max_leverage"].to_numpy(), label="limit", ls="--")
    bottom.legend(fontsize="x-small")
    return fig


def _costs_figure(metrics: pl.DataFrame, size: tuple[float, float]) -> Figure:
    _require(metrics, ("aggregate", "policy", "funding", "fees", "slippage", "borrow"), "metrics")
    folds = metrics.filter(pl.col("aggregate") == "fold")
    sums = folds.group_by("policy", maintain_order=True).agg(
        pl.col("funding", "fees", "slippage", "borrow").sum()
    )
    fig, (ax,) = _figure(size)
    x = np.arange(sums.height)
    ax.bar(x - 0.2, sums["funding"].to_numpy(), 0.4, label="funding captured")
    bottom = np.zeros(sums.height)
    for col in ("fees", "slippage", "borrow"):
        v = sums[col].to_numpy()
        ax.bar(x + 0.2, v, 0.4, bottom=bottom, label=col)
        bottom = bottom + v
    ax.set_xticks(x, sums["policy"].to_list(), fontsize="small")
    ax.set_title("Funding captured vs costs, summed over folds (quote currency)")
    ax.legend(fontsize="x-small")
    return fig


def _weights_figure(weights: pl.DataFrame, size: tuple[float, float]) -> Figure:
    _require(weights, ("ts",), "expert_weights")
    experts = [c for c in weights.columns if c != "ts"]
    if not experts:
        raise ValueError("expert_weights: no expert columns beside ts")
    w = weights.sort("ts")
    fig, (ax,) = _figure(size)
    ax.stackplot(w["ts"].to_numpy(), *[w[c].to_numpy() for c in experts], labels=experts)
    ax.set_title("Meta-controller: expert weights")
    ax.legend(fontsize="x-small", loc="upper left")
    return fig


# ---- markdown ----


def _markdown(
    title: str,
    metrics: pl.DataFrame,
    candidate: str,
    images: dict[str, Path],
    decision: str | None,
) -> str:
    mean = metrics.filter(pl.col("aggregate") == "mean")
    if mean.height == 0:
        folds = metrics.filter(pl.col("aggregate") == "fold")
        mean = folds.group_by("policy", maintain_order=True).agg(pl.col(REPORT_METRICS).mean())
    lines = [f"# {title}", "", f"Candidate: `{candidate}`. Metrics: mean over the folds.", ""]
    lines.append("| policy | " + " | ".join(REPORT_METRICS) + " |")
    lines.append("|---" * (len(REPORT_METRICS) + 1) + "|")
    for row in mean.iter_rows(named=True):
        cells = [f"{row[c]:.4g}" if row[c] is not None else "" for c in REPORT_METRICS]
        lines.append(f"| {row['policy']} | " + " | ".join(cells) + " |")
    if decision:
        lines += ["", "## Promotion", "", decision]
    for name, path in images.items():
        lines += ["", f"## {name.replace('_', ' ').capitalize()}", "", f"![{name}]({path.name})"]
    return "\n".join(lines) + "\n"


def _require(frame: pl.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing} (has {frame.columns})")
