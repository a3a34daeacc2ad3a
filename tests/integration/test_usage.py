"""Usage ingestion: validated row by row, refused whole, idempotent on event_id."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from billing_core.inputs.usage import UsageRefused, ingest_files
from billing_core.store.engine import unit_of_work
from tests.helpers import import_yaml, ingest_csv

CATALOG = """
customers: [{id: solo, name: Solo, currency: USD}]
metrics:
  - {code: units, name: Units, aggregation: sum}
  - {code: users, name: Users, aggregation: unique_count, field: user_id}
"""

HEADER = "event_id,customer,metric,timestamp,quantity\n"

BAD = """
event_id,customer,metric,timestamp,quantity
ok-1,solo,units,2026-01-05T10:00:00Z,10
bad-1,solo,units,2026-01-06T10:00:00Z,-4
bad-2,nobody,units,2026-01-07T10:00:00Z,3
bad-3,solo,units,not-a-time,3
bad-4,solo,units,2026-01-07T10:00:00,3
,solo,units,2026-01-07T10:00:00Z,3
bad-6,solo,nometric,2026-01-07T10:00:00Z,3
bad-7,solo,units,2026-01-07T10:00:00Z,three
ok-2,solo,units,2026-01-08T10:00:00Z,5
"""


def test_a_file_with_bad_rows_is_refused_whole_with_every_reason(store):
    import_yaml(CATALOG)
    with pytest.raises(UsageRefused) as refused:
        ingest_csv(BAD)
    found = {(p.row, p.field) for p in refused.value.problems}
    assert found == {
        (3, "quantity"),
        (4, "customer"),
        (5, "timestamp"),
        (6, "timestamp"),
        (7, "event_id"),
        (8, "metric"),
        (9, "quantity"),
    }
    assert all(str(p).startswith(f"{p.file}: row {p.row}: ") for p in refused.value.problems)
    assert store.scalar("SELECT count(*) FROM usage_events") == 0


def test_skip_invalid_loads_the_rest_and_writes_rejects(store, tmp_path):
    import_yaml(CATALOG)
    (tmp_path / "bad.csv").write_text(BAD.lstrip())
    with unit_of_work() as session:
        result = ingest_files(session, [tmp_path / "bad.csv"], rejects_path=tmp_path / "rej.csv")
        session.commit()
    assert (result.loaded, result.rejected) == (2, 7)
    assert len((tmp_path / "rej.csv").read_text().splitlines()) == 8


def test_same_event_id_is_counted_once_whatever_the_file(store, tmp_path):
    import_yaml(CATALOG)
    first = ingest_csv(
        "event_id,customer,metric,timestamp,quantity\ne1,solo,units,2026-01-05T10:00:00Z,10\n"
    )
    (tmp_path / "again.jsonl").write_text(
        json.dumps(
            {
                "event_id": "e1",
                "customer": "solo",
                "metric": "units",
                "timestamp": "2026-01-05T10:00:00Z",
                "quantity": "99",
            }
        )
        + "\n"
    )
    with unit_of_work() as session:
        second = ingest_files(session, [tmp_path / "again.jsonl"])
        session.commit()
    assert (first.loaded, second.loaded, second.duplicates) == (1, 0, 1)
    assert store.scalar("SELECT quantity FROM usage_events") in ("10", Decimal("10"))


def test_several_files_are_all_or_nothing(store, tmp_path):
    import_yaml(CATALOG)
    (tmp_path / "good.csv").write_text(
        "event_id,customer,metric,timestamp,quantity\ng1,solo,units,2026-01-05T10:00:00Z,1\n"
    )
    (tmp_path / "bad.csv").write_text(
        "event_id,customer,metric,timestamp,quantity\nb1,solo,units,2026-01-05T10:00:00Z,-1\n"
    )
    with pytest.raises(UsageRefused), unit_of_work() as session:
        ingest_files(session, [tmp_path / "good.csv", tmp_path / "bad.csv"])
    assert store.scalar("SELECT count(*) FROM usage_events") == 0


def test_each_file_of_a_load_is_recorded_with_its_own_counts(store, tmp_path):
    """One load of three files: each file's usage_loads row has what that file brought
    (read, new, already loaded, rejected), and the rows add up to the load's totals. An
    event in two files of the load is new in the first and already loaded in the second."""
    import_yaml(CATALOG)
    ingest_csv(HEADER + "p1,solo,units,2026-01-04T10:00:00Z,1\n", name="earlier.csv")
    files = {
        "a.csv": [  # one already stored, one twice, one bad
            "p1,solo,units,2026-01-04T10:00:00Z,1",
            "e1,solo,units,2026-01-05T10:00:00Z,1",
            "e2,solo,units,2026-01-05T11:00:00Z,1",
            "e1,solo,units,2026-01-05T10:00:00Z,1",
            "x1,solo,units,2026-01-05T12:00:00Z,-1",
        ],
        "b.csv": [  # e2 came in a.csv
            "e2,solo,units,2026-01-05T11:00:00Z,1",
            "e3,solo,units,2026-01-06T10:00:00Z,1",
        ],
        "c.csv": [  # all new
            "e4,solo,units,2026-01-07T10:00:00Z,1",
            "e5,solo,units,2026-01-07T11:00:00Z,1",
            "e6,solo,units,2026-01-07T12:00:00Z,1",
        ],
    }
    paths = []
    for name, rows in files.items():
        paths.append(tmp_path / name)
        paths[-1].write_text(HEADER + "\n".join(rows) + "\n")
    with unit_of_work() as session:
        result = ingest_files(session, paths, rejects_path=tmp_path / "rejects.csv")
        session.commit()
    assert (result.read, result.loaded, result.duplicates, result.rejected) == (10, 6, 3, 1)
    recorded = store.rows(
        "SELECT key, events_read, events_loaded, duplicates, rejected FROM usage_loads "
        "WHERE key <> :earlier ORDER BY id",
        earlier=str(tmp_path / "earlier.csv"),
    )
    assert [tuple(r) for r in recorded] == [
        (str(tmp_path / "a.csv"), 5, 2, 2, 1),
        (str(tmp_path / "b.csv"), 2, 1, 1, 0),
        (str(tmp_path / "c.csv"), 3, 3, 0, 0),
    ]
    assert [sum(r[i] for r in recorded) for i in (1, 2, 3, 4)] == [10, 6, 3, 1]


def test_property_metrics_read_their_field(store):
    import_yaml(CATALOG)
    with pytest.raises(UsageRefused, match="invalid") as refused:
        ingest_csv(
            "event_id,customer,metric,timestamp,quantity\nu1,solo,users,2026-01-05T10:00:00Z,\n"
        )
    assert refused.value.problems[0].field == "properties.user_id"
    result = ingest_csv(
        "event_id,customer,metric,timestamp,quantity,user_id\n"
        "u1,solo,users,2026-01-05T10:00:00Z,,alice\n",
        name="u.csv",
    )
    assert result.loaded == 1
    assert store.scalar("SELECT dimension FROM usage_events") == "alice"


def test_json_lines_decimal_properties_are_stored_on_both_stores(store, tmp_path):
    # JSON numbers are read as exact decimals; the SQLite writer once failed on them.
    import_yaml(CATALOG)
    (tmp_path / "p.jsonl").write_text(
        json.dumps(
            {
                "event_id": "p1",
                "customer": "solo",
                "metric": "units",
                "timestamp": "2026-01-05T10:00:00Z",
                "quantity": "2",
            }
        )[:-1]
        + ', "properties": {"gb": 1.5}}\n'
    )
    with unit_of_work() as session:
        result = ingest_files(session, [tmp_path / "p.jsonl"])
        session.commit()
    assert result.loaded == 1
    stored = store.scalar("SELECT properties FROM usage_events")
    stored = json.loads(stored) if isinstance(stored, str) else stored
    assert stored == {"gb": "1.5"}
