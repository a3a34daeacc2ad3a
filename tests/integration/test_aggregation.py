"""Aggregation in the database: every kind, half-open windows, exact decimals."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from billing_core.store.engine import unit_of_work
from billing_core.store.models import UsageEvent
from billing_core.store.usage_buckets import rebuild
from billing_core.store.usage_totals import Window, aggregate
from tests.helpers import import_yaml, ingest_csv, recorded_statements

CATALOG = """
customers:
  - {id: acme, name: Acme, currency: USD}
  - {id: beta, name: Beta, currency: USD}
metrics:
  - {code: units, name: Units, aggregation: sum}
  - {code: calls, name: Calls, aggregation: count}
  - {code: peak, name: Peak, aggregation: max}
  - {code: users, name: Users, aggregation: unique_count, field: user_id}
  - {code: seats, name: Seats, aggregation: latest}
  - {code: gb, name: GB, aggregation: sum, field: gb}
"""

KINDS = {
    "units": "sum",
    "calls": "count",
    "peak": "max",
    "users": "unique_count",
    "seats": "latest",
    "gb": "sum",
}

JAN = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
FEB = (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
MAR = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))


def usage(rows: str) -> None:
    ingest_csv("event_id,customer,metric,timestamp,quantity,user_id,gb\n" + rows.strip())


# How the sum/count/max pass runs: joined to the windows (a shard, a preview), or grouped
# by customer and metric with one filtered aggregate per span (a close of every family);
# and whether whole days are read from the day buckets kept at ingestion or every event is.
MODE = {"every_customer": False, "buckets": True}


def windows(*specs: tuple[str, str, tuple[datetime, datetime]]) -> dict[tuple, Decimal]:
    """Aggregate (customer, metric, window) triples; returns them mapped to their value."""
    made = [Window(i, c, m, span[0], span[1]) for i, (c, m, span) in enumerate(specs)]
    with unit_of_work() as session:
        values = aggregate(session, made, KINDS, MODE["every_customer"], MODE["buckets"])
    return {specs[w.key]: values[w.key] for w in made}


@pytest.fixture(params=["joined", "grouped", "joined-events", "grouped-events"])
def catalog(store, request, monkeypatch):
    monkeypatch.setitem(MODE, "every_customer", request.param.startswith("grouped"))
    monkeypatch.setitem(MODE, "buckets", not request.param.endswith("events"))
    import_yaml(CATALOG)


def test_sum_is_exact_and_windows_are_half_open(catalog):
    usage(
        """
u1,acme,units,2026-01-01T00:00:00Z,0.1,,
u2,acme,units,2026-01-15T10:00:00Z,0.2,,
u3,acme,units,2026-01-31T23:59:59.999999Z,1000000.000001,,
u4,acme,units,2026-02-01T00:00:00Z,7,,
u5,acme,units,2026-02-01T00:30:00+01:00,0.000001,,
u6,beta,units,2026-01-10T00:00:00Z,5,,
"""
    )
    got = windows(("acme", "units", JAN), ("acme", "units", FEB), ("beta", "units", JAN))
    # u1 at the start instant is in; u4 at the end instant is February's; u5 is
    # 2026-01-31T23:30Z, so January's, whatever offset it was written with.
    assert got[("acme", "units", JAN)] == Decimal("1000000.300002")
    assert got[("acme", "units", FEB)] == Decimal("7")
    assert got[("beta", "units", JAN)] == Decimal("5")


def test_sum_of_a_property_field(catalog):
    usage(
        """
g1,acme,gb,2026-01-02T00:00:00Z,,,1.25
g2,acme,gb,2026-01-03T00:00:00Z,99,,0.000001
"""
    )
    # The metric reads its field, not the quantity.
    assert windows(("acme", "gb", JAN))[("acme", "gb", JAN)] == Decimal("1.250001")


def test_count_counts_events_whatever_their_quantity(catalog):
    usage(
        """
c1,acme,calls,2026-01-02T00:00:00Z,5,,
c2,acme,calls,2026-01-03T00:00:00Z,0,,
c3,acme,calls,2026-01-04T00:00:00Z,,,
c4,acme,calls,2026-02-01T00:00:00Z,1,,
c1,acme,calls,2026-01-05T00:00:00Z,1,,
"""
    )
    got = windows(("acme", "calls", JAN), ("acme", "calls", FEB))
    # The repeated event id c1 is one event.
    assert got == {("acme", "calls", JAN): Decimal(3), ("acme", "calls", FEB): Decimal(1)}


def test_max_is_the_greatest_quantity_in_the_window(catalog):
    usage(
        """
p1,acme,peak,2026-01-02T00:00:00Z,12.5,,
p2,acme,peak,2026-01-20T00:00:00Z,12.500001,,
p3,acme,peak,2026-01-25T00:00:00Z,3,,
p4,acme,peak,2026-02-01T00:00:00Z,40,,
"""
    )
    got = windows(("acme", "peak", JAN), ("acme", "peak", FEB))
    assert got[("acme", "peak", JAN)] == Decimal("12.500001")
    assert got[("acme", "peak", FEB)] == Decimal("40")


def test_unique_count_counts_distinct_property_values(catalog):
    usage(
        """
n1,acme,users,2026-01-02T00:00:00Z,,alice,
n2,acme,users,2026-01-03T00:00:00Z,,bob,
n3,acme,users,2026-01-04T00:00:00Z,,alice,
n4,acme,users,2026-01-05T00:00:00Z,,Alice,
n5,acme,users,2026-02-01T00:00:00Z,,carol,
n6,beta,users,2026-01-05T00:00:00Z,,alice,
"""
    )
    got = windows(("acme", "users", JAN), ("acme", "users", FEB), ("beta", "users", JAN))
    # Values are compared exactly: "Alice" is not "alice".
    assert got[("acme", "users", JAN)] == Decimal(3)
    assert got[("acme", "users", FEB)] == Decimal(1)
    assert got[("beta", "users", JAN)] == Decimal(1)


def test_latest_is_the_last_value_by_timestamp(catalog):
    usage(
        """
s1,acme,seats,2026-01-02T00:00:00Z,10,,
s3,acme,seats,2026-01-28T00:00:00Z,4,,
s2,acme,seats,2026-01-15T00:00:00Z,25,,
s4,acme,seats,2026-02-01T00:00:00Z,99,,
"""
    )
    got = windows(("acme", "seats", JAN), ("acme", "seats", FEB))
    # The latest timestamp wins, not the largest value nor the last loaded; the event at
    # the end instant belongs to the next window.
    assert got[("acme", "seats", JAN)] == Decimal(4)
    assert got[("acme", "seats", FEB)] == Decimal(99)


def test_latest_ties_go_to_the_greater_event_id(catalog):
    usage(
        """
seat-b,acme,seats,2026-01-20T00:00:00Z,7,,
seat-a,acme,seats,2026-01-20T00:00:00Z,9,,
e10,beta,seats,2026-01-20T00:00:00Z,1.5,,
e9,beta,seats,2026-01-20T00:00:00+00:00,2.5,,
"""
    )
    # Alone, and beside a unique_count window (PostgreSQL then runs both in one pass).
    for extra in ((), (("acme", "users", JAN),)):
        got = windows(("acme", "seats", JAN), ("beta", "seats", JAN), *extra)
        # Equal timestamps: ORDER BY timestamp DESC, event_id DESC, so the greater event
        # id wins, compared as text ("e9" > "e10").
        assert got[("acme", "seats", JAN)] == Decimal(7)
        assert got[("beta", "seats", JAN)] == Decimal("2.5")


def test_latest_orders_by_the_instant_to_the_microsecond(catalog):
    usage(
        """
m1,acme,seats,2026-01-20T10:00:00.000002Z,1,,
m2,acme,seats,2026-01-20T10:00:00.000010Z,2,,
m3,acme,seats,2026-01-20T11:00:00.000001+01:00,3,,
u1,acme,users,2026-01-05T00:00:00Z,1,alice,
u2,acme,users,2026-01-06T00:00:00Z,1,bob,
u3,acme,users,2026-01-07T00:00:00Z,1,alice,
"""
    )
    got = windows(("acme", "seats", JAN), ("acme", "users", JAN))
    # m3 is 10:00:00.000001Z: earlier than m2, whatever offset it was written with.
    assert got[("acme", "seats", JAN)] == Decimal(2)
    assert got[("acme", "users", JAN)] == Decimal(2)


def test_windows_without_events_are_zero(catalog):
    usage("u1,acme,units,2026-01-02T00:00:00Z,3,,")
    specs = [(c, m, MAR) for m in KINDS for c in ("acme", "beta")]
    specs.append(("beta", "units", JAN))  # another customer's usage does not count
    got = windows(*specs)
    assert set(got.values()) == {Decimal(0)}
    assert all(isinstance(v, Decimal) for v in got.values())


def test_every_kind_in_one_call(catalog):
    usage(
        """
a1,acme,units,2026-01-02T00:00:00Z,1.5,,
a2,acme,calls,2026-01-02T00:00:00Z,,,
a3,acme,peak,2026-01-02T00:00:00Z,8,,
a4,acme,users,2026-01-02T00:00:00Z,,zoe,
a5,acme,seats,2026-01-02T00:00:00Z,3,,
a6,acme,gb,2026-01-02T00:00:00Z,,,0.5
"""
    )
    got = windows(*[("acme", m, JAN) for m in KINDS], *[("acme", m, FEB) for m in KINDS])
    assert {m: got[("acme", m, JAN)] for m in KINDS} == {
        "units": Decimal("1.5"),
        "calls": Decimal(1),
        "peak": Decimal(8),
        "users": Decimal(1),
        "seats": Decimal(3),
        "gb": Decimal("0.5"),
    }
    assert {got[("acme", m, FEB)] for m in KINDS} == {Decimal(0)}


def test_no_windows_no_query(store):
    with unit_of_work() as session:
        assert aggregate(session, [], KINDS) == {}


def test_more_spans_than_one_grouped_pass_takes_are_joined(catalog, monkeypatch):
    import billing_core.store.usage_totals

    usage(
        """
s1,acme,units,2026-01-05T00:00:00Z,1,,
s2,acme,units,2026-02-05T00:00:00Z,2,,
s3,acme,units,2026-03-05T00:00:00Z,4,,
s4,beta,calls,2026-02-06T00:00:00Z,9,,
s5,beta,peak,2026-03-06T00:00:00Z,8,,
"""
    )
    specs = [
        ("acme", "units", JAN),
        ("acme", "units", FEB),
        ("acme", "units", MAR),
        ("acme", "units", (JAN[0], MAR[1])),
        ("beta", "calls", FEB),
        ("beta", "peak", (FEB[0], MAR[1])),
        ("beta", "units", JAN),
    ]
    expected = [Decimal(1), Decimal(2), Decimal(4), Decimal(7), Decimal(1), Decimal(8), 0]
    for limit in (8, 2):  # five spans: one grouped pass, then the join
        monkeypatch.setattr(billing_core.store.usage_totals, "GROUPED_SPANS", limit)
        got = windows(*specs)
        assert [got[s] for s in specs] == expected


def test_a_close_of_every_family_reads_latest_in_the_grouped_pass_on_postgresql(store, monkeypatch):
    import_yaml(CATALOG)
    usage(
        """
g1,acme,units,2026-01-05T00:00:00Z,2,,
g2,acme,seats,2026-01-20T00:00:00Z,7,,
g3,acme,seats,2026-01-20T00:00:00Z,9,,
g4,acme,seats,2026-02-03T00:00:00Z,4,,
g5,beta,seats,2026-01-02T00:00:00Z,5,,
"""
    )
    specs = [
        (c, m, span) for c in ("acme", "beta") for m in ("units", "seats") for span in (JAN, FEB)
    ]
    monkeypatch.setitem(MODE, "every_customer", True)
    for buckets, table in ((False, "usage_events"), (True, "usage_buckets")):
        monkeypatch.setitem(MODE, "buckets", buckets)
        with recorded_statements(f"FROM {table}", f"JOIN {table}") as scans:
            got = windows(*specs)
        # g3 wins the tie on 20 January (greater event id), as in the latest pass.
        assert [got[s] for s in specs] == [2, 0, 9, 4, 0, 0, 5, 0]
        # One scan of the events (or of the whole days' buckets, the windows cutting no
        # day) on PostgreSQL; SQLite keeps a latest pass of its own.
        assert len(scans) == (1 if store.backend == "postgres" else 2), scans


def test_latest_before_the_year_1000_is_joined_and_still_the_last_by_instant(store, monkeypatch):
    import_yaml(CATALOG)
    # Ingestion refuses such instants (SPEC §10): these are written straight to the store.
    with unit_of_work() as session:
        session.execute(
            sa.insert(UsageEvent.__table__),
            [
                {
                    "event_id": event_id,
                    "customer_id": "acme",
                    "metric_code": "seats",
                    "timestamp": at,
                    "quantity": Decimal(quantity),
                    "value": quantity * 10**6,
                    "ingested_at": datetime.now(UTC),
                }
                for event_id, at, quantity in (
                    ("o1", datetime(999, 6, 1, tzinfo=UTC), 3),
                    ("o2", datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC), 8),
                    ("o3", datetime(1000, 1, 1, tzinfo=UTC), 6),
                )
            ],
        )
        rebuild(session.connection())  # the day buckets of the events written
        session.commit()
    early = (datetime(999, 1, 1, tzinfo=UTC), datetime(1001, 1, 1, tzinfo=UTC))
    monkeypatch.setitem(MODE, "every_customer", True)
    for buckets, table in ((False, "usage_events"), (True, "usage_buckets")):
        monkeypatch.setitem(MODE, "buckets", buckets)
        with recorded_statements(f"FROM {table}", f"JOIN {table}") as scans:
            got = windows(("acme", "seats", early))
        assert got[("acme", "seats", early)] == Decimal(6)
        # Three-digit years do not order as twenty-digit text: the latest pass of its own.
        assert len(scans) == 1 and "row_number" in scans[0], scans
