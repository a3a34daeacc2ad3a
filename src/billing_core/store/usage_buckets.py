"""Usage aggregated at ingestion: per customer, metric and UTC day, what every aggregation
needs (`usage_buckets`: the count, the sum, the maximum, the latest event with its
tie-break key; `usage_bucket_values`: the distinct values of `unique_count` metrics).

Ingestion adds the events it actually wrote, at the end of its transaction (an event id
already stored adds nothing): on PostgreSQL in SQL, from the rows its merges returned
(`store.postgres.MERGE_STAGING`, kept in a temporary table until `fill_sql` reads them);
on SQLite from the rows its inserts returned (`DayBuckets`). `rebuild` computes them again
from the events. Rating reads a window's whole days here and only the events of the days
it cuts (`store.usage_totals`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.store import postgres
from billing_core.store.models import UsageBucket, UsageBucketValue

# The low 32 bits of a value; the high ones are `value >> 32` (arithmetic, so that
# (high << 32) + low is the value, negative ones included).
LOW_BITS = 0xFFFFFFFF

# An event as the store returned it: customer, metric, instant (UTC), value (millionths),
# dimension (or None), event id.
Event = tuple[str, str, datetime, int, Any, str]


def day_of(instant: datetime) -> datetime:
    """The start (00:00 UTC) of the UTC day of an instant in UTC."""
    return instant.replace(hour=0, minute=0, second=0, microsecond=0)


class DayBuckets:
    """Day buckets of events being written, added to the store's at the end of the load.

    Written once per load, in key order: concurrent loads then lock the buckets they share
    in one order (no deadlock between them) and only for the end of their transactions.
    """

    def __init__(self) -> None:
        self.buckets: dict[tuple[str, str, datetime], list[Any]] = {}
        self.values: set[tuple[str, str, datetime, str]] = set()

    def add(self, events: Iterable[Event]) -> None:
        """Events just written (each once)."""
        buckets, values = self.buckets, self.values
        for customer, metric, at, value, dimension, event_id in events:
            day = day_of(at)
            key = (customer, metric, day)
            b = buckets.get(key)
            if b is None:
                buckets[key] = [1, value >> 32, value & LOW_BITS, value, at, event_id, value]
            else:
                b[0] += 1
                b[1] += value >> 32
                b[2] += value & LOW_BITS
                if value > b[3]:
                    b[3] = value
                if at > b[4] or (at == b[4] and event_id > b[5]):
                    b[4], b[5], b[6] = at, event_id, value
            if dimension is not None:
                values.add((customer, metric, day, dimension))

    def write(self, session: Session) -> None:
        """Add them to the store's buckets and values."""
        if self.buckets:
            rows = [
                {
                    "customer_id": c,
                    "metric_code": m,
                    "day": d,
                    "events": b[0],
                    "total_high": b[1],
                    "total_low": b[2],
                    "max_value": b[3],
                    "latest_at": b[4],
                    "latest_event_id": b[5],
                    "latest_value": b[6],
                }
                for (c, m, d), b in sorted(self.buckets.items())
            ]
            session.execute(_upsert(session), rows)
        if self.values:
            stmt = postgres.insert(session, UsageBucketValue.__table__).on_conflict_do_nothing()
            session.execute(
                stmt,
                [
                    {"customer_id": c, "metric_code": m, "day": d, "dimension": v}
                    for c, m, d, v in sorted(self.values)
                ],
            )
        self.buckets, self.values = {}, set()


def _upsert(session: Session) -> Any:
    """INSERT of day buckets that adds each one to the bucket already stored."""
    t = UsageBucket.__table__
    stmt = postgres.insert(session, t)
    x = stmt.excluded
    newer = sa.or_(
        x.latest_at > t.c.latest_at,
        sa.and_(x.latest_at == t.c.latest_at, x.latest_event_id > t.c.latest_event_id),
    )
    return stmt.on_conflict_do_update(
        index_elements=["customer_id", "metric_code", "day"],
        set_={
            "events": t.c.events + x.events,
            "total_high": t.c.total_high + x.total_high,
            "total_low": t.c.total_low + x.total_low,
            "max_value": sa.case((x.max_value > t.c.max_value, x.max_value), else_=t.c.max_value),
            "latest_at": sa.case((newer, x.latest_at), else_=t.c.latest_at),
            "latest_event_id": sa.case((newer, x.latest_event_id), else_=t.c.latest_event_id),
            "latest_value": sa.case((newer, x.latest_value), else_=t.c.latest_value),
        },
    )


def day_sql(dialect: str, column: str) -> str:
    """SQL for the UTC day (its 00:00, as the store keeps instants) of an instant column."""
    if dialect == "postgresql":
        return f"(date_trunc('day', {column} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
    # SQLite keeps instants as naive UTC text 'YYYY-MM-DD HH:MM:SS.ffffff'.
    return f"strftime('%Y-%m-%d 00:00:00.000000', {column})"


def fill_sql(dialect: str, source: str = "usage_events") -> tuple[str, str]:
    """The two INSERT … SELECT statements that fill the buckets and the values from the
    events of `source` (a table or a subquery with the events' columns, each event once,
    none of them in the buckets yet), adding to the buckets already stored.

    On PostgreSQL the high bits are summed as integers (below 2^31: values are below
    2^63), an integer sum cheaper than a bigint's; a day's latest event is found by a hash
    aggregate, the greatest
    [instant as digits, event id, value] (`store.postgres.latest_column`), instead of a
    sort of the events; SQLite ranks them."""
    day = day_sql(dialect, "timestamp")
    if dialect == "postgresql":
        latest = "latest[2], latest[3]::bigint"
        ranked = f"""
    SELECT customer_id, metric_code, day, count(*) AS events,
        sum((value >> 32)::integer) AS high, sum(value & {LOW_BITS}) AS low,
        max(value) AS top, max(timestamp) AS latest_at,
        max(ARRAY[to_char(timezone('UTC', timestamp), 'YYYYMMDDHH24MISSUS'), event_id,
            value::text]) AS latest
    FROM (SELECT *, {day} AS day FROM {source} AS events) AS events
    GROUP BY customer_id, metric_code, day"""
        greatest = "GREATEST"
    else:
        latest = "latest_event_id, latest_value"
        ranked = f"""
    SELECT customer_id, metric_code, day, count(*) AS events,
        sum(value >> 32) AS high, sum(value & {LOW_BITS}) AS low, max(value) AS top,
        max(timestamp) AS latest_at,
        max(event_id) FILTER (WHERE rank = 1) AS latest_event_id,
        max(value) FILTER (WHERE rank = 1) AS latest_value
    FROM (
        SELECT customer_id, metric_code, timestamp, value, event_id, {day} AS day,
            row_number() OVER (
                PARTITION BY customer_id, metric_code, {day}
                ORDER BY timestamp DESC, event_id DESC
            ) AS rank
        FROM {source} AS events
    ) AS events
    GROUP BY customer_id, metric_code, day"""
        greatest = "max"
    buckets = f"""
INSERT INTO usage_buckets AS b (customer_id, metric_code, day, events, total_high,
    total_low, max_value, latest_at, latest_event_id, latest_value)
SELECT customer_id, metric_code, day, events, high, low, top, latest_at, {latest}
FROM ({ranked}
) AS days
WHERE true
ORDER BY customer_id, metric_code, day
ON CONFLICT (customer_id, metric_code, day) DO UPDATE SET
    events = b.events + excluded.events,
    total_high = b.total_high + excluded.total_high,
    total_low = b.total_low + excluded.total_low,
    max_value = {greatest}(b.max_value, excluded.max_value),
    latest_at = CASE WHEN {_NEWER} THEN excluded.latest_at ELSE b.latest_at END,
    latest_event_id = CASE WHEN {_NEWER} THEN excluded.latest_event_id
        ELSE b.latest_event_id END,
    latest_value = CASE WHEN {_NEWER} THEN excluded.latest_value ELSE b.latest_value END
"""
    values = f"""
INSERT INTO usage_bucket_values (customer_id, metric_code, day, dimension)
SELECT DISTINCT customer_id, metric_code, {day}, dimension FROM {source} AS events
WHERE dimension IS NOT NULL
ORDER BY 1, 2, 3, 4
ON CONFLICT DO NOTHING
"""
    return buckets, values


_NEWER = (
    "(excluded.latest_at > b.latest_at OR (excluded.latest_at = b.latest_at "
    "AND excluded.latest_event_id > b.latest_event_id))"
)


def rebuild(connection: sa.Connection) -> None:
    """The buckets and values computed again from every stored event."""
    connection.execute(sa.text("DELETE FROM usage_bucket_values"))
    connection.execute(sa.text("DELETE FROM usage_buckets"))
    for statement in fill_sql(connection.dialect.name):
        connection.execute(sa.text(statement))
