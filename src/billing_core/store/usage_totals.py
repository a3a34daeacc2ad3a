"""Usage aggregated in the database: each window's quantity, in a few set-based passes
built from the aggregations registered in `store.aggregations`, over the day buckets kept
at ingestion (`store.usage_buckets`) for a window's whole UTC days and over the events for
the days it cuts."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.store import postgres
from billing_core.store.aggregations import AGGREGATIONS, Aggregation
from billing_core.store.models import UsageBucket, UsageBucketValue, UsageEvent
from billing_core.store.rows import insert_rows
from billing_core.store.usage_buckets import day_of


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
class _Source:
    """What a pass reads: the events, or the day buckets kept at ingestion."""

    table: sa.Table
    time: str  # the instant (events) or the UTC day (buckets) windows select on
    reads: Callable[[Aggregation], Any]  # an aggregation's SQL for it (column/query/postgres)
    value: Callable[[Any], Any]  # what a shared column is given: the event's value, a bucket


EVENTS_SOURCE = _Source(UsageEvent.__table__, "timestamp", lambda a: a, lambda c: c.value)
DAYS_SOURCE = _Source(UsageBucket.__table__, "day", lambda a: a.days, lambda c: c)
DAY = timedelta(days=1)
ZERO = timedelta(0)
# Whether `aggregate` reads whole days from the day buckets (the default) or every event.
READ_DAY_BUCKETS = True


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


@dataclass
class _Parts:
    """A window cut at UTC midnights: its first cut day, its whole days and its last cut
    day (or, within one day, the whole window as its first part)."""

    first: list[Window]
    days: list[Window]
    last: list[Window]


def aggregate(
    session: Session,
    windows: list[Window],
    aggregations: dict[str, str],
    every_customer: bool = False,
    buckets: bool | None = None,
) -> dict[int, Decimal]:
    """Each window's aggregated quantity, in one set-based pass per kind of pass.

    `aggregations` maps metric code to its aggregation. A window's whole UTC days are read
    from the day buckets, the days it cuts (a customer's local midnight, a period starting
    at noon) from the events (`buckets=False`, or READ_DAY_BUCKETS off: everything from the
    events); the parts are
    put together by each aggregation's `days.merge`, or, for `unique_count`, counted once
    over the union of their values. Windows without events get 0.

    Each source is read as before the buckets: one pass computes every aggregation with a
    shared column (`sum`, `count`, `max`) at once, then each one with a pass of its own
    (`latest`); on PostgreSQL each is a parallel scan. The passes join the windows, written
    into `usage_windows` under a batch id of their own, to what they read. The shared pass
    does not when `every_customer` says the windows are the whole store's (a close over
    every family) and they share at most `GROUPED_SPANS` distinct spans: then it is a plain
    `GROUP BY customer, metric` with one filtered aggregate per span, which costs about
    what a bare GROUP BY does (the join costs some 70 % more). On PostgreSQL that grouped
    pass takes the aggregations with a PostgreSQL variant too (`latest`, see
    `postgres.latest_column`).
    """
    out = {w.key: Decimal(0) for w in windows}
    if not windows:
        return out
    connection = session.connection()
    postgres.prepare_aggregation(connection)
    buckets = READ_DAY_BUCKETS if buckets is None else buckets
    entries = {w.key: AGGREGATIONS.get(aggregations.get(w.metric_code, "")) for w in windows}
    by_days = [w for w in windows if buckets and (a := entries[w.key]) and a.days is not None]
    parts = _cut(by_days)
    cut = {w.key for w in by_days}
    whole = [w for w in windows if w.key not in cut]
    distinct = {w.key for w in by_days if entries[w.key].distinct}

    def mergeable(part: list[Window]) -> list[Window]:
        return [x for x in part if x.key not in distinct]

    found = [
        _quantities(
            session,
            connection,
            EVENTS_SOURCE,
            mergeable(parts.first) + whole,
            aggregations,
            every_customer,
        ),
        _quantities(
            session, connection, DAYS_SOURCE, mergeable(parts.days), aggregations, every_customer
        ),
        _quantities(
            session, connection, EVENTS_SOURCE, mergeable(parts.last), aggregations, every_customer
        ),
    ]
    for w in windows:
        if w.key in distinct:
            continue
        pieces = [f[w.key] for f in found if w.key in f]
        if not pieces:
            continue
        entry = entries[w.key]
        out[w.key] = pieces[0] if w.key not in cut else entry.days.merge(pieces)
    if distinct:
        for key, count in _distinct_pass(session, connection, parts, distinct).items():
            out[key] = entries[key].combine(count)
    return out


def _cut(windows: list[Window]) -> _Parts:
    """Each window cut at the UTC midnights it crosses."""
    parts = _Parts([], [], [])
    for w in windows:
        if _midnight(w.start) and _midnight(w.end) and w.start < w.end:
            parts.days.append(w)  # whole UTC days (a UTC customer's periods): nothing cut
            continue
        start, end = w.start.astimezone(UTC), w.end.astimezone(UTC)
        first_day = day_of(start)
        whole_from = first_day if first_day == start else first_day + DAY
        whole_to = day_of(end)
        if whole_from >= whole_to:
            parts.first.append(w)
            continue
        who = (w.key, w.customer_id, w.metric_code)
        parts.days.append(Window(*who, whole_from, whole_to))
        if start < whole_from:
            parts.first.append(Window(*who, start, whole_from))
        if whole_to < end:
            parts.last.append(Window(*who, whole_to, end))
    return parts


def _midnight(instant: datetime) -> bool:
    """Whether an instant is a UTC midnight."""
    return (
        not (instant.hour or instant.minute or instant.second or instant.microsecond)
        and instant.utcoffset() == ZERO
    )


def _quantities(
    session: Session,
    connection: Any,
    source: _Source,
    windows: list[Window],
    aggregations: dict[str, str],
    every_customer: bool,
) -> dict[int, Decimal]:
    """The quantity of each window with something to read in `source`."""
    out: dict[int, Decimal] = {}
    if not windows:
        return out
    joined_windows = windows
    grouped = _grouped(connection, source, windows, aggregations) if every_customer else None
    if grouped is not None:
        _grouped_pass(connection, source, grouped, aggregations, out)
        kinds = grouped.kinds
        joined_windows = [x for x in windows if aggregations.get(x.metric_code) not in kinds]
    if joined_windows:
        _joined_passes(session, connection, source, joined_windows, aggregations, out)
    return out


def _shared(source: _Source) -> list[Aggregation]:
    """The aggregations with a column of `source`'s shared pass."""
    return [
        a
        for a in AGGREGATIONS.values()
        if source.reads(a) is not None and source.reads(a).column is not None
    ]


def _grouped(
    connection: Any, source: _Source, windows: list[Window], aggregations: dict[str, str]
) -> _Grouped | None:
    """The grouped pass's share: with the PostgreSQL variants where they fit, else
    without (SQLite: always without); None when the windows' spans are too many."""
    shared = _shared(source)
    readable = [a for a in AGGREGATIONS.values() if source.reads(a) is not None]
    variants = postgres.grouped_variants(connection, [source.reads(a) for a in readable])
    variants = [a for a in readable if source.reads(a) in variants]
    for taken in (variants, []) if variants else ([],):
        kinds = {a.name for a in (*shared, *taken)}
        grouped_windows = [x for x in windows if aggregations.get(x.metric_code) in kinds]
        spans = sorted({(x.start, x.end) for x in grouped_windows})
        if 0 < len(spans) <= GROUPED_SPANS and all(
            spans[0][0] >= source.reads(a).postgres.since for a in taken
        ):
            return _Grouped(shared, taken, grouped_windows, spans)
    return None


def _grouped_pass(
    connection: Any,
    source: _Source,
    plan: _Grouped,
    aggregations: dict[str, str],
    out: dict[int, Decimal],
) -> None:
    e = source.table.c
    at = e[source.time]
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
        readers[a.name] = (len(plan.shared) + j, source.reads(a).postgres.combine)
    events = [a.name for a in plan.shared].index(EVENTS)

    def grouped_query(wide: bool) -> Any:
        columns = []
        for start, end in spans:
            inside = (
                # the query's own range: nothing to filter
                None if len(spans) == 1 else sa.and_(at >= start, at < end)
            )
            columns += [source.reads(a).column(source.value(e), inside, wide) for a in plan.shared]
            for a, found in variants:
                column = source.reads(a).postgres.column(e, e.metric_code.in_(found))
                columns.append(column if inside is None else column.filter(inside))
        return (
            sa.select(e.customer_id, e.metric_code, *columns)
            .where(
                e.metric_code.in_(codes),
                at >= min(s for s, _ in spans),
                at < max(end for _, end in spans),
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
            if not values[events]:  # nothing in this span
                continue
            out[key] = combine(values[index])


def _join(source: _Source, w: Any, table: sa.Table | None = None) -> Any:
    """The windows joined to what they read: `source`'s rows (or `table`'s, which has the
    same customer, metric and time columns) of their customer and metric in their span."""
    table = source.table if table is None else table
    e = table.c
    return _windows.join(
        table,
        sa.and_(
            e.customer_id == w.customer_id,
            e.metric_code == w.metric_code,
            e[source.time] >= w.start_ts,
            e[source.time] < w.end_ts,
        ),
    )


def _joined_passes(
    session: Session,
    connection: Any,
    source: _Source,
    windows: list[Window],
    aggregations: dict[str, str],
    out: dict[int, Decimal],
) -> None:
    batch = _write_windows(session, connection, windows)
    w = _windows.c
    e = source.table.c
    joined = _join(source, w)
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
            e[source.time] >= lowest,
            e[source.time] < highest,
        ]

    shared = _shared(source)
    conditions = where({a.name for a in shared})
    if conditions:
        _shared_pass(connection, source, joined, conditions, shared, windows, aggregations, out)
    for aggregation in AGGREGATIONS.values():
        reads = source.reads(aggregation)
        if reads is None or reads.query is None:
            continue
        if conditions := where({aggregation.name}):
            query = reads.query(w, e, joined, conditions)
            for key, result in connection.execute(query).fetchall():
                out[key] = aggregation.combine(result)
    connection.execute(_windows.delete().where(w.batch == batch))


def _distinct_pass(
    session: Session, connection: Any, parts: _Parts, keys: set[int]
) -> dict[int, Any]:
    """Distinct values of windows cut at UTC midnights, each counted once over its cut
    days' events and its whole days' `usage_bucket_values`: window key -> count (windows
    without values are left out)."""
    w = _windows.c
    arms, batches = [], []
    for source, table, part in (
        (EVENTS_SOURCE, UsageEvent.__table__, parts.first),
        (DAYS_SOURCE, UsageBucketValue.__table__, parts.days),
        (EVENTS_SOURCE, UsageEvent.__table__, parts.last),
    ):
        windows = [x for x in part if x.key in keys]
        if not windows:
            continue
        batch = _write_windows(session, connection, windows)
        batches.append(batch)
        c = table.c
        at = c[source.time]
        arms.append(
            sa.select(w.key.label("key"), c.dimension.label("dimension"))
            .select_from(_join(source, w, table))
            .where(
                w.batch == batch,
                c.dimension.is_not(None),
                # The part's span: lets PostgreSQL's BRIN index skip other periods.
                at >= min(x.start for x in windows),
                at < max(x.end for x in windows),
            )
        )
    values = sa.union_all(*arms).subquery() if len(arms) > 1 else arms[0].subquery()
    query = sa.select(values.c.key, sa.func.count(sa.distinct(values.c.dimension))).group_by(
        values.c.key
    )
    counts = dict(connection.execute(query).fetchall())
    connection.execute(_windows.delete().where(w.batch.in_(batches)))
    return counts


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
    source: _Source,
    joined: Any,
    conditions: list[Any],
    shared: list[Aggregation],
    windows: list[Window],
    aggregations: dict[str, str],
    out: dict[int, Decimal],
) -> None:
    """Every aggregation with a shared column, over the windows joined to what they read."""
    w = _windows.c
    e = source.table.c
    readers = {a.name: (1 + i, a.combine) for i, a in enumerate(shared)}
    metric_of = {x.key: x.metric_code for x in windows}

    def joined_query(wide: bool) -> Any:
        return (
            sa.select(w.key, *[source.reads(a).column(source.value(e), None, wide) for a in shared])
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
