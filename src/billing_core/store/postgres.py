"""PostgreSQL's own paths, in one place: COPY (its statement and its encodings), the usage
loads' advisory lock and staging, row locks, ids drawn from a sequence, planner statistics
and the aggregation's PostgreSQL variants.

Callers ask this module instead of branching on the store: each function here does the
PostgreSQL thing, or nothing (or the portable thing) on SQLite.

Longer than the other modules (about 430 lines) on purpose: every PostgreSQL-only path in
one file is what lets the rest of the code read the same on both stores.
"""

from __future__ import annotations

import json
import operator
import queue
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.store.engine import is_postgres
from billing_core.store.types import DecimalType, UTCDateTime

# --- COPY ----------------------------------------------------------------------------------


@contextmanager
def copy(raw: Any, table: str, columns: str, binary: list[str] | None = None) -> Iterator[Any]:
    """A COPY of `columns` into `table` on a psycopg connection: in PostgreSQL's binary
    format with `binary` (the types of the columns), else in its text format."""
    options = " (FORMAT BINARY)" if binary else ""
    with (
        raw.cursor() as cursor,
        cursor.copy(f"COPY {table} ({columns}) FROM STDIN{options}") as stream,
    ):
        if binary:
            stream.set_types(binary)
        yield stream


_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_to_json = json.JSONEncoder(default=str, ensure_ascii=False, separators=(", ", ": ")).encode
_json_string = json.encoder.encode_basestring  # a str as JSON, not ASCII-escaped


def copy_text(value: str) -> str:
    """A value in COPY's text format (backslash, tab and line ends escaped)."""
    if value.isprintable() and "\\" not in value:
        return value  # the usual case, told apart without a regular expression
    if _COPY_SPECIAL.search(value) is None:
        return value
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def properties_json(properties: dict) -> str:
    """Properties as JSON text, as `_to_json` writes them; a flat object of strings (every
    CSV row's extra columns) is written without the general encoder."""
    parts = []
    for key, value in properties.items():
        if type(key) is not str or type(value) is not str:
            return _to_json(properties)
        parts.append(f"{_json_string(key)}: {_json_string(value)}")
    return "{" + ", ".join(parts) + "}"


def copy_rows(session: Session, table: sa.Table, rows: list[dict]) -> bool:
    """COPY rows (every one with the same keys) into `table`; False on SQLite (nothing
    written). Each value goes through its column's own bind processing, so COPY writes
    what an INSERT would have."""
    if not is_postgres(session):
        return False
    connection = session.connection()
    dialect = connection.dialect
    names = list(rows[0])
    processors = [
        (i, process)
        for i, name in enumerate(names)
        if (process := _copy_processor(table.c[name].type, dialect)) is not None
    ]
    values_of = operator.itemgetter(*names) if len(names) > 1 else lambda row: (row[names[0]],)
    columns = ", ".join(dialect.identifier_preparer.quote(name) for name in names)
    binary = [_binary_type(table.c[name].type, dialect) for name in names]
    raw = connection.connection.driver_connection
    with copy(raw, table.name, columns, binary if None not in binary else None) as stream:
        write = stream.write_row
        for row in rows:
            values = list(values_of(row))
            for i, process in processors:
                if values[i] is not None:
                    values[i] = process(values[i])
            write(values)
    return True


def _copy_processor(column_type: Any, dialect: Any) -> Callable[[Any], Any] | None:
    """How a column's values are written by COPY, as an INSERT would bind them: a JSON
    document as its text, serialised once per batch (psycopg would do it once per row, and
    rows often share one: a price's terms); an instant processed once per batch (a
    period's window); a Decimal as it is (NUMERIC)."""
    if isinstance(column_type, sa.JSON):
        return _memo(dialect._json_serializer or json.dumps, id)  # the rows keep it alive
    if isinstance(column_type, DecimalType):
        return _decimal
    process = column_type._cached_bind_processor(dialect)
    if process is not None and column_type._type_affinity is sa.DateTime:
        return _memo(process, None)
    return process


# Column types whose values COPY writes in PostgreSQL's binary format (half the cost of
# text for a row of dates, decimals and instants), by their DDL: the type psycopg dumps
# each value as. A JSON document goes as its text (json's binary form is its text; not
# jsonb's, which is not listed);
# decimals and instants are the product's own types (see `_binary_type`).
_BINARY = {
    "VARCHAR": "text",
    "TEXT": "text",
    "DATE": "date",
    "BIGINT": "int8",
    "INTEGER": "int4",
    "SMALLINT": "int2",
    "BOOLEAN": "bool",
    "JSON": "text",
}


def _binary_type(column_type: Any, dialect: Any) -> str | None:
    """The type a column's values are written as in a binary COPY, or None (the batch is
    then written as text): every value must be of that type's Python class, as the
    processors of `_copy_processor` make them (instants: aware, in UTC)."""
    if isinstance(column_type, UTCDateTime):
        return "timestamptz"
    if isinstance(column_type, DecimalType):
        return "numeric"
    ddl = column_type.compile(dialect=dialect).split("(")[0].strip()
    return _BINARY.get(ddl)


def _decimal(value: Any) -> Decimal:
    return value if value.__class__ is Decimal else Decimal(str(value))


def _memo(
    process: Callable[[Any], Any], key_of: Callable[[Any], Any] | None
) -> Callable[[Any], Any]:
    """`process` run once per distinct value (by `key_of(value)`, or the value itself)."""
    done: dict[Any, Any] = {}

    def run(value: Any) -> Any:
        key = value if key_of is None else key_of(value)
        found = done.get(key, done)
        if found is done:
            found = done[key] = process(value)
        return found

    return run


# --- usage loads ---------------------------------------------------------------------------

USAGE_COLUMNS = (
    "event_id, customer_id, metric_code, timestamp, quantity, value, dimension, "
    "properties, source, ingested_at"
)
# A batch from the staging table into the events (an event id already there, or twice in
# the batch, is skipped); the events written are kept for their day buckets (written at
# the end of the load, `EventCopy.write_buckets`) and counted: all of them, and those
# before an instant.
MERGE_STAGING = (
    "WITH added AS (INSERT INTO usage_events (event_id, customer_id, metric_code, timestamp, "
    "quantity, value, dimension, properties, source, ingested_at) "
    "SELECT event_id, customer_id, metric_code, timestamp, quantity, value, dimension, "
    "properties, source, ingested_at FROM usage_staging ON CONFLICT (event_id) DO NOTHING "
    f"RETURNING {USAGE_COLUMNS}), "
    f"kept AS (INSERT INTO usage_added ({USAGE_COLUMNS}) SELECT {USAGE_COLUMNS} FROM added) "
    "SELECT count(*), count(*) FILTER (WHERE timestamp < %s) FROM added"
)


# pg_advisory lock key of usage loads: the bytes of "billload" as a signed 64-bit integer.
LOAD_KEY = int.from_bytes(b"billload", "big", signed=True)


def lock_usage_load(session: Session) -> None:
    """Loads run side by side (each holds LOAD_KEY shared); one run again after a deadlock
    with another holds it alone (`session.info["load_alone"]`). SQLite: nothing to do, its
    writers queue."""
    if not is_postgres(session):
        return
    alone = session.info.get("load_alone", False)
    session.execute(
        sa.text(
            "SELECT pg_advisory_xact_lock(:key)"
            if alone
            else "SELECT pg_advisory_xact_lock_shared(:key)"
        ),
        {"key": LOAD_KEY},
    )


def is_deadlock(error: BaseException) -> bool:
    """PostgreSQL chose this transaction as a deadlock's victim."""
    from psycopg.errors import DeadlockDetected

    return isinstance(getattr(error, "orig", None) or error, DeadlockDetected)


def analyze(engine: sa.Engine, table: str) -> None:
    """Fresh planner statistics for a table, outside any transaction (PostgreSQL only)."""
    if not is_postgres(engine):
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text(f"ANALYZE {table}"))


# Queued after a file's last batch: the writing thread then notes its running total.
_MARK: Any = object()


def event_copy(
    session: Session, source: str, now: Any, batch: int, before: Any = None
) -> EventCopy | None:
    """The COPY writer of usage events on PostgreSQL; None on SQLite."""
    return EventCopy(session, source, now, batch, before) if is_postgres(session) else None


class EventCopy:
    """Usage events batched into COPY text, skipping event ids already present.

    Each event becomes its line of COPY text as it is validated; a thread of its own sends
    the batches, each copied into a staging table, then merged into the events by one
    statement that keeps the events it wrote for their day buckets (MERGE_STAGING),
    written at the end of the load (`write_buckets`). A batch copied straight into the
    events (all its events new) and given as a part (`add_lines`) has its day buckets
    summed in this process (`parts`, a `store.usage_buckets.DayParts`); only the events
    the part leaves to the server go into `usage_added`. While the server copies one batch,
    the reading thread parses the next (psycopg waits for the server without the GIL, and
    the sending thread has almost no Python to run). At most two batches wait: bounded
    memory.
    """

    def __init__(self, session: Session, source: str, now: Any, batch: int, before: Any = None):
        self.session = session
        self.size = batch
        self.ids: list[str] = []  # the batch's event ids and COPY lines
        self.lines: list[str] = []
        self.loaded = 0
        # With `before`: the batch's events earlier than it, and the new ones among them.
        self.before = before
        self.early = 0
        self.loaded_before = 0
        self.marks: list[int] = []  # `loaded` at each mark(), once its batches were written
        # The day buckets summed here (`usage_buckets.DayParts`, set by the writer), and
        # whether `usage_added` holds whole batches too (then a day may be in both).
        self.parts: Any = None
        self.regroup = False
        session.execute(
            sa.text(
                "CREATE TEMP TABLE IF NOT EXISTS usage_staging "
                "(LIKE usage_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
        )
        session.execute(
            sa.text(
                "CREATE TEMP TABLE IF NOT EXISTS usage_added "
                "(LIKE usage_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
        )
        session.execute(sa.text("TRUNCATE usage_staging, usage_added"))
        self.tail = f"\t{copy_text(source)}\t{now.isoformat()}\n"
        self.escaped: dict[tuple[str, str], str] = {}
        self.raw = session.connection().connection.driver_connection
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="usage-writer", daemon=True)
        self.thread.start()

    def add(self, row: dict, key: tuple[str, str]) -> None:
        dimension, properties = row["dimension"], row["properties"]
        self.ids.append(row["event_id"])
        who = self.escaped.get(key)
        if who is None:  # a customer and metric's text, escaped once per load
            who = self.escaped[key] = f"{copy_text(key[0])}\t{copy_text(key[1])}"
        self.lines.append(
            "\t".join(
                (
                    copy_text(row["event_id"]),
                    who,
                    row["timestamp"].isoformat(),
                    str(row["quantity"]),
                    str(row["value"]),
                    "\\N" if dimension is None else copy_text(dimension),
                    "\\N" if properties is None else copy_text(properties_json(properties)),
                )
            )
            + self.tail
        )
        if self.before is not None and row["timestamp"] < self.before:
            self.early += 1
        if len(self.lines) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.lines:
            return
        if self.error is not None:
            self.close()
        self.queue.put((self.ids, self.lines, self.early, None))
        self.ids, self.lines, self.early = [], [], 0

    def add_lines(self, ids: list[str], lines: list[str], early: int = 0, part: Any = None) -> None:
        """A whole batch already in COPY text (the columns of USAGE_COLUMNS, each line
        ending with `tail`): queued as `flush` queues a batch, after the events added
        before it, with `early` of its events earlier than `before`; with `part`
        (`parts.split` of its events), its day buckets are summed here if it is copied
        straight in."""
        self.flush()
        if not lines:
            return
        if self.error is not None:
            self.close()
        self.queue.put((ids, lines, early, part))

    def mark(self) -> None:
        """The end of a file: `marks` gets the events loaded so far once the writing thread
        has written every batch before it (the reader does not wait for it)."""
        self.flush()
        self.queue.put(_MARK)

    def close(self) -> None:
        """Wait for the writing thread; raise what it failed with."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error

    def write_buckets(self, write_load: Callable[[Any, Any, bool], None]) -> None:
        """The load's events, kept in `usage_added` and summed in `parts`, into their day
        buckets by `write_load` (`store.usage_buckets.write_load`, given by the writer:
        that module reads this one), after `close`."""
        with self.raw.cursor() as cursor:
            # Room for the load's hash aggregate and sort (this transaction only).
            cursor.execute("SET LOCAL work_mem = '256MB'")
        write_load(self.raw, self.parts, self.regroup)
        with self.raw.cursor() as cursor:
            cursor.execute("TRUNCATE usage_added")

    def abandon(self) -> None:
        """Stop the writing thread without waiting for its batches (the load failed)."""
        if self.thread.is_alive():
            self.error = self.error or RuntimeError("load abandoned")
            self.queue.put(None)
            self.thread.join()

    def _work(self) -> None:
        while (batch := self.queue.get()) is not None:
            if batch is _MARK:
                self.marks.append(self.loaded)
                continue
            if self.error is not None:
                continue  # keep draining so the reader never blocks on a full queue
            try:
                self._write_batch(*batch)
            except BaseException as error:  # noqa: BLE001 - re-raised by close()
                self.error = error

    def _write_batch(self, ids: list[str], lines: list[str], early: int, part: Any = None) -> None:
        """One batch: straight into the events when none of its ids is known yet, its day
        buckets then summed here (`part`) or its lines copied into `usage_added`; else into
        the staging table, then merged (MERGE_STAGING), which keeps in `usage_added` only
        the events it wrote."""
        if self._copy_direct(ids, lines):
            self.loaded_before += early  # every event of the batch was new
            if part is None:
                self._copy(lines, "usage_added")
                self.regroup = True
                return
            summed, left = part
            self.parts.add(summed)
            if left:  # the events left to the server
                self._copy([lines[i] for i in left], "usage_added")
            return
        self.regroup = True
        self._copy(lines, "usage_staging")
        with self.raw.cursor() as cursor:
            cursor.execute(MERGE_STAGING, (self.before,))
            added, added_before = cursor.fetchone()
            self.loaded += added
            self.loaded_before += added_before
            cursor.execute("TRUNCATE usage_staging")

    def _copy_direct(self, ids: list[str], lines: list[str]) -> bool:
        """COPY a batch straight into the events when none of its ids is known yet.

        The usual case (new usage) then costs one pass of the server instead of a COPY into
        staging plus a merge. A concurrent load that writes one of the ids first makes the
        COPY fail; it is undone to its savepoint and the batch goes through staging.
        """
        from psycopg.errors import UniqueViolation

        if len(set(ids)) != len(ids):
            return False
        # A sample of the ids tells a batch loaded before (a file sent again) without
        # probing them all, which costs the server as much as the COPY; the COPY's own
        # key check is the guard for the rest.
        sample = ids[:: max(1, len(ids) // 16)] + ids[-1:]
        with self.raw.cursor() as cursor:
            cursor.execute("SELECT 1 FROM usage_events WHERE event_id = ANY(%s) LIMIT 1", (sample,))
            if cursor.fetchone() is not None:
                return False
        try:
            with self.raw.transaction():  # a savepoint inside the load's transaction
                self._copy(lines, "usage_events")
        except UniqueViolation:
            return False
        self.loaded += len(lines)
        return True

    def _copy(self, lines: list[str], table: str) -> None:
        """COPY lines of text into `table` (faster than per-value adaptation)."""
        with copy(self.raw, table, USAGE_COLUMNS) as stream:
            stream.write("".join(lines))


# --- other statements ----------------------------------------------------------------------


def insert(session: Session, table: sa.Table) -> Any:
    """INSERT in the store's own dialect (for ON CONFLICT)."""
    if is_postgres(session):
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def in_array(session: Session, column: sa.ColumnElement, values: list[Any]) -> Any:
    """PostgreSQL: `column = ANY(:values)`, one array parameter instead of many IN lists;
    None on SQLite."""
    if not is_postgres(session):
        return None
    from sqlalchemy.dialects.postgresql import ARRAY

    return column == sa.any_(sa.bindparam("values", values, type_=ARRAY(column.type)))


def for_update(session: Session, stmt: sa.Select) -> sa.Select:
    """`stmt` locking the rows it reads (PostgreSQL; SQLite's one writer needs no lock)."""
    return stmt.with_for_update() if is_postgres(session) else stmt


def serial_ids(session: Session, table: sa.Table, count: int) -> list[int] | None:
    """`count` ids drawn from the table's serial sequence up front (PostgreSQL), so the rows
    can go in by one COPY; None on SQLite."""
    if not is_postgres(session):
        return None
    return list(
        session.execute(
            sa.text(
                f"SELECT nextval(pg_get_serial_sequence('{table.name}', 'id')) "
                "FROM generate_series(1, :n)"
            ),
            {"n": count},
        ).scalars()
    )


# --- aggregation ---------------------------------------------------------------------------


def prepare_aggregation(connection: sa.Connection) -> None:
    """Room for the hash aggregates of a large close (this transaction only)."""
    if is_postgres(connection):
        connection.execute(sa.text("SET LOCAL work_mem = '128MB'"))


def analyze_windows(connection: sa.Connection) -> None:
    """Statistics of the windows just written, for the join's plan (PostgreSQL only)."""
    if is_postgres(connection):
        connection.execute(sa.text("ANALYZE usage_windows"))


def sum_overflowed(connection: sa.Connection, error: sa.exc.OperationalError) -> bool:
    """Whether a sum failed for overflowing: SQLite sums integers in 64 bits; PostgreSQL's
    sum of a bigint is a numeric, which never overflows."""
    return not is_postgres(connection) and "integer overflow" in str(error.orig)


def grouped_variants(connection: sa.Connection, kinds: list[Any]) -> list[Any]:
    """The aggregations (of `kinds`) whose PostgreSQL variant joins the grouped pass; none
    on SQLite."""
    return [k for k in kinds if k.postgres is not None] if is_postgres(connection) else []


def latest_column(at: Any, event_id: Any, value: Any, condition: Any) -> Any:
    """The latest event of a group as [instant, event id, value], inside a GROUP BY, as the
    `latest` pass's ORDER BY timestamp DESC, event_id DESC would pick it (of events, or of
    day buckets' latest events).

    `max` of a text array compares element by element: first the instant in UTC as twenty
    digits (YYYYMMDDHHMISS and microseconds; digit strings of one length order as the
    instants do, in any collation), then on equal instants the event id in the column's
    own collation, as the ORDER BY compares it. Event ids are unique, so the value never
    decides. `max` combines across parallel workers, so the pass stays parallel.
    """
    from sqlalchemy.dialects.postgresql import array

    instant = sa.func.to_char(sa.func.timezone("UTC", at), "YYYYMMDDHH24MISSUS")
    return sa.func.max(array([instant, event_id, sa.cast(value, sa.Text)])).filter(condition)
