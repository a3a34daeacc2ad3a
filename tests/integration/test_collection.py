"""The close's collect step: the inbox folder and the SQL source (docs/usage-sources.md)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from billing_core.steps.collect import collect
from tests.helpers import import_yaml

CATALOG = """
customers:
  - {id: solo, name: Solo, currency: USD}
  - {id: duo, name: Duo, currency: USD}
metrics:
  - {code: units, name: Units, aggregation: sum}
  - {code: users, name: Users, aggregation: unique_count, field: user_id}
"""

HEADER = "event_id,customer,metric,timestamp,quantity\n"
GOOD = HEADER + ("i1,solo,units,2026-01-05T10:00:00Z,10\ni2,duo,units,2026-01-06T10:00:00Z,2.5\n")


def events(store) -> int:
    return store.scalar("SELECT count(*) FROM usage_events")


# --- inbox -------------------------------------------------------------------------------


@pytest.fixture
def inbox(store, tmp_path, monkeypatch) -> Path:
    import_yaml(CATALOG)
    folder = tmp_path / "inbox"
    folder.mkdir()
    monkeypatch.setenv("BILLING_USAGE_INBOX", str(folder))
    return folder


def test_an_inbox_file_is_loaded_once_and_archived(store, inbox):
    (inbox / "jan.csv").write_text(GOOD)
    report = collect(close_run_id=7)
    assert (report.read, report.written, report.warnings) == (2, 2, [])
    assert report.details["files"] == 1
    assert not (inbox / "jan.csv").exists()
    assert (inbox / "archive" / "jan.csv").read_text() == GOOD
    assert events(store) == 2
    [(source, key, run, loaded)] = store.rows(
        "SELECT source, key, close_run_id, events_loaded FROM usage_loads"
    )
    assert (source, run, loaded) == ("inbox", 7, 2)
    assert key.startswith("jan.csv:")  # the file's name and its content's digest

    # Nothing new: the next collect reads nothing.
    again = collect()
    assert (again.read, again.written) == (0, 0)
    assert events(store) == 2


def test_the_same_file_dropped_again_is_not_loaded_twice(store, inbox):
    (inbox / "jan.csv").write_text(GOOD)
    collect()
    (inbox / "jan.csv").write_text(GOOD)
    report = collect()
    assert (report.read, report.written) == (0, 0)  # known by its content: skipped
    assert (inbox / "archive" / "jan.csv").exists() and not (inbox / "jan.csv").exists()
    assert store.scalar("SELECT count(*) FROM usage_loads") == 1
    # Under another name the same events are read, but their event ids count once.
    (inbox / "jan-copy.csv").write_text(GOOD)
    report = collect()
    assert (report.read, report.written, report.details["duplicates"]) == (2, 0, 2)
    assert events(store) == 2


def test_a_bad_inbox_file_is_rejected_whole_with_its_reasons(store, inbox):
    (inbox / "bad.csv").write_text(
        HEADER + "b1,solo,units,2026-01-05T10:00:00Z,1\nb2,nobody,units,2026-01-05T11:00:00Z,1\n"
    )
    (inbox / "good.csv").write_text(GOOD)
    report = collect()
    assert events(store) == 2  # good.csv only: nothing of bad.csv, not even its good row
    assert report.written == 2 and report.details["rejected_files"] == 1
    assert report.details["refused_rows"] == 1
    assert not (inbox / "bad.csv").exists()
    assert (inbox / "rejected" / "bad.csv").exists()
    errors = (inbox / "rejected" / "bad.csv.errors.txt").read_text()
    assert "row 3: customer: unknown customer 'nobody'" in errors
    assert any("bad.csv" in w and "refused" in w for w in report.warnings)
    assert store.scalar("SELECT count(*) FROM usage_loads WHERE key LIKE 'bad.csv%'") == 0


def test_a_missing_inbox_folder_is_a_warning(store, tmp_path, monkeypatch):
    monkeypatch.setenv("BILLING_USAGE_INBOX", str(tmp_path / "nowhere"))
    report = collect()
    assert report.written == 0
    assert any("does not exist" in w for w in report.warnings)


# --- SQL source ----------------------------------------------------------------------------

QUERY = (
    "SELECT id AS event_id, cust AS customer, metric, ts AS timestamp, qty AS quantity, "
    "user_id FROM events WHERE ts >= :watermark"
)


class Source:
    """A usage table in a SQLite file of its own, as another application would keep it."""

    def __init__(self, path: Path):
        self.path = path
        with self.connect() as connection:
            connection.execute(
                "CREATE TABLE events (id TEXT, cust TEXT, metric TEXT, ts TEXT, qty TEXT, "
                "user_id TEXT)"
            )

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path)

    def add(self, *rows: tuple) -> None:
        with self.connect() as connection:
            connection.executemany(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                [(*row, None)[:6] if len(row) == 5 else row for row in rows],
            )

    def fix(self, event_id: str, **values) -> None:
        sets = ", ".join(f"{k} = :{k}" for k in values)
        with self.connect() as connection:
            connection.execute(
                f"UPDATE events SET {sets} WHERE id = :id", {**values, "id": event_id}
            )


@pytest.fixture
def source(store, tmp_path, monkeypatch) -> Source:
    import_yaml(CATALOG)
    made = Source(tmp_path / "source.db")
    monkeypatch.setenv("BILLING_USAGE_SQL_URL", f"sqlite:///{made.path}")
    monkeypatch.setenv("BILLING_USAGE_SQL_QUERY", QUERY)
    return made


def watermark(store) -> str | None:
    return store.scalar("SELECT watermark FROM usage_sources WHERE name = 'sql' AND kind = 'sql'")


def loaded_ids(store) -> list[str]:
    return [r[0] for r in store.rows("SELECT event_id FROM usage_events ORDER BY event_id")]


def test_first_collect_loads_every_row_and_sets_the_watermark(store, source):
    source.add(
        ("s1", "solo", "units", "2026-01-05T10:00:00Z", "10"),
        ("s3", "duo", "units", "2026-01-07T10:00:00Z", "0.000001"),
        ("s2", "solo", "users", "2026-01-06T10:00:00Z", None, "alice"),
    )
    report = collect(close_run_id=3)
    assert (report.read, report.written, report.warnings) == (3, 3, [])
    assert loaded_ids(store) == ["s1", "s2", "s3"]
    # The greatest timestamp, in the source's own text, whatever the rows' order.
    assert watermark(store) == "2026-01-07T10:00:00Z"
    assert report.details["sql_watermark"] == "2026-01-07T10:00:00Z"
    assert store.scalar("SELECT dimension FROM usage_events WHERE event_id = 's2'") == "alice"
    assert store.scalar("SELECT value FROM usage_events WHERE event_id = 's3'") == 1
    [(key, run, read, loaded, rejected)] = store.rows(
        "SELECT key, close_run_id, events_read, events_loaded, rejected FROM usage_loads "
        "WHERE source = 'sql'"
    )
    assert key == "watermark 1970-01-01T00:00:00+00:00 -> 2026-01-07T10:00:00Z"
    assert (run, read, loaded, rejected) == (3, 3, 3, 0)


def test_new_rows_are_picked_up_and_old_ones_not_reloaded(store, source):
    source.add(
        ("s1", "solo", "units", "2026-01-05T10:00:00Z", "10"),
        ("s2", "solo", "units", "2026-01-06T10:00:00Z", "1"),
    )
    collect()
    source.add(
        ("s3", "duo", "units", "2026-01-08T10:00:00Z", "4"),
        ("s4", "solo", "units", "2026-01-09T10:00:00Z", "5"),
    )
    report = collect()
    # Read from the watermark on: s2 (on it, already loaded), s3, s4; s1 is not read.
    assert (report.read, report.written, report.details["duplicates"]) == (3, 2, 1)
    assert loaded_ids(store) == ["s1", "s2", "s3", "s4"]
    assert watermark(store) == "2026-01-09T10:00:00Z"
    assert store.scalar("SELECT count(*) FROM usage_loads WHERE source = 'sql'") == 2

    nothing = collect()
    assert (nothing.read, nothing.written) == (1, 0)  # the boundary row only
    assert watermark(store) == "2026-01-09T10:00:00Z"


def test_rows_sharing_the_watermark_instant_are_not_lost(store, source):
    source.add(("s1", "solo", "units", "2026-01-05T10:00:00Z", "1"))
    collect()
    assert watermark(store) == "2026-01-05T10:00:00Z"
    # Another event at the very same instant arrives after the collect.
    source.add(("s1b", "duo", "units", "2026-01-05T10:00:00Z", "2"))
    report = collect()
    assert (report.read, report.written) == (2, 1)
    assert loaded_ids(store) == ["s1", "s1b"]
    assert store.scalar("SELECT count(*) FROM usage_events WHERE event_id = 's1'") == 1


def test_a_query_without_the_watermark_parameter_is_refused(store, source, monkeypatch):
    source.add(("s1", "solo", "units", "2026-01-05T10:00:00Z", "1"))
    monkeypatch.setenv("BILLING_USAGE_SQL_QUERY", QUERY.split(" WHERE ")[0])
    report = collect()
    [warning] = report.warnings
    assert ":watermark" in warning and "\n" not in warning
    assert events(store) == 0
    assert watermark(store) is None
    assert store.scalar("SELECT count(*) FROM usage_loads") == 0


def test_a_query_without_the_required_columns_is_refused(store, source, monkeypatch):
    source.add(("s1", "solo", "units", "2026-01-05T10:00:00Z", "1"))
    monkeypatch.setenv("BILLING_USAGE_SQL_QUERY", QUERY.replace("cust AS customer", "cust"))
    report = collect()
    [warning] = report.warnings
    assert "no customer column" in warning
    assert events(store) == 0 and watermark(store) is None


def test_invalid_rows_are_skipped_reported_and_read_again_until_fixed(store, source):
    source.add(
        ("s1", "solo", "units", "2026-01-05T10:00:00Z", "1"),
        ("s2", "trio", "units", "2026-01-06T10:00:00Z", "1"),  # customer not in the catalog
        ("s3", "solo", "units", "2026-01-07T10:00:00Z", "-1"),  # negative quantity
        ("s4", "solo", "units", "2026-01-08T10:00:00Z", "1"),
    )
    report = collect()
    # The valid rows are billed now, the bad ones named one by one.
    assert loaded_ids(store) == ["s1", "s4"]
    assert (report.read, report.written, report.details["sql_rejected"]) == (4, 2, 2)
    assert report.details["refused_rows"] == 2
    assert "sql: row 2: customer: unknown customer 'trio'" in report.warnings
    assert any(w.startswith("sql: row 3: quantity: negative") for w in report.warnings)
    # The watermark stops at the earliest bad row, so it is read again...
    assert watermark(store) == "2026-01-06T10:00:00Z"
    assert store.scalar("SELECT rejected FROM usage_loads WHERE source = 'sql'") == 2

    still = collect()  # ...and reported again while it is not fixed
    assert still.written == 0 and still.details["sql_rejected"] == 2
    assert watermark(store) == "2026-01-06T10:00:00Z"

    import_yaml(CATALOG.replace("customers:", "customers:\n  - {id: trio, name: T, currency: USD}"))
    source.fix("s3", qty="3")
    fixed = collect()
    assert (fixed.written, fixed.warnings) == (2, [])
    assert "sql_rejected" not in fixed.details
    assert loaded_ids(store) == ["s1", "s2", "s3", "s4"]
    assert watermark(store) == "2026-01-08T10:00:00Z"


def test_a_bad_row_without_a_usable_timestamp_holds_the_watermark(store, source):
    source.add(("s1", "solo", "units", "2026-01-05T10:00:00Z", "1"))
    collect()
    source.add(
        ("s2", "solo", "units", "2026-01-06T10:00:00", "1"),  # no UTC offset
        ("s3", "solo", "units", "2026-01-07T10:00:00Z", "1"),
    )
    report = collect()
    assert any(w.startswith("sql: row 2: timestamp: no UTC offset") for w in report.warnings)
    assert loaded_ids(store) == ["s1", "s3"]
    # It cannot be placed in time, so nothing after the old watermark is taken as read.
    assert watermark(store) == "2026-01-05T10:00:00Z"
    source.fix("s2", ts="2026-01-06T10:00:00+01:00")
    assert collect().written == 1
    assert watermark(store) == "2026-01-07T10:00:00Z"


def test_the_sql_and_inbox_sources_are_collected_together(store, source, tmp_path, monkeypatch):
    folder = tmp_path / "inbox"
    folder.mkdir()
    monkeypatch.setenv("BILLING_USAGE_INBOX", str(folder))
    (folder / "jan.csv").write_text(GOOD)
    source.add(("s1", "solo", "units", "2026-01-05T10:00:00Z", "1"))
    report = collect()
    assert (report.read, report.written) == (3, 3)
    assert sorted(r[0] for r in store.rows("SELECT source FROM usage_loads")) == ["inbox", "sql"]


def test_a_source_with_typed_columns(store, source, monkeypatch):
    # The store's own database as the source: on PostgreSQL a timestamptz and a numeric
    # column (read back as datetime and Decimal, through a server-side cursor), and a
    # plain postgresql:// URL, which is normalized to the psycopg driver.
    typed = store.backend == "postgres"
    store_rows = [
        ("t1", "solo", "units", "2026-01-05T10:00:00+00:00", "1.5"),
        ("t2", "duo", "units", "2026-01-05T12:00:00+02:00", "2"),
    ]
    from billing_core.store.engine import get_engine

    with get_engine(store.url).begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE src_events (id TEXT, cust TEXT, metric TEXT, "
            + ("ts TIMESTAMPTZ, qty NUMERIC)" if typed else "ts TEXT, qty TEXT)")
        )
        connection.execute(
            sa.text(
                "INSERT INTO src_events VALUES (:i, :c, :m, "
                + ("CAST(:t AS TIMESTAMPTZ), CAST(:q AS NUMERIC))" if typed else ":t, :q)")
            ),
            [dict(zip("icmtq", row, strict=True)) for row in store_rows],
        )
    url = store.url.replace("postgresql+psycopg://", "postgresql://")
    monkeypatch.setenv("BILLING_USAGE_SQL_URL", url)
    monkeypatch.setenv(
        "BILLING_USAGE_SQL_QUERY",
        "SELECT id AS event_id, cust AS customer, metric, ts AS timestamp, qty AS quantity "
        "FROM src_events WHERE ts >= :watermark",
    )
    report = collect()
    assert (report.read, report.written, report.warnings) == (2, 2, [])
    stored = watermark(store)
    assert stored is not None and stored.startswith("2026-01-05T10:00:00")
    again = collect()
    assert (again.read, again.written) == (2, 0)  # both share the watermark's instant
    assert store.scalar("SELECT value FROM usage_events WHERE event_id = 't1'") == 1_500_000
