"""Usage aggregated at ingestion: per customer, metric and UTC day, what every aggregation
needs (`usage_buckets`: the count, the sum, the maximum, and for metrics whose aggregation
reads it (`latest`) the latest event with its tie-break key, NULL for the others;
`usage_bucket_values`: the distinct values of `unique_count` metrics). What a metric's
buckets keep follows from its aggregation, which cannot change once it has usage
(`inputs.catalog_check`); rating reads the latest event of `latest` metrics only.

Ingestion adds the events it actually wrote, at the end of its transaction (an event id
already stored adds nothing): on PostgreSQL in SQL, from the rows its merges returned
(`store.postgres.MERGE_STAGING`, kept in a temporary table until `fill_sql` reads them);
on SQLite from the rows its inserts returned (`DayBuckets`). `rebuild` computes them again
from the events. Rating reads a window's whole days here and only the events of the days
it cuts (`store.usage_totals`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.store import postgres
from billing_core.store.aggregations import AGGREGATIONS
from billing_core.store.models import Metric, UsageBucket, UsageBucketValue

# The low 32 bits of a value; the high ones are `value >> 32` (arithmetic, so that
# (high << 32) + low is the value, negative ones included).
LOW_BITS = 0xFFFFFFFF

# An event as the store returned it: customer, metric, instant (UTC), value (millionths),
# dimension (or None), event id.
Event = tuple[str, str, datetime, int, Any, str]


def latest_kinds() -> list[str]:
    """The aggregations that read a day's latest event (`Days.latest`): only their
    metrics' buckets keep it."""
    return sorted(a.name for a in AGGREGATIONS.values() if a.days is not None and a.days.latest)


def distinct_kinds() -> list[str]:
    """The aggregations that read a day's distinct values: only their metrics' days keep
    them in `usage_bucket_values`."""
    return sorted(a.name for a in AGGREGATIONS.values() if a.days is not None and a.distinct)


def metrics_of(kinds: list[str]) -> str:
    """SQL: the codes of the metrics whose aggregation is one of `kinds`."""
    names = ", ".join("'" + k.replace("'", "''") + "'" for k in kinds) or "NULL"
    return f"SELECT code FROM metrics WHERE aggregation IN ({names})"


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
        """Add them to the store's buckets and values: the latest event only for metrics
        whose aggregation reads it, values only for those that count them."""
        if self.buckets:
            latest = metric_codes(session, latest_kinds())
            rows = [
                {
                    "customer_id": c,
                    "metric_code": m,
                    "day": d,
                    "events": b[0],
                    "total_high": b[1],
                    "total_low": b[2],
                    "max_value": b[3],
                    **(
                        {"latest_at": b[4], "latest_event_id": b[5], "latest_value": b[6]}
                        if m in latest
                        else _NO_LATEST
                    ),
                }
                for (c, m, d), b in sorted(self.buckets.items())
            ]
            session.execute(_upsert(session), rows)
        distinct = metric_codes(session, distinct_kinds()) if self.values else set()
        values = [
            {"customer_id": c, "metric_code": m, "day": d, "dimension": v}
            for c, m, d, v in sorted(self.values)
            if m in distinct
        ]
        if values:
            stmt = postgres.insert(session, UsageBucketValue.__table__).on_conflict_do_nothing()
            session.execute(stmt, values)
        self.buckets, self.values = {}, set()


_NO_LATEST = {"latest_at": None, "latest_event_id": None, "latest_value": None}


# PostgreSQL's loads: the day buckets and values the loading process summed (`DayParts`),
# copied into temporary tables for the load's one statement of each (`fill_sql`).
PARTS_TABLE = "usage_day_parts"
PART_VALUES_TABLE = "usage_day_values"
_TEMPORARY = (
    f"CREATE TEMP TABLE IF NOT EXISTS {PARTS_TABLE} (customer_id text, metric_code text, "
    "day bigint, events bigint, high bigint, low bigint, top bigint) ON COMMIT DELETE ROWS",
    f"CREATE TEMP TABLE IF NOT EXISTS {PART_VALUES_TABLE} (customer_id text, "
    "metric_code text, day bigint, dimension text) ON COMMIT DELETE ROWS",
)


class DayParts:
    """Day buckets and values of the batches a PostgreSQL load copied straight into the
    events (every event of them new, as the COPY into the keyed table proved), summed in
    the loading process with pyarrow instead of copied again for the server to group:
    the events' customer, metric, instant (timestamp[us, UTC]), value and dimension.
    Events of metrics that keep a latest event are left to the server (`latest`: their
    batch's lines go into `usage_added`), whose collation orders the tie-break."""

    def __init__(self, latest: set[str], distinct: set[str]):
        self.latest = sorted(latest)
        self.distinct = sorted(distinct)
        self.tables: list[Any] = []

    def split(self, customer: Any, metric: Any, at: Any, value: Any, dimension: Any) -> Any:
        """A batch's events as a part (summed here if the batch is copied straight in),
        and the indices of those left to the server (None: none)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        table = pa.table({"c": customer, "m": metric, "t": at, "v": value, "d": dimension})
        if not self.latest:
            return table, None
        left = pc.is_in(metric, pa.array(self.latest, pa.string()))
        if not pc.any(left).as_py():
            return table, None
        return table.filter(pc.invert(left)), pc.indices_nonzero(left).to_pylist()

    def add(self, part: Any) -> None:
        self.tables.append(part)

    def copy(self, raw: Any) -> tuple[int, int] | None:
        """The parts summed per customer, metric and UTC day, and their distinct values,
        into PARTS_TABLE and PART_VALUES_TABLE; the first and last day (epoch seconds), or
        None without parts."""
        if not self.tables:
            return None
        import io

        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as csv

        events = pa.concat_tables(self.tables)  # chunked: no copy
        self.tables = []
        if not events.num_rows:  # every event was left to the server
            return None
        # Each event's customer, metric and UTC day (floored, before 1970 too) as one
        # integer, in key order: grouped and sorted as integers, then read back.
        day = pc.divide(
            pc.cast(pc.floor_temporal(events["t"], unit="day"), pa.int64()), 86_400_000_000
        )
        first, last = pc.min(day).as_py(), pc.max(day).as_py()
        customers, customer = _ranked(events["c"])
        metrics, metric = _ranked(events["m"])
        days = last - first + 1
        key = pc.add(
            pc.add(pc.multiply(customer, len(metrics) * days), pc.multiply(metric, days)),
            pc.subtract(day, first),
        )

        def columns(grouped: Any) -> dict[str, Any]:
            k = grouped["k"]
            c = pc.divide(k, len(metrics) * days)
            rest = pc.subtract(k, pc.multiply(c, len(metrics) * days))
            m = pc.divide(rest, days)
            d = pc.add(pc.subtract(rest, pc.multiply(m, days)), first)
            return {
                "c": pc.take(customers, c),
                "m": pc.take(metrics, m),
                "day": pc.multiply(d, 86_400),
            }

        value = events["v"]
        grouped = (
            pa.table(
                {
                    "k": key,
                    "v": value,
                    "h": pc.shift_right(value, 32),
                    "l": pc.bit_wise_and(value, LOW_BITS),
                }
            )
            .group_by(["k"], use_threads=False)
            .aggregate([("v", "count"), ("h", "sum"), ("l", "sum"), ("v", "max")])
            .sort_by("k")
        )
        summed = pa.table(
            {
                **columns(grouped),
                **{n: grouped[n] for n in ("v_count", "h_sum", "l_sum", "v_max")},
            }
        )
        kept = pc.and_(
            pc.is_valid(events["d"]), pc.is_in(events["m"], pa.array(self.distinct, pa.string()))
        )
        values = pa.table({"k": key, "d": events["d"]}).filter(kept)
        del events, key, value, day
        if values.num_rows:
            dimensions, dimension = _ranked(values["d"])
            grouped = (
                pa.table({"k": values["k"], "r": dimension})
                .group_by(["k", "r"], use_threads=False)
                .aggregate([])
                .sort_by([("k", "ascending"), ("r", "ascending")])
            )
            values = pa.table({**columns(grouped), "d": pc.take(dimensions, grouped["r"])})
        options = csv.WriteOptions(include_header=False)
        with raw.cursor() as cursor:
            for statement in _TEMPORARY:
                cursor.execute(statement)
            for table, name in ((summed, PARTS_TABLE), (values, PART_VALUES_TABLE)):
                if not table.num_rows:
                    continue
                with cursor.copy(f"COPY {name} FROM STDIN (FORMAT csv)") as stream:
                    # Written as CSV a slice at a time, straight into the COPY.
                    for start in range(0, table.num_rows, 65_536):
                        text = io.BytesIO()
                        csv.write_csv(table.slice(start, 65_536), text, options)
                        stream.write(text.getbuffer())
            del summed, values
        return first * 86_400, last * 86_400


def _ranked(strings: Any) -> tuple[Any, Any]:
    """Distinct strings in bytewise order, and each string's place among them (int64)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(strings.combine_chunks())
    order = pc.sort_indices(encoded.dictionary)
    place = pc.subtract(pc.cast(pc.rank(encoded.dictionary, tiebreaker="first"), pa.int64()), 1)
    return pc.take(encoded.dictionary, order), pc.take(place, encoded.indices)


def write_load(raw: Any, parts: DayParts, regroup: bool) -> None:
    """A PostgreSQL load's day buckets and values, once, at its end: from the events in
    `usage_added` (merged batches, and the events `parts` left to the server) and the
    parts. When no bucket of the load's days is stored yet, the INSERTs skip their
    conflict handling (a concurrent load's bucket of such a day, written meanwhile, makes
    them fail: they are undone to their savepoint and run with it)."""
    from psycopg.errors import UniqueViolation

    span = parts.copy(raw)
    with raw.cursor() as cursor:
        cursor.execute("SELECT min(timestamp), max(timestamp) FROM usage_added")
        lo, hi = cursor.fetchone()
        days = [d for d in (lo, hi) if d is not None]
        if span is not None:
            days += [datetime.fromtimestamp(d, UTC) for d in span]
        if not days:
            return
        known = _days_stored(cursor, days)
    statements = fill_sql(
        "postgresql", "usage_added", parts=span is not None, regroup=regroup, conflict=known
    )
    if not known:
        try:
            with raw.transaction(), raw.cursor() as cursor:  # a savepoint
                for statement in statements:
                    cursor.execute(statement)
            return
        except UniqueViolation:
            statements = fill_sql(
                "postgresql", "usage_added", parts=span is not None, regroup=regroup
            )
    with raw.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def _days_stored(cursor: Any, instants: list[datetime]) -> bool:
    """Whether a bucket of a day from the first to the last of `instants` is stored (a
    range of the BRIN index on the day)."""
    cursor.execute(
        "SELECT EXISTS (SELECT 1 FROM usage_buckets WHERE day >= %s AND day <= %s)",
        (day_of(min(instants).astimezone(UTC)), day_of(max(instants).astimezone(UTC))),
    )
    return cursor.fetchone()[0]


def metric_codes(session: Session, kinds: list[str]) -> set[str]:
    """The codes of the metrics whose aggregation is one of `kinds`."""
    return set(
        session.execute(sa.select(Metric.code).where(Metric.aggregation.in_(kinds))).scalars()
    )


def _upsert(session: Session) -> Any:
    """INSERT of day buckets that adds each one to the bucket already stored."""
    t = UsageBucket.__table__
    stmt = postgres.insert(session, t)
    x = stmt.excluded
    newer = sa.or_(
        t.c.latest_at.is_(None),
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


def fill_sql(
    dialect: str,
    source: str = "usage_events",
    parts: bool = False,
    regroup: bool = True,
    conflict: bool = True,
) -> tuple[str, str]:
    """The two INSERT … SELECT statements that fill the buckets and the values from the
    events of `source` (a table or a subquery with the events' columns, each event once,
    none of them in the buckets yet), adding to the buckets already stored.

    PostgreSQL's loads only: with `parts`, also from the day buckets and values summed in
    the loading process (`DayParts`, in `PARTS_TABLE` and `PART_VALUES_TABLE`), of events
    that are not in `source`; `regroup=False` says no day is in both (`source` then holds
    only metrics the parts leave out). `conflict=False`: no bucket of these days is
    stored yet, a plain INSERT (a concurrent load's bucket of the same day makes it fail:
    run it again with `conflict`).

    The latest event is kept only for metrics whose aggregation reads it (`latest_kinds`,
    NULL for the others), the values only for those that count them (`distinct_kinds`):
    the other events skip that work. On PostgreSQL the high bits are summed as integers
    (below 2^31: values are below 2^63), an integer sum cheaper than a bigint's; a day's
    latest event is found by a hash aggregate, the greatest
    [instant as digits, event id, value] (`store.postgres.latest_column`), instead of a
    sort of the events; SQLite ranks them."""
    day = day_sql(dialect, "timestamp")
    latest_metrics, distinct_metrics = metrics_of(latest_kinds()), metrics_of(distinct_kinds())
    if dialect == "postgresql":
        # The metric codes once (an init plan), each event's code compared to them.
        keeps_latest = f"metric_code = ANY(ARRAY({latest_metrics}))"
        keeps_values = f"metric_code = ANY(ARRAY({distinct_metrics}))"
        latest = "latest[2], latest[3]::bigint"
        ranked = f"""
    SELECT customer_id, metric_code, day, count(*) AS events,
        sum((value >> 32)::integer) AS high, sum(value & {LOW_BITS}) AS low,
        max(value) AS top, max(timestamp) FILTER (WHERE keeps_latest) AS latest_at,
        max(ARRAY[to_char(timezone('UTC', timestamp), 'YYYYMMDDHH24MISSUS'), event_id,
            value::text]) FILTER (WHERE keeps_latest) AS latest
    FROM (SELECT *, {day} AS day, {keeps_latest} AS keeps_latest FROM {source} AS events)
        AS events
    GROUP BY customer_id, metric_code, day"""
        greatest = "GREATEST"
    else:
        keeps_values = f"metric_code IN ({distinct_metrics})"
        latest = "latest_event_id, latest_value"
        ranked = f"""
    SELECT customer_id, metric_code, day, count(*) AS events,
        sum(value >> 32) AS high, sum(value & {LOW_BITS}) AS low, max(value) AS top,
        max(timestamp) FILTER (WHERE keeps_latest) AS latest_at,
        max(event_id) FILTER (WHERE rank = 1 AND keeps_latest) AS latest_event_id,
        max(value) FILTER (WHERE rank = 1 AND keeps_latest) AS latest_value
    FROM (
        SELECT customer_id, metric_code, timestamp, value, event_id, {day} AS day,
            metric_code IN ({latest_metrics}) AS keeps_latest,
            row_number() OVER (
                PARTITION BY customer_id, metric_code, {day}
                ORDER BY timestamp DESC, event_id DESC
            ) AS rank
        FROM {source} AS events
    ) AS events
    GROUP BY customer_id, metric_code, day"""
        greatest = "max"
    if parts:
        # The process's sums of the events copied straight in, whose metrics keep no
        # latest event; a day in both (`regroup`) has its latest event from `source` alone.
        ranked += f"""
    UNION ALL
    SELECT customer_id, metric_code, to_timestamp(day) AS day, events, high, low, top,
        NULL::timestamptz AS latest_at, NULL::text[] AS latest
    FROM {PARTS_TABLE}"""
        if regroup:
            ranked = f"""
    SELECT customer_id, metric_code, day, sum(events) AS events, sum(high) AS high,
        sum(low) AS low, max(top) AS top, max(latest_at) AS latest_at, max(latest) AS latest
    FROM ({ranked}
    ) AS days
    GROUP BY customer_id, metric_code, day"""
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
    if not conflict:
        buckets = buckets.split("ON CONFLICT")[0]
    values = f"""
INSERT INTO usage_bucket_values (customer_id, metric_code, day, dimension)
SELECT DISTINCT customer_id, metric_code, {day}, dimension FROM {source} AS events
WHERE dimension IS NOT NULL AND {keeps_values}"""
    if parts:  # the parts' values are distinct, and none is in `source` without regroup
        values += f"""
UNION{" ALL" if not regroup else ""}
SELECT customer_id, metric_code, to_timestamp(day), dimension FROM {PART_VALUES_TABLE}"""
    values += "\nORDER BY 1, 2, 3, 4\n"
    if conflict:
        values += "ON CONFLICT DO NOTHING\n"
    return buckets, values


# A bucket stored without a latest event takes the new one (under the rule above a
# metric's buckets all keep it or none does: only a store edited by hand has both).
_NEWER = (
    "(b.latest_at IS NULL OR excluded.latest_at > b.latest_at OR "
    "(excluded.latest_at = b.latest_at AND excluded.latest_event_id > b.latest_event_id))"
)


def rebuild(connection: sa.Connection) -> None:
    """The buckets and values computed again from every stored event."""
    connection.execute(sa.text("DELETE FROM usage_bucket_values"))
    connection.execute(sa.text("DELETE FROM usage_buckets"))
    for statement in fill_sql(connection.dialect.name):
        connection.execute(sa.text(statement))
