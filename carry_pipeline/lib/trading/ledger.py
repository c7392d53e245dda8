"""The paper-trading ledger in DuckDB (schema `paper`): every bar in one transaction.

Tables (primary keys in brackets, so a bar booked twice is an error, never a duplicate):

| table | one row per | key after session_id |
|---|---|---|
| `paper.sessions` | session: seed, start bar, symbols, configs, their hash | - |
| `paper.decisions` | bar: obs digest, expert outputs, gating weights, actions | bar |
| `paper.orders` | leg with a planned order: planned qty, risk scale, qty sent | bar, symbol, leg |
| `paper.fills` | leg sent: filled/unfilled qty, vwap, mid, fee, costs, book | bar, symbol, leg |
| `paper.positions` | asset after the bar: spot, perp, collateral | bar, symbol |
| `paper.equity` | bar: equity, cash, cash flows, margin added, risk state + snapshot | bar |
| `paper.risk_events` | risk record (decision, denial, state change, feed fault) | bar, seq |
| `paper.alerts` | alert (risk state change, feed down, policy divergence) | bar, seq |
| `paper.policy_state` | bar of a stateful policy: its packed state after the bar | bar |

`bar` is the env bar index the decision was taken at; the equity row is marked one bar later.
`commit_bar` writes all tables of a bar or none (one `BEGIN ... COMMIT`); a process killed mid-bar
leaves the last committed bar intact, which `replay_bars` returns for the resume.

`paper.equity.margin_added` is the cash auto-add margin moved into isolated collateral at the bar
(a transfer: it explains a change of `cash` that no cash flow does). A ledger written before the
column existed gets it on open (`_MIGRATIONS`), null on the bars it already holds.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

_DDL = """
create table if not exists paper.sessions (
    session_id varchar primary key, created_at timestamptz, seed bigint, start_bar integer,
    symbols varchar, config varchar, config_hash varchar);
create table if not exists paper.decisions (
    session_id varchar, bar integer, ts timestamptz, obs_digest varchar, expert_outputs varchar,
    gating_weights varchar, policy_action varchar, action varchar, risk_state varchar,
    feed_fault varchar, primary key (session_id, bar));
create table if not exists paper.orders (
    session_id varchar, bar integer, symbol varchar, leg varchar, planned_qty double,
    scale double, sent_qty double, mid double, primary key (session_id, bar, symbol, leg));
create table if not exists paper.fills (
    session_id varchar, bar integer, symbol varchar, leg varchar, qty double, unfilled_qty double,
    vwap double, mid double, fee double, spread_cost double, impact_cost double,
    levels_used integer, book varchar, primary key (session_id, bar, symbol, leg));
create table if not exists paper.positions (
    session_id varchar, bar integer, symbol varchar, spot_qty double, perp_qty double,
    collateral double, primary key (session_id, bar, symbol));
create table if not exists paper.equity (
    session_id varchar, bar integer, ts timestamptz, equity double, cash double,
    funding_pnl double, price_pnl double, fees double, slippage double, borrow_cost double,
    liquidation_loss double, insurance_fund double, margin_ratio double, drawdown double,
    leverage double, risk_state varchar, risk_snapshot varchar, margin_added double,
    primary key (session_id, bar));
create table if not exists paper.risk_events (
    session_id varchar, bar integer, seq integer, kind varchar, rule varchar, symbol varchar,
    state varchar, reason varchar, figures varchar, primary key (session_id, bar, seq));
create table if not exists paper.alerts (
    session_id varchar, bar integer, seq integer, kind varchar, message varchar,
    figures varchar, primary key (session_id, bar, seq));
create table if not exists paper.policy_state (
    session_id varchar, bar integer, state blob, primary key (session_id, bar));
"""

_MIGRATIONS = """
alter table paper.equity add column if not exists margin_added double;
"""
"""Columns added since a table was first created, appended (so old and new tables share one
column order); every statement is idempotent and runs on each open."""

TABLES = (
    "sessions",
    "decisions",
    "orders",
    "fills",
    "positions",
    "equity",
    "risk_events",
    "alerts",
    "policy_state",
)


def to_json(value: Any) -> str:
    """JSON with NaN and infinities as null (JSON has neither)."""
    return json.dumps(_clean(value), sort_keys=True)


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if hasattr(v, "tolist"):
        return _clean(v.tolist())
    return v


@dataclass
class BarRecord:
    """Every row of one bar, as tuples in each table's column order (after session_id)."""

    bar: int
    decision: tuple[Any, ...]
    equity: tuple[Any, ...]
    orders: list[tuple[Any, ...]] = field(default_factory=list)
    fills: list[tuple[Any, ...]] = field(default_factory=list)
    positions: list[tuple[Any, ...]] = field(default_factory=list)
    risk_events: list[tuple[Any, ...]] = field(default_factory=list)
    alerts: list[tuple[Any, ...]] = field(default_factory=list)
    policy_state: bytes | None = None
    """The policy's packed state after the bar (`pack_state`); None for a stateless policy."""


@dataclass(frozen=True)
class ReplayBar:
    """A committed bar as the resume needs it: the final action, the fills and the risk snapshot.

    Attributes:
        bar: env bar index.
        action: final action per asset (NaN = hold).
        fills: `(symbol, leg, qty, fee, spread_cost, impact_cost)` in the order they were booked.
        planned: `(symbol, leg, planned_qty)` of the bar's orders.
        risk_snapshot: the risk manager's latches after the bar.
        feed_fault: why the feed failed at the bar ("" when it did not).
    """

    bar: int
    action: list[float]
    fills: list[tuple[str, str, float, float, float, float]]
    planned: list[tuple[str, str, float]]
    risk_snapshot: dict[str, Any]
    feed_fault: str = ""


class Ledger:
    """The `paper` schema of one DuckDB file, opened for writing.

    Args:
        path: the DuckDB file (created if absent).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.con = duckdb.connect(self.path)
        # Qualify every table with the file's catalog: a file named paper.duckdb has a catalog
        # "paper" that an unqualified `paper.x` would make ambiguous with the schema.
        catalog = self.con.execute("select current_database()").fetchone()[0]  # type: ignore[index]
        quoted = '"' + str(catalog).replace('"', '""') + '"'
        self._prefix = f"{quoted}.paper."
        self.con.execute(f"create schema if not exists {quoted}.paper")
        self._sql(_DDL)
        self._sql(_MIGRATIONS)

    def _sql(self, sql: str, params: Any = None) -> duckdb.DuckDBPyConnection:
        # Run `sql` with `paper.` qualified by the catalog.
        return self.con.execute(sql.replace("paper.", self._prefix), params)

    def close(self) -> None:
        """Close the connection."""
        self.con.close()

    def open_session(
        self,
        session_id: str,
        seed: int,
        start_bar: int,
        symbols: tuple[str, ...],
        config: dict[str, Any],
        created_at: Any,
    ) -> None:
        """Register a session, or check that a resumed one has the same seed, start and config.

        Raises:
            ValueError: the session exists with another configuration (a resume must not change
                what it replays).
        """
        digest = hashlib.sha256(to_json([seed, start_bar, symbols, config]).encode()).hexdigest()
        row = self._sql(
            "select config_hash from paper.sessions where session_id = ?", [session_id]
        ).fetchone()
        if row is None:
            self._sql(
                "insert into paper.sessions values (?, ?, ?, ?, ?, ?, ?)",
                [
                    session_id,
                    created_at,
                    seed,
                    start_bar,
                    to_json(symbols),
                    to_json(config),
                    digest,
                ],
            )
        elif row[0] != digest:
            raise ValueError(
                f"paper session {session_id!r} exists in {self.path} with config hash "
                f"{row[0][:12]}; this run has {digest[:12]} (seed, start bar, symbols or config "
                "changed). Use a new session_id."
            )

    def session_start(self, session_id: str) -> int | None:
        """The start bar of a registered session, or None when it is new."""
        row = self._sql(
            "select start_bar from paper.sessions where session_id = ?", [session_id]
        ).fetchone()
        return None if row is None else int(row[0])

    def commit_bar(self, session_id: str, rec: BarRecord) -> None:
        """Write every table of one bar in a single transaction (all or nothing)."""
        con = self.con
        con.execute("begin transaction")
        run = self._sql
        try:
            run(
                "insert into paper.decisions values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [session_id, rec.bar, *rec.decision],
            )
            run(
                "insert into paper.equity values (" + ", ".join(["?"] * 18) + ")",
                [session_id, rec.bar, *rec.equity],
            )
            for table, rows, width in (
                ("orders", rec.orders, 8),
                ("fills", rec.fills, 13),
                ("positions", rec.positions, 6),
                ("risk_events", rec.risk_events, 9),
                ("alerts", rec.alerts, 6),
            ):
                if rows:
                    con.executemany(
                        f"insert into {self._prefix}{table} values ({', '.join(['?'] * width)})",
                        [[session_id, rec.bar, *r] for r in rows],
                    )
            if rec.policy_state is not None:
                run(
                    "insert into paper.policy_state values (?, ?, ?)",
                    [session_id, rec.bar, rec.policy_state],
                )
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise

    def read(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """The rows of a query on the `paper` tables (`paper.` is qualified with the catalog)."""
        return self._sql(sql, params).fetchall()

    def add_alert(
        self, session_id: str, bar: int, kind: str, message: str, figures: dict[str, Any]
    ) -> bool:
        """Append an alert found after the fact (the paper-vs-backtest divergence) at `bar`, with
        the next free `seq` of that bar; an alert of the same kind at the same bar is never
        written twice. Returns whether a row was written."""
        con = self.con
        con.execute("begin transaction")
        try:
            exists = self._sql(
                "select count(*) from paper.alerts where session_id = ? and bar = ? and kind = ?",
                [session_id, bar, kind],
            ).fetchone()
            if exists is not None and exists[0]:
                con.execute("rollback")
                return False
            seq = self._sql(
                "select coalesce(max(seq) + 1, 0) from paper.alerts where session_id = ? "
                "and bar = ?",
                [session_id, bar],
            ).fetchone()
            self._sql(
                "insert into paper.alerts values (?, ?, ?, ?, ?, ?)",
                [session_id, bar, seq[0] if seq else 0, kind, message, to_json(figures)],
            )
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        return True

    def policy_state(self, session_id: str, bar: int) -> bytes | None:
        """The packed policy state committed with `bar`, or None (a stateless policy, or a
        ledger written before states were stored)."""
        row = self._sql(
            "select state from paper.policy_state where session_id = ? and bar = ?",
            [session_id, bar],
        ).fetchone()
        return None if row is None else bytes(row[0])

    def committed_bars(self, session_id: str) -> list[int]:
        """Bars committed for the session, ascending."""
        rows = self._sql(
            "select bar from paper.equity where session_id = ? order by bar", [session_id]
        ).fetchall()
        return [r[0] for r in rows]

    def replay_bars(self, session_id: str) -> list[ReplayBar]:
        """Every committed bar with its action, fills, planned orders and risk snapshot.

        Raises:
            ValueError: the committed bars are not contiguous (the ledger was edited by hand).
        """
        heads = self._sql(
            "select d.bar, d.action, e.risk_snapshot, d.feed_fault from paper.decisions d "
            "join paper.equity e using (session_id, bar) where session_id = ? order by bar",
            [session_id],
        ).fetchall()
        bars = [h[0] for h in heads]
        if bars and bars != list(range(bars[0], bars[0] + len(bars))):
            raise ValueError(f"paper session {session_id!r}: committed bars are not contiguous")
        fills: dict[int, list[tuple[str, str, float, float, float, float]]] = {b: [] for b in bars}
        for r in self._sql(
            "select bar, symbol, leg, qty, fee, spread_cost, impact_cost from paper.fills "
            "where session_id = ? order by bar, symbol, leg desc",
            [session_id],
        ).fetchall():
            fills[r[0]].append(tuple(r[1:]))  # type: ignore[arg-type]
        planned: dict[int, list[tuple[str, str, float]]] = {b: [] for b in bars}
        for r in self._sql(
            "select bar, symbol, leg, planned_qty from paper.orders where session_id = ?",
            [session_id],
        ).fetchall():
            planned[r[0]].append(tuple(r[1:]))  # type: ignore[arg-type]
        return [
            ReplayBar(
                b,
                [math.nan if x is None else x for x in json.loads(a)],
                fills[b],
                planned[b],
                json.loads(s),
                fault or "",
            )
            for b, a, s, fault in heads
        ]
