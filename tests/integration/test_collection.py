"""The close's collect step: the inbox folder and the SQL source (docs/usage-sources.md)."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from billing_core.steps.collect import archive_name, collect, rejected_name
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
    assert events(store) == 2
    [(load_id, source, key, run, loaded, archived_as)] = store.rows(
        "SELECT id, source, key, close_run_id, events_loaded, archived_as FROM usage_loads"
    )
    assert (source, run, loaded) == ("inbox", 7, 2)
    assert key.startswith("jan.csv:")  # the file's name and its content's digest
    # Archived under its load's id, its digest's first 12 digits and its name.
    assert archived_as == f"{load_id}-{key.split(':')[1][:12]}-jan.csv"
    assert (inbox / "archive" / archived_as).read_text() == GOOD

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
    assert report.details["files_already_loaded"] == 1
    assert not (inbox / "jan.csv").exists()
    # The arrival is archived under a name of its own and recorded: nothing read.
    loads = store.rows(
        "SELECT key, events_read, events_loaded, archived_as FROM usage_loads ORDER BY id"
    )
    key = loads[0].key
    assert [(r.key, r.events_read, r.events_loaded) for r in loads] == [(key, 2, 2), (key, 0, 0)]
    assert sorted(p.name for p in (inbox / "archive").iterdir()) == sorted(
        r.archived_as for r in loads
    )
    # Under another name the same events are read, but their event ids count once.
    (inbox / "jan-copy.csv").write_text(GOOD)
    report = collect()
    assert (report.read, report.written, report.details["duplicates"]) == (2, 0, 2)
    assert events(store) == 2


def test_two_files_of_one_name_are_both_archived_and_recorded(store, inbox):
    """A file dropped with the name of one already archived does not replace it: each
    arrival is kept under a name of its own (load id, content digest, name), recorded
    with its load."""
    later = HEADER + "i3,solo,units,2026-02-05T10:00:00Z,7\n"
    (inbox / "usage.csv").write_text(GOOD)
    collect(close_run_id=1)
    (inbox / "usage.csv").write_text(later)
    collect(close_run_id=2)
    archived = {p.name: p.read_text() for p in (inbox / "archive").iterdir()}
    assert sorted(archived.values()) == sorted([GOOD, later])  # both, intact
    loads = store.rows(
        "SELECT id, key, archived_as, close_run_id, events_loaded FROM usage_loads ORDER BY id"
    )
    assert [(r.close_run_id, r.events_loaded) for r in loads] == [(1, 2), (2, 1)]
    for load, text in zip(loads, (GOOD, later), strict=True):
        digest = hashlib.sha256(text.encode()).hexdigest()
        assert load.key == f"usage.csv:{digest}"
        assert load.archived_as == f"{load.id}-{digest[:12]}-usage.csv"
        assert archived[load.archived_as] == text
    assert events(store) == 3


def test_a_long_name_is_cut_to_fit_the_file_system_keeping_its_extension():
    digest = hashlib.sha256(b"x").hexdigest()
    assert archive_name(12, digest, "jan.csv") == f"12-{digest[:12]}-jan.csv"
    long = "é" * 120 + ".jsonl"  # 246 bytes
    cut = archive_name(123456, digest, long)
    assert len(cut.encode()) <= 255 and cut.endswith("é.jsonl")
    assert cut.startswith(f"123456-{digest[:12]}-éé")


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
    [copy] = [p for p in (inbox / "rejected").iterdir() if p.name.endswith("-bad.csv")]
    assert copy.name == rejected_name(hashlib.sha256(copy.read_bytes()).hexdigest(), "bad.csv")
    errors = copy.with_name(copy.name + ".errors.txt").read_text()
    assert "row 3: customer: unknown customer 'nobody'" in errors
    assert any("bad.csv" in w and "refused" in w for w in report.warnings)
    assert store.scalar("SELECT count(*) FROM usage_loads WHERE key LIKE 'bad.csv%'") == 0


def test_two_bad_files_of_one_name_are_both_kept_with_their_reasons(store, inbox):
    """A second refused file with the name of the first does not overwrite the first's
    copy or its reasons before anyone has fixed them."""
    first = HEADER + "b1,nobody,units,2026-01-05T10:00:00Z,1\n"
    second = HEADER + "b2,solo,units,not-a-time,1\n"
    (inbox / "bad.csv").write_text(first)
    collect()
    (inbox / "bad.csv").write_text(second)
    report = collect()
    assert report.details["rejected_files"] == 1
    kept = sorted(p.name for p in (inbox / "rejected").iterdir())
    copies = [name for name in kept if not name.endswith(".errors.txt")]
    assert len(copies) == 2 and all(name.endswith("-bad.csv") for name in copies)
    assert sorted((inbox / "rejected" / name).read_text() for name in copies) == sorted(
        [first, second]
    )
    reasons = [(inbox / "rejected" / (name + ".errors.txt")).read_text() for name in copies]
    assert any("unknown customer 'nobody'" in r for r in reasons)
    assert any("row 2: timestamp" in r for r in reasons)
    assert any(name in w for w in report.warnings for name in copies)
    assert events(store) == 0


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

    def remove(self, event_id: str) -> None:
        with self.connect() as connection:
            connection.execute("DELETE FROM events WHERE id = ?", (event_id,))

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
        ("s1", "solo", "units", "2026-01-04T10:00:00Z", "10"),
        ("s2", "solo", "units", "2026-01-06T10:00:00Z", "1"),
    )
    collect()
    source.add(
        ("s3", "duo", "units", "2026-01-08T10:00:00Z", "4"),
        ("s4", "solo", "units", "2026-01-09T10:00:00Z", "5"),
    )
    report = collect()
    # Read from a day before the watermark on (the lookback): s2 (on the watermark,
    # already loaded), s3, s4; s1, two days before it, is not read.
    assert (report.read, report.written, report.details["duplicates"]) == (3, 2, 1)
    assert report.details["sql_late_events"] == 0
    assert loaded_ids(store) == ["s1", "s2", "s3", "s4"]
    assert watermark(store) == "2026-01-09T10:00:00Z"
    assert store.scalar("SELECT count(*) FROM usage_loads WHERE source = 'sql'") == 2

    nothing = collect()
    assert (nothing.read, nothing.written) == (2, 0)  # the last day's rows: s3, s4
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


# --- the lookback: late rows --------------------------------------------------------------


def test_a_late_row_within_the_lookback_is_picked_up_and_counted(store, source):
    """Every collect reads the last day before the watermark again (the default lookback):
    a row that reaches the source late, with an earlier time, is loaded by the next
    collect, and the step's report counts it. A row later than that is not (the limit)."""
    source.add(
        ("s1", "solo", "units", "2026-01-05T10:00:00Z", "1"),
        ("s2", "solo", "units", "2026-01-07T10:00:00Z", "1"),
    )
    collect()
    assert watermark(store) == "2026-01-07T10:00:00Z"
    source.add(
        ("late", "duo", "units", "2026-01-06T12:00:00Z", "3"),  # 22 hours before it
        ("too-late", "duo", "units", "2026-01-05T12:00:00Z", "4"),  # 46 hours before it
        ("s3", "solo", "units", "2026-01-08T10:00:00Z", "1"),
    )
    report = collect()
    assert loaded_ids(store) == ["late", "s1", "s2", "s3"]
    # Read: late, s2 (already loaded) and s3; the late row is new and counted.
    assert (report.read, report.written, report.details["duplicates"]) == (3, 2, 1)
    assert report.details["sql_late_events"] == 1
    assert report.details["sql_lookback"] == "1 day"
    assert report.details["sql_read_from"] == "2026-01-06T10:00:00Z"
    assert watermark(store) == "2026-01-08T10:00:00Z"
    key = store.scalar("SELECT key FROM usage_loads WHERE source = 'sql' ORDER BY id DESC")
    assert key == (
        "watermark 2026-01-07T10:00:00Z -> 2026-01-08T10:00:00Z, read from 2026-01-06T10:00:00Z"
    )

    # Nothing late since: the window's rows are duplicates and none is counted late.
    again = collect()
    assert (again.written, again.details["sql_late_events"]) == (0, 0)


def test_late_rows_are_counted_when_every_row_read_is_new(store, source):
    """The late count holds on the store's fast path too (a batch of new events only)."""
    source.add(("s1", "solo", "units", "2026-01-05T10:00:00Z", "1"))
    collect()
    source.remove("s1")  # the source keeps no history
    source.add(
        ("late", "solo", "units", "2026-01-04T23:00:00Z", "1"),
        ("new", "solo", "units", "2026-01-06T10:00:00Z", "1"),
    )
    report = collect()
    assert (report.read, report.written, report.details["sql_late_events"]) == (2, 2, 1)


def test_the_lookback_is_the_sources_setting(store, source, monkeypatch):
    source.add(("s1", "solo", "units", "2026-01-07T10:00:00Z", "1"))
    collect()
    source.add(("late", "duo", "units", "2026-01-05T12:00:00Z", "4"))  # 46 hours late
    monkeypatch.setenv("BILLING_USAGE_SQL_LOOKBACK", "0")  # none: the bare watermark
    off = collect()
    assert (off.written, off.details["sql_late_events"]) == (0, 0)
    assert off.details["sql_lookback"] == "none"
    monkeypatch.setenv("BILLING_USAGE_SQL_LOOKBACK", "P3D")  # ISO 8601, or seconds
    wide = collect()
    assert (wide.written, wide.details["sql_late_events"]) == (1, 1)
    assert wide.details["sql_read_from"] == "2026-01-04T10:00:00Z"
    assert loaded_ids(store) == ["late", "s1"]


def test_a_late_bad_row_holds_the_watermark_back_until_fixed(store, source):
    """A bad row the lookback finds is reported like any other, and the watermark goes
    back to it, so it is read again at every collect, however far the source moves on."""
    source.add(("s1", "solo", "units", "2026-01-07T10:00:00Z", "1"))
    collect()
    source.add(
        ("late", "trio", "units", "2026-01-07T01:00:00Z", "1"),  # unknown customer
        ("s2", "solo", "units", "2026-01-20T10:00:00Z", "1"),
    )
    report = collect()
    assert "sql: row 2: customer: unknown customer 'trio'" in report.warnings
    assert loaded_ids(store) == ["s1", "s2"]
    assert watermark(store) == "2026-01-07T01:00:00Z"
    assert collect().details["sql_rejected"] == 1  # still read, still reported
    source.fix("late", cust="duo")
    fixed = collect()
    assert (fixed.written, fixed.warnings) == (1, [])
    assert loaded_ids(store) == ["late", "s1", "s2"]
    assert watermark(store) == "2026-01-20T10:00:00Z"


def test_the_lookback_keeps_the_watermarks_own_form():
    from billing_core.inputs.sql_source import earlier

    day = timedelta(days=1)
    assert earlier("2026-01-07T10:00:00Z", day) == "2026-01-06T10:00:00Z"
    assert earlier("2026-03-01 00:30:00+01:00", day) == "2026-02-28 00:30:00+01:00"
    assert earlier("2026-01-31T23:59:59.500000+00:00", day) == "2026-01-30T23:59:59.500000+00:00"
    assert earlier("2026-01-07T10:00:00.25Z", timedelta(hours=1)) == "2026-01-07T09:00:00.25Z"
    assert earlier("2026-01-07T10:00:00Z", timedelta(0)) == "2026-01-07T10:00:00Z"
    # A watermark that is no instant (set by hand) is bound as it is.
    assert earlier("2026-01-01", day) == "2026-01-01"
    assert earlier("last tuesday", day) == "last tuesday"
    # Never before the epoch the first read starts from.
    assert earlier("1970-01-01T10:00:00Z", day) == "1970-01-01T00:00:00+00:00"
    assert earlier("2026-01-07T10:00:00Z", timedelta.max) == "1970-01-01T00:00:00+00:00"


def test_the_sql_and_inbox_sources_are_collected_together(store, source, tmp_path, monkeypatch):
    folder = tmp_path / "inbox"
    folder.mkdir()
    monkeypatch.setenv("BILLING_USAGE_INBOX", str(folder))
    (folder / "jan.csv").write_text(GOOD)
    source.add(("s1", "solo", "units", "2026-01-05T10:00:00Z", "1"))
    report = collect()
    assert (report.read, report.written) == (3, 3)
    assert sorted(r[0] for r in store.rows("SELECT source FROM usage_loads")) == ["inbox", "sql"]


def test_a_dry_runs_collect_loads_into_its_session_and_keeps_nothing(
    store, source, tmp_path, monkeypatch
):
    from billing_core.store.engine import unit_of_work

    folder = tmp_path / "inbox"
    folder.mkdir()
    monkeypatch.setenv("BILLING_USAGE_INBOX", str(folder))
    (folder / "jan.csv").write_text(GOOD)
    (folder / "bad.csv").write_text(HEADER + "x1,nobody,units,2026-01-05T10:00:00Z,1\n")
    source.add(("s1", "solo", "units", "2026-01-05T10:00:00Z", "1"))
    files = sorted(p.name for p in folder.rglob("*"))
    with unit_of_work() as session:
        report = collect(session=session)
        seen = sorted(session.execute(sa.text("SELECT event_id FROM usage_events")).scalars())
        session.rollback()
    assert seen == ["i1", "i2", "s1"]  # the session has what the close would load
    assert (report.read, report.written, report.details["rejected_files"]) == (3, 3, 1)
    assert any("bad.csv would be refused" in w for w in report.warnings)
    # And nothing is kept: no event, no load, no watermark, every file where it was.
    assert events(store) == 0 and watermark(store) is None
    assert store.scalar("SELECT count(*) FROM usage_loads") == 0
    assert sorted(p.name for p in folder.rglob("*")) == files


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
