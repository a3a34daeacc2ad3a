"""Valid usage events written in batches: COPY on PostgreSQL (`store.postgres.EventCopy`),
multi-row inserts on SQLite; with them the day buckets of the events written
(`store.usage_buckets`) and the load's late-usage touches."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session

from billing_core.store import postgres
from billing_core.store.models import UsageEvent, UsageTouch
from billing_core.store.rows import insert_rows
from billing_core.store.usage_buckets import (
    DayBuckets,
    DayParts,
    distinct_kinds,
    latest_kinds,
    metric_codes,
    write_load,
)

BATCH = 20_000
# Rows of batches' touches kept before they are folded into one table (while the
# writing thread copies, so that little is left to fold at the end).
SPANS_FOLDED = 150_000


class Writer:
    """Batches valid events into the store, skipping event ids already present, and notes
    each customer and metric's earliest and latest event (the late-usage touches). With
    `before`, it also counts the new events earlier than that instant (`loaded_before`)."""

    def __init__(self, session: Session, source: str, before: datetime | None = None):
        self.session = session
        self.now = datetime.now(UTC)
        # (customer, metric) -> earliest and latest timestamps seen: late-usage touches.
        self.touched: dict[tuple[str, str], list[datetime]] = {}
        # The same of the batches added at once (`add_events`): pyarrow tables of
        # (customer, metric, earliest, latest), folded into `touched` by `finish`.
        self.spans: list[Any] = []
        self.sink = postgres.event_copy(session, source, self.now, BATCH, before) or _Inserts(
            session, source, self.now, before
        )
        self.put = self.sink.add
        if isinstance(self.sink, postgres.EventCopy):
            # Batches copied straight in have their day buckets summed here.
            self.sink.parts = DayParts(
                metric_codes(session, latest_kinds()), metric_codes(session, distinct_kinds())
            )

    def add(self, row: dict) -> None:
        timestamp = row["timestamp"]
        key = (row["customer_id"], row["metric_code"])
        span = self.touched.get(key)
        if span is None:
            self.touched[key] = [timestamp, timestamp]
        elif timestamp < span[0]:
            span[0] = timestamp
        elif timestamp > span[1]:
            span[1] = timestamp
        self.put(row, key)

    def add_events(self, events: Any) -> None:
        """A batch of valid events at once (`usage_vector.Events`): noted in the touches
        and written as `add` would write each, in order, after the rows added before."""
        from billing_core.inputs.usage_vector import fold_spans

        self.spans.append(events.spans())
        if sum(t.num_rows for t in self.spans) > SPANS_FOLDED:
            self.spans = [fold_spans(self.spans)]  # bounded memory
        if isinstance(self.sink, _Inserts):
            self.sink.add_rows(events.row_dicts())
            return
        parts = self.sink.parts
        for piece in events.slices(self.sink.size):  # batches no larger than row by row
            self.sink.add_lines(
                piece.event_id.to_pylist(),
                piece.copy_lines(self.sink.tail),
                piece.earlier_than(self.sink.before),
                parts.split(
                    piece.customer, piece.metric, piece.timestamp, piece.value, piece.dimension
                ),
            )

    def mark(self) -> None:
        """The end of a file: after `finish`, `marks` holds the events loaded up to each."""
        self.sink.mark()

    @property
    def marks(self) -> list[int]:
        return self.sink.marks

    @property
    def loaded_before(self) -> int:
        return self.sink.loaded_before

    def close(self) -> None:
        """Wait for the batches under way; raise what writing them failed with."""
        self.sink.close()

    def abandon(self) -> None:
        """Stop writing without waiting for the batches under way (the load failed)."""
        self.sink.abandon()

    def _fold_spans(self) -> None:
        """The touches of the batches added at once, into `touched`."""
        if not self.spans:
            return
        from billing_core.inputs.usage_vector import fold_spans, span_items

        touched = self.touched
        for key, lo, hi in span_items(fold_spans(self.spans)):
            span = touched.get(key)
            if span is None:
                touched[key] = [lo, hi]
            else:
                span[0] = min(span[0], lo)
                span[1] = max(span[1], hi)
        self.spans = []

    def finish(self) -> int:
        self.sink.flush()
        self._fold_spans()  # while the last batches are being written
        self.sink.close()
        loaded = self.sink.loaded
        self.sink.write_buckets(write_load)
        if loaded:
            insert_rows(
                self.session,
                UsageTouch,
                [
                    {
                        "customer_id": c,
                        "metric_code": m,
                        "earliest": lo,
                        "latest": hi,
                        "created_at": self.now,
                    }
                    for (c, m), (lo, hi) in self.touched.items()
                ],
            )
        return loaded


class _Inserts:
    """SQLite's batches: multi-row inserts that skip event ids already present."""

    def __init__(self, session: Session, source: str, now: datetime, before: datetime | None):
        self.session = session
        self.source = source
        self.now = now
        self.before = before
        self.batch: list[dict] = []
        self.loaded = 0
        self.loaded_before = 0
        self.marks: list[int] = []
        self.buckets = DayBuckets()

    def add(self, row: dict, key: tuple[str, str]) -> None:
        self.batch.append(row)
        if len(self.batch) >= BATCH:
            self.flush()

    def add_rows(self, rows: list[dict]) -> None:
        """Rows as `add` takes them, several at once, in order."""
        self.batch.extend(rows)
        if len(self.batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.batch:
            self._insert(self.batch)
            self.batch = []

    def mark(self) -> None:
        self.flush()
        self.marks.append(self.loaded)

    def close(self) -> None:
        pass  # every batch is written when it is flushed

    def write_buckets(self, write_load: Any = None) -> None:
        """The load's day buckets, summed as its batches were written (`write_load` is
        PostgreSQL's: unused here)."""
        self.buckets.write(self.session)

    def abandon(self) -> None:
        pass

    def _insert(self, rows: list[dict]) -> None:
        table = UsageEvent.__table__
        from sqlalchemy.dialects.sqlite import insert

        stmt = insert(table).on_conflict_do_nothing(index_elements=["event_id"])
        values = [
            {
                **r,
                "properties": _json_ready(r["properties"]),
                "source": self.source,
                "ingested_at": self.now,
            }
            for r in rows
        ]
        # The events actually written (of an event id met twice, the first is kept), for
        # their day buckets, written at the end of the load.
        c = table.c
        written = self.session.execute(
            stmt.returning(
                c.customer_id, c.metric_code, c.timestamp, c.value, c.dimension, c.event_id
            ),
            values,
        ).all()
        self.buckets.add(written)
        self.loaded += len(written)
        if self.before is not None:
            self.loaded_before += sum(1 for row in written if row[2] < self.before)


def _json_ready(properties: dict | None) -> dict | None:
    """Properties as the JSON column can store them: decimals (JSON Lines numbers) and other
    non-JSON values as text, as COPY writes them on PostgreSQL."""
    if properties is None:
        return None
    return json.loads(json.dumps(properties, default=str))
