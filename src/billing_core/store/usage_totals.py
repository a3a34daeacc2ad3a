"""Usage aggregated in the database: each window's quantity, in a few set-based passes
built from the aggregations registered in `store.aggregations`."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.store import postgres
from billing_core.store.aggregations import AGGREGATIONS, Aggregation
from billing_core.store.models import UsageEvent
from billing_core.store.rows import insert_rows


@dataclass(frozen=True)
class Window:
    """Usage of one customer and metric between two instants, identified by `key`."""

    key: int
    customer_id: str
    metric_code: str
    start: datetime
    end: datetime


_windows = sa.Table(
    "usage_windows",
    sa.MetaData(),
    sa.Column("batch", sa.String(36), primary_key=True),
    sa.Column("key", sa.Integer, primary_key=True),
    sa.Column("customer_id", sa.String(128), nullable=False),
    sa.Column("metric_code", sa.String(128), nullable=False),
    sa.Column("start_ts", UsageEvent.__table__.c.timestamp.type, nullable=False),
    sa.Column("end_ts", UsageEvent.__table__.c.timestamp.type, nullable=False),
)
# Above this many distinct spans the shared pass joins its windows instead.
GROUPED_SPANS = 8
# The shared pass's column that counts a window's events: none means no events.
EVENTS = "count"


@dataclass(frozen=True)
class _Grouped:
    """What the grouped pass takes: its aggregations (shared and PostgreSQL variants),
    windows and spans."""

    shared: list[Aggregation]
    variants: list[Aggregation]
    windows: list[Window]
    spans: list[tuple[datetime, datetime]]

    @property
    def kinds(self) -> set[str]:
        return {a.name for a in (*self.shared, *self.variants)}


def aggregate(
    session: Session,
    windows: list[Window],
    aggregations: dict[str, str],
    every_customer: bool = False,
) -> dict[int, Decimal]:
    """Each window's aggregated quantity, in one set-based pass per kind of pass.

    `aggregations` maps metric code to its aggregation. One pass computes every
    aggregation with a shared column (`sum`, `count`, `max`) at once, then each one with a
    pass of its own (`unique_count`, `latest`); on PostgreSQL each is a parallel scan of the
    periods' events. Windows without events get 0.

    The passes join the events to the windows, which go into `usage_windows` under a batch
    id of their own. The shared pass does not when `every_customer` says the windows are
    the whole store's (a close over every family) and they share at most `GROUPED_SPANS`
    distinct spans: then it is a plain `GROUP BY customer, metric` over the events with
    one filtered aggregate per span, which costs about what a bare GROUP BY does (the join
    costs some 70 % more). On PostgreSQL that grouped pass takes the aggregations with a
    PostgreSQL variant too (`latest`, see `postgres.latest_column`): one scan of the
    events fewer.
    """
    out = {w.key: Decimal(0) for w in windows}
    if not windows:
        return out
    connection = session.connection()
    postgres.prepare_aggregation(connection)
    joined_windows = windows
    grouped = _grouped(connection, windows, aggregations) if every_customer else None
    if grouped is not None:
        _grouped_pass(connection, grouped, aggregations, out)
        kinds = grouped.kinds
        joined_windows = [x for x in windows if aggregations.get(x.metric_code) not in kinds]
    if joined_windows:
        _joined_passes(session, connection, joined_windows, aggregations, out)
    return out


def _grouped(
    connection: Any, windows: list[Window], aggregations: dict[str, str]
) -> _Grouped | None:
    """The grouped pass's share: with the PostgreSQL variants where they fit, else
    without (SQLite: always without); None when the windows' spans are too many."""
    shared = [a for a in AGGREGATIONS.values() if a.column is not None]
    variants = postgres.grouped_variants(connection, list(AGGREGATIONS.values()))
    for taken in (variants, []) if variants else ([],):
        kinds = {a.name for a in (*shared, *taken)}
        grouped_windows = [x for x in windows if aggregations.get(x.metric_code) in kinds]
        spans = sorted({(x.start, x.end) for x in grouped_windows})
        if 0 < len(spans) <= GROUPED_SPANS and all(spans[0][0] >= a.postgres.since for a in taken):
            return _Grouped(shared, taken, grouped_windows, spans)
    return None


def _grouped_pass(
    connection: Any, plan: _Grouped, aggregations: dict[str, str], out: dict[int, Decimal]
) -> None:
    e = UsageEvent.__table__.c
    spans = plan.spans
    codes = sorted({x.metric_code for x in plan.windows})
    variants = [
        (a, found)
        for a in plan.variants
        if (found := [c for c in codes if aggregations.get(c) == a.name])
    ]
    width = len(plan.shared) + len(variants)
    readers = {a.name: (i, a.combine) for i, a in enumerate(plan.shared)}
    for j, (a, _) in enumerate(variants):
        readers[a.name] = (len(plan.shared) + j, a.postgres.combine)
    events = [a.name for a in plan.shared].index(EVENTS)

    def grouped_query(wide: bool) -> Any:
        columns = []
        for start, end in spans:
            inside = (
                # the query's own range: nothing to filter
                None if len(spans) == 1 else sa.and_(e.timestamp >= start, e.timestamp < end)
            )
            columns += [a.column(e.value, inside, wide) for a in plan.shared]
            for a, found in variants:
                column = a.postgres.column(e, e.metric_code.in_(found))
                columns.append(column if inside is None else column.filter(inside))
        return (
            sa.select(e.customer_id, e.metric_code, *columns)
            .where(
                e.metric_code.in_(codes),
                e.timestamp >= min(s for s, _ in spans),
                e.timestamp < max(end for _, end in spans),
            )
            .group_by(e.customer_id, e.metric_code)
        )

    span_index = {span: i for i, span in enumerate(spans)}
    wanted: dict[tuple[str, str], list[tuple[int, int, Any]]] = defaultdict(list)
    for x in plan.windows:
        reader = readers[aggregations[x.metric_code]]
        wanted[(x.customer_id, x.metric_code)].append((span_index[(x.start, x.end)], x.key, reader))
    for row in _summed(connection, grouped_query):
        for i, key, (index, combine) in wanted.get((row[0], row[1]), ()):
            values = row[2 + width * i : 2 + width * (i + 1)]
            if not values[events]:  # no events in this span
                continue
            out[key] = combine(values[index])


def _joined_passes(
    session: Session,
    connection: Any,
    windows: list[Window],
    aggregations: dict[str, str],
    out: dict[int, Decimal],
) -> None:
    batch = _write_windows(session, connection, windows)
    w = _windows.c
    e = UsageEvent.__table__.c
    joined = _windows.join(
        UsageEvent.__table__,
        sa.and_(
            e.customer_id == w.customer_id,
            e.metric_code == w.metric_code,
            e.timestamp >= w.start_ts,
            e.timestamp < w.end_ts,
        ),
    )
    present = {x.metric_code for x in windows}
    lowest, highest = min(x.start for x in windows), max(x.end for x in windows)

    def where(kinds: set[str]) -> list[Any] | None:
        codes = sorted(c for c in present if aggregations.get(c) in kinds)
        if not codes:
            return None
        return [
            w.batch == batch,
            w.metric_code.in_(codes),
            e.metric_code.in_(codes),
            # The whole pass's span: lets PostgreSQL's BRIN index skip other periods.
            e.timestamp >= lowest,
            e.timestamp < highest,
        ]

    shared = [a for a in AGGREGATIONS.values() if a.column is not None]
    conditions = where({a.name for a in shared})
    if conditions:
        _shared_pass(connection, joined, conditions, shared, windows, aggregations, out)
    for aggregation in AGGREGATIONS.values():
        if aggregation.query is not None and (conditions := where({aggregation.name})):
            query = aggregation.query(w, e, joined, conditions)
            for key, result in connection.execute(query).fetchall():
                out[key] = aggregation.combine(result)
    connection.execute(_windows.delete().where(w.batch == batch))


def _write_windows(session: Session, connection: Any, windows: list[Window]) -> str:
    """The windows into `usage_windows` under a batch id of their own; the id."""
    batch = uuid.uuid4().hex
    insert_rows(
        session,
        _windows,
        [
            {
                "batch": batch,
                "key": w.key,
                "customer_id": w.customer_id,
                "metric_code": w.metric_code,
                "start_ts": w.start,
                "end_ts": w.end,
            }
            for w in windows
        ],
    )
    postgres.analyze_windows(connection)
    return batch


def _shared_pass(
    connection: Any,
    joined: Any,
    conditions: list[Any],
    shared: list[Aggregation],
    windows: list[Window],
    aggregations: dict[str, str],
    out: dict[int, Decimal],
) -> None:
    """Every aggregation with a shared column, over the windows joined to their events."""
    w = _windows.c
    e = UsageEvent.__table__.c
    readers = {a.name: (1 + i, a.combine) for i, a in enumerate(shared)}
    metric_of = {x.key: x.metric_code for x in windows}

    def joined_query(wide: bool) -> Any:
        return (
            sa.select(w.key, *[a.column(e.value, None, wide) for a in shared])
            .select_from(joined)
            .where(*conditions)
            .group_by(w.key)
        )

    for row in _summed(connection, joined_query):
        key = row[0]
        index, combine = readers[aggregations[metric_of[key]]]
        out[key] = combine(row[index])


def _summed(connection: Any, query: Any) -> list[Any]:
    """The rows of `query(wide)`: with the store's own integer sum, or, on SQLite when that
    overflows, with the wide one (a failed SELECT leaves SQLite's transaction as it was)."""
    try:
        return connection.execute(query(False)).fetchall()
    except sa.exc.OperationalError as error:
        if not postgres.sum_overflowed(connection, error):
            raise
    return connection.execute(query(True)).fetchall()
