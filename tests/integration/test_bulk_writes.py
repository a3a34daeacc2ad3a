"""The bulk write paths: usage COPY (straight in, through staging, under a concurrent load),
several batches in one load, values that need escaping, and COPY-based inserts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa

from billing_core.inputs import usage_write
from billing_core.inputs.usage import ingest_files
from billing_core.store.engine import unit_of_work
from billing_core.store.models import Customer, UsageEvent
from billing_core.store.postgres import EventCopy
from billing_core.store.rows import COPY_FROM, insert_rows
from billing_core.store.usage_buckets import rebuild
from tests.helpers import import_yaml, recorded_statements

CATALOG = """
customers: [{id: solo, name: Solo, currency: USD}, {id: "odd\\tone", name: Odd, currency: USD}]
metrics:
  - {code: units, name: Units, aggregation: sum}
  - {code: users, name: Users, aggregation: unique_count, field: user_id}
"""


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _events(n, start=0, customer="solo"):
    at = datetime(2026, 1, 5, tzinfo=UTC)
    return [
        {
            "event_id": f"e{start + i}",
            "customer": customer,
            "metric": "units",
            "timestamp": (at + timedelta(seconds=i)).isoformat(),
            "quantity": "1.5",
            "properties": {"note": "tab\there, newline\nthere, back\\slash, ünïcode"},
        }
        for i in range(n)
    ]


def test_a_load_of_several_batches_keeps_every_event_once(store, tmp_path, monkeypatch):
    import_yaml(CATALOG)
    monkeypatch.setattr(usage_write, "BATCH", 7)  # 50 events: eight batches, some with repeats
    rows = _events(40) + _events(10, start=35)  # e35..e39 twice, in different batches
    _write(tmp_path / "u.jsonl", rows)
    with unit_of_work() as session:
        result = ingest_files(session, [tmp_path / "u.jsonl"])
        session.commit()
    assert (result.read, result.loaded, result.duplicates) == (50, 45, 5)
    assert store.scalar("SELECT count(*) FROM usage_events") == 45
    total = store.scalar("SELECT sum(value) FROM usage_events")
    assert int(total) == 45 * 1_500_000


def test_a_batch_with_a_few_known_ids_the_sample_misses_loads_the_rest(store, tmp_path):
    """The straight COPY checks a sample of a batch's ids; a known id outside the sample
    makes the COPY fail, and the batch goes through the merge: nothing twice, nothing
    lost."""
    import_yaml(CATALOG)
    first = [e for e in _events(1000) if e["event_id"] in ("e5", "e7", "e11")]
    _write(tmp_path / "first.jsonl", first)
    _write(tmp_path / "all.jsonl", _events(1000))
    with unit_of_work() as session:
        ingest_files(session, [tmp_path / "first.jsonl"])
        session.commit()
    with unit_of_work() as session:
        result = ingest_files(session, [tmp_path / "all.jsonl"])
        session.commit()
    assert (result.read, result.loaded, result.duplicates) == (1000, 997, 3)
    assert store.scalar("SELECT count(*) FROM usage_events") == 1000


def test_values_that_need_escaping_arrive_intact(store, tmp_path):
    import_yaml(CATALOG)
    event = _events(1, customer="odd\tone")[0] | {"event_id": "id\\with\ttab"}
    _write(tmp_path / "u.jsonl", [event])
    with unit_of_work() as session:
        ingest_files(session, [tmp_path / "u.jsonl"])
        session.commit()
    (row,) = store.rows("SELECT event_id, customer_id, properties FROM usage_events")
    assert row[0] == "id\\with\ttab"
    assert row[1] == "odd\tone"
    properties = row[2] if isinstance(row[2], dict) else json.loads(row[2])
    assert properties == event["properties"]


def test_a_load_of_known_ids_merges_only_the_new_ones_into_events_and_day_buckets(
    store, tmp_path, monkeypatch
):
    """A file holding ids already stored: every batch goes through the staging table and
    its merge, which skips the known ids; the day buckets get only the new events, once."""
    import_yaml(CATALOG)
    _write(tmp_path / "first.jsonl", _events(5))
    with unit_of_work() as session:
        ingest_files(session, [tmp_path / "first.jsonl"])
        session.commit()
    monkeypatch.setattr(usage_write, "BATCH", 4)  # batches mixing known and new ids
    _write(tmp_path / "second.jsonl", _events(10))
    with unit_of_work() as session:
        result = ingest_files(session, [tmp_path / "second.jsonl"])
        session.commit()
    assert (result.loaded, result.duplicates) == (5, 5)
    assert store.scalar("SELECT count(*) FROM usage_events") == 10
    assert store.scalar("SELECT sum(events) FROM usage_buckets") == 10
    with unit_of_work() as session:
        everything = sa.text("SELECT * FROM usage_buckets ORDER BY 1, 2, 3")
        kept = session.execute(everything).all()
        rebuild(session.connection())
        assert session.execute(everything).all() == kept


def test_a_concurrent_load_of_the_same_ids_falls_back_to_the_merge(store, tmp_path, monkeypatch):
    """The straight COPY meets an id written meanwhile: its savepoint is undone and the
    batch goes through staging, skipping that id; nothing is lost or counted twice."""
    if store.backend != "postgres":
        pytest.skip("the straight COPY is PostgreSQL's path")
    import_yaml(CATALOG)
    _write(tmp_path / "first.jsonl", _events(5))
    with unit_of_work() as session:
        ingest_files(session, [tmp_path / "first.jsonl"])
        session.commit()
    # Blind the pre-check, as if e0..e4 had been committed by another load after it.
    seen = []
    original = EventCopy._copy_direct

    def blind(self, ids, lines):
        seen.append(len(ids))
        real = self.raw.cursor
        self.raw.cursor = lambda *a, **k: _NoClash(real(*a, **k))
        try:
            return original(self, ids, lines)
        finally:
            self.raw.cursor = real

    monkeypatch.setattr(EventCopy, "_copy_direct", blind)
    tables = []
    copy = EventCopy._copy

    def spy(self, lines, table):
        tables.append(table)
        return copy(self, lines, table)

    monkeypatch.setattr(EventCopy, "_copy", spy)
    _write(tmp_path / "second.jsonl", _events(10))
    with unit_of_work() as session:
        result = ingest_files(session, [tmp_path / "second.jsonl"])
        session.commit()
    assert seen == [10]
    assert tables == ["usage_events", "usage_staging"]  # tried straight in, then merged
    assert (result.loaded, result.duplicates) == (5, 5)
    assert store.scalar("SELECT count(*) FROM usage_events") == 10
    assert store.scalar("SELECT sum(events) FROM usage_buckets") == 10  # each event once


class _NoClash:
    """A cursor whose existence check finds nothing (the race the savepoint handles)."""

    def __init__(self, cursor):
        self._cursor = cursor
        self._blind = False

    def __enter__(self):
        self._cursor.__enter__()
        return self

    def __exit__(self, *exc):
        return self._cursor.__exit__(*exc)

    def execute(self, query, params=None):
        self._blind = query.startswith("SELECT 1 FROM usage_events")
        return self._cursor.execute(query, params)

    def fetchone(self):
        return None if self._blind else self._cursor.fetchone()

    def __getattr__(self, name):
        return getattr(self._cursor, name)


def test_bulk_inserts_store_what_row_inserts_store(store):
    """insert_rows switches to COPY on PostgreSQL from COPY_FROM rows: same values."""
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    # Documents and instants shared by several rows (COPY writes each once per batch),
    # and an instant equal to `at` written with another offset.
    shared = {"k": [1, "two", None]}
    other = {"k": "other"}
    same_instant = at.astimezone(timezone(timedelta(hours=-5)))

    def rows(prefix, n):
        return [
            {
                "event_id": f"{prefix}{i}",
                "customer_id": "c\t1",
                "metric_code": "m",
                "timestamp": at + timedelta(minutes=i % 5),
                "quantity": Decimal("0.000001") * i,
                "value": i,
                "dimension": None if i % 2 else f"d{i}",
                "properties": (shared if i % 3 == 1 else other) if i % 3 else None,
                "source": "test",
                "ingested_at": same_instant if i % 4 == 3 else at,
            }
            for i in range(n)
        ]

    with unit_of_work() as session:
        insert_rows(session, UsageEvent, rows("few-", 3))
        insert_rows(session, UsageEvent, rows("many-", COPY_FROM + 1))
        session.commit()
    for i in range(3):
        few = store.rows(
            "SELECT customer_id, timestamp, quantity, value, dimension, properties "
            "FROM usage_events WHERE event_id = :e",
            e=f"few-{i}",
        )
        many = store.rows(
            "SELECT customer_id, timestamp, quantity, value, dimension, properties "
            "FROM usage_events WHERE event_id = :e",
            e=f"many-{i}",
        )
        assert few == many
    assert store.scalar("SELECT count(*) FROM usage_events") == COPY_FROM + 4
    got = {
        r[0]: r[1:]
        for r in store.rows(
            "SELECT event_id, timestamp, properties, ingested_at FROM usage_events "
            "WHERE event_id LIKE 'many-%'"
        )
    }
    for row in rows("many-", COPY_FROM + 1):
        timestamp, properties, ingested_at = got[row["event_id"]]
        assert properties == row["properties"] or json.loads(properties) == row["properties"]
        assert _instant(timestamp) == row["timestamp"]
        assert _instant(ingested_at) == at


def _instant(value):
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def test_select_in_reads_every_match_of_a_long_list(store):
    from billing_core.store.rows import CHUNK, select_in

    import_yaml(CATALOG)
    wanted = ["solo", "odd\tone"] + [f"missing-{i}" for i in range(CHUNK * 2)]
    customers = Customer.__table__
    with unit_of_work() as session:
        found = select_in(session, customers.select(), customers.c.id, wanted)
        assert sorted(r.id for r in found) == ["odd\tone", "solo"]


def test_select_keys_matches_the_few_rows_beyond_or_looks_the_keys_up(store, monkeypatch):
    import billing_core.store.rows
    from billing_core.store.rows import select_keys

    import_yaml(CATALOG)
    customers = Customer.__table__
    wanted = ["solo", "odd\tone", "missing"]
    beyond = customers.c.name >= "Odd"  # both customers meet it
    monkeypatch.setattr(billing_core.store.rows, "CHUNK", 2)  # three keys: more than a chunk
    with recorded_statements("SELECT") as statements, unit_of_work() as session:
        # Two rows beyond: as many as a chunk, matched here (one statement, no keys).
        found = list(select_keys(session, customers.select(), customers.c.id, wanted, beyond))
        assert sorted(r.id for r in found) == ["odd\tone", "solo"]
        assert len(statements) == 1 and "LIMIT" in statements[0]
        # More rows beyond than a chunk: the keys are looked up.
        monkeypatch.setattr(billing_core.store.rows, "CHUNK", 1)
        statements.clear()
        found = list(select_keys(session, customers.select(), customers.c.id, wanted[:2], beyond))
        assert sorted(r.id for r in found) == ["odd\tone", "solo"]
        assert len(statements) >= 2
        # Without `beyond`, always looked up.
        statements.clear()
        found = list(select_keys(session, customers.select(), customers.c.id, ["solo"]))
        assert [r.id for r in found] == ["solo"] and "LIMIT" not in statements[0]


def test_rows_read_as_records_and_dicts_carry_the_values_a_row_does(store):
    """store.records and store.dicts give the same values, converted the same way
    (decimals, instants, JSON), as reading the rows themselves."""
    import sqlalchemy as sa

    from billing_core.store.rows import dicts, records

    import_yaml(CATALOG)
    at = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    rows = [
        {
            "event_id": f"r{i}",
            "customer_id": "solo",
            "metric_code": "units",
            "timestamp": at + timedelta(minutes=i),
            "quantity": Decimal("1.25") * i,
            "value": 1_250_000 * i,
            "dimension": None,
            "properties": {"i": i},
            "source": "test",
            "ingested_at": at,
        }
        for i in range(3)
    ]
    with unit_of_work() as session:
        insert_rows(session, UsageEvent, rows)
        session.commit()
    stmt = sa.select(UsageEvent.__table__).order_by(UsageEvent.__table__.c.event_id)
    with unit_of_work() as session:
        plain = [dict(r._mapping) for r in session.execute(stmt)]
        as_records = records(session, stmt)
        as_dicts = dicts(session, stmt)
    assert as_dicts == plain
    assert [r._asdict() for r in as_records] == plain
    assert as_records[2].quantity == Decimal("2.50")
    assert as_records[1].timestamp == at + timedelta(minutes=1)
    assert as_records[1].timestamp.utcoffset() == timedelta(0)
    assert as_records[0].properties == {"i": 0}
