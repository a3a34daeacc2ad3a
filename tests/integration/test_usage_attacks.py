"""Usage refused at the door (SPEC §10): what the calendar or the store cannot hold is
refused row by row with one line naming the file, the row, the field and the reason; the
load writes nothing, and no input ever gets a traceback."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from billing_core.cli.app import app
from billing_core.store.engine import unit_of_work
from billing_core.store.usage_totals import Window, aggregate
from tests.helpers import close, import_yaml, lines, one

CATALOG = """
customers:
  - {id: solo, name: Solo, currency: USD}
  - {id: duo, name: Duo, currency: USD}
metrics:
  - {code: units, name: Units, aggregation: sum}
  - {code: peak, name: Peak, aggregation: max}
  - {code: level, name: Level, aggregation: latest}
  - {code: users, name: Users, aggregation: unique_count, field: user_id}
  - {code: gb, name: GB, aggregation: sum, field: gb}
prices:
  - {code: unit-price, product: Units, currency: USD, model: per_unit, metric: units,
     unit_price: "0.01"}
subscriptions:
  - {id: sub-solo, customer: solo, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: unit-price, timing: in_arrears}]}
"""

HEADER = "event_id,customer,metric,timestamp,quantity"
OK_ROW = "ok-{n},solo,units,2026-01-05T10:00:00Z,1"
SUMMARY = "invalid row(s) in {files} file(s); nothing was loaded"


@pytest.fixture
def catalog(store):
    import_yaml(CATALOG)
    return store


def ingest(*args: object) -> tuple[int, list[str]]:
    """`billing usage ingest ARGS`: its exit code and its stderr lines; never a traceback."""
    result = CliRunner().invoke(app, ["usage", "ingest", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"traceback: {result.exception!r}"
    )
    return result.exit_code, result.stderr.splitlines()


def refused(path: Path) -> list[str]:
    """The row lines of a refused load of one file (after checking the summary line)."""
    code, err = ingest(path)
    assert code == 1, err
    assert SUMMARY.format(files=1) in err[0], err
    return err[1:]


def unchanged(store) -> None:
    for table in ("usage_events", "usage_loads", "usage_touches"):
        assert store.scalar(f"SELECT count(*) FROM {table}") == 0, table


def write_csv(path: Path, *rows: str, encoding: str = "utf-8") -> Path:
    path.write_bytes("\n".join(rows).encode(encoding) + b"\n")
    return path


def event(n: int, **fields: object) -> dict:
    base = {
        "event_id": f"j-{n}",
        "customer": "solo",
        "metric": "units",
        "timestamp": "2026-01-05T10:00:00Z",
        "quantity": 1,
    }
    return {**base, **fields}


# --- 1. duplicate columns and keys ---------------------------------------------------------


def test_a_csv_header_naming_quantity_twice_is_refused(catalog, tmp_path):
    path = write_csv(
        tmp_path / "twice.csv",
        "event_id,customer,metric,timestamp,quantity,quantity",
        "d1,solo,units,2026-01-05T10:00:00Z,1,1000",
    )
    assert refused(path) == [f"{path}: row 1: quantity: the header names this column twice"]
    unchanged(catalog)


def test_a_csv_header_naming_customer_twice_is_refused(catalog, tmp_path):
    path = write_csv(
        tmp_path / "twice.csv",
        "event_id,customer,metric,timestamp,quantity,customer",
        "d1,solo,units,2026-01-05T10:00:00Z,1,duo",
    )
    assert refused(path) == [f"{path}: row 1: customer: the header names this column twice"]
    unchanged(catalog)


def test_a_csv_header_naming_a_property_twice_is_refused_even_with_skip_invalid(catalog, tmp_path):
    path = write_csv(
        tmp_path / "twice.csv",
        "event_id,customer,metric,timestamp,quantity,region, region",
        "d1,solo,units,2026-01-05T10:00:00Z,1,eu,us",
    )
    code, err = ingest(path, "--skip-invalid", tmp_path / "rejects.csv")
    assert code == 1
    assert err[1:] == [f"{path}: row 1: region: the header names this column twice"]
    unchanged(catalog)


def test_a_json_line_with_a_key_twice_is_refused(catalog, tmp_path):
    path = tmp_path / "twice.jsonl"
    path.write_text(
        '{"event_id": "j-1", "customer": "solo", "metric": "units", '
        '"timestamp": "2026-01-05T10:00:00Z", "quantity": 1, "quantity": 1000}\n'
        '{"event_id": "j-2", "customer": "solo", "customer": "duo", "metric": "units", '
        '"timestamp": "2026-01-05T10:00:00Z"}\n'
        '{"event_id": "j-3", "customer": "solo", "metric": "units", '
        '"timestamp": "2026-01-05T10:00:00Z", "properties": {"region": "eu", "region": "us"}}\n'
        '{"event_id": "j-4", "customer": "solo", "metric": "units", '
        '"timestamp": "2026-01-05T10:00:00Z", "properties": {"a": {"b": 1, "b": 2}}}\n'
        '{"event_id": "j-5", "customer": "solo", "metric": "units", "region": "eu", '
        '"timestamp": "2026-01-05T10:00:00Z", "properties": {"region": "us"}}\n'
        + json.dumps(event(6))
        + "\n"
    )
    assert refused(path) == [
        f"{path}: row 1: quantity: the line names this key twice",
        f"{path}: row 2: customer: the line names this key twice",
        f"{path}: row 3: properties.region: the line names this key twice",
        f"{path}: row 4: properties.a: the line names this key twice",
        f"{path}: row 5: properties.region: given both as a key of the line and in properties",
    ]
    unchanged(catalog)


# --- 2. sums past the 64-bit range ---------------------------------------------------------


def test_a_close_of_usage_summing_past_64_bits_bills_the_exact_amount(catalog, tmp_path):
    path = write_csv(
        tmp_path / "big.csv",
        HEADER,
        "b1,solo,units,2026-01-05T10:00:00Z,5000000000000",
        "b2,solo,units,2026-01-06T10:00:00Z,5000000000000",
        "b3,solo,units,2026-01-07T10:00:00Z,0.000001",
    )
    code, err = ingest(path)
    assert code == 0, err
    close("2026-02-01")
    [line] = lines(one(billed_customer="solo"), kind="usage")
    assert Decimal(line["quantity"]) == Decimal("10000000000000.000001")
    assert line["amount"] == "100000000000.00"


@pytest.mark.parametrize("every_customer", [False, True], ids=["joined", "grouped"])
def test_aggregates_of_the_largest_quantities_are_exact(catalog, tmp_path, every_customer):
    biggest = "9223372036854.775807"  # the most a quantity may be (millionths in 64 bits)
    rows = [HEADER + ",user_id,gb"]
    for i in range(3):
        rows.append(f"u{i},solo,units,2026-01-0{i + 1}T10:00:00Z,{biggest},,")
        rows.append(f"p{i},solo,peak,2026-01-0{i + 1}T10:00:00Z,{biggest},,")
        rows.append(f"l{i},solo,level,2026-01-0{i + 1}T10:00:00Z,{biggest},,")
        rows.append(f"g{i},solo,gb,2026-01-0{i + 1}T10:00:00Z,1,,{biggest}")
    rows.append("u9,duo,units,2026-01-09T10:00:00Z,2,,")
    code, err = ingest(write_csv(tmp_path / "max.csv", *rows))
    assert code == 0, err
    jan = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
    kinds = {"units": "sum", "peak": "max", "level": "latest", "gb": "sum"}
    specs = [("solo", m) for m in kinds] + [("duo", "units")]
    windows = [Window(i, c, m, *jan) for i, (c, m) in enumerate(specs)]
    with unit_of_work() as session:
        got = aggregate(session, windows, kinds, every_customer)
    assert [got[w.key] for w in windows] == [
        Decimal(biggest) * 3,
        Decimal(biggest),
        Decimal(biggest),
        Decimal(biggest) * 3,
        Decimal(2),
    ]


# --- 3. values the store or the calendar cannot hold ----------------------------------------


def test_quantities_the_store_cannot_hold_are_refused(catalog, tmp_path):
    rows = [
        "9223372036854.775807",  # the largest accepted
        "9223372036854.775808",
        "1e13",
        "10000000000000",
        "1000000000000000000000",
        "1e400",
        "NaN",
        "Infinity",
        "-Infinity",
        "0.0000001",
    ]
    path = write_csv(
        tmp_path / "q.csv",
        HEADER,
        *(f"q{i},solo,units,2026-01-05T10:00:00Z,{q}" for i, q in enumerate(rows)),
    )
    most = "(the store holds quantities up to 9,223,372,036,854.775807)"
    assert refused(path) == [
        f"{path}: row 3: quantity: too large: 9223372036854.775808 {most}",
        f"{path}: row 4: quantity: too large: 1e13 {most}",
        f"{path}: row 5: quantity: too large: 10000000000000 {most}",
        f"{path}: row 6: quantity: too large: 1000000000000000000000 {most}",
        f"{path}: row 7: quantity: too large: 1e400 {most}",
        f"{path}: row 8: quantity: not a finite number: 'NaN'",
        f"{path}: row 9: quantity: not a finite number: 'Infinity'",
        f"{path}: row 10: quantity: not a finite number: '-Infinity'",
        f"{path}: row 11: quantity: more than 6 decimal places: 0.0000001",
    ]
    unchanged(catalog)


def test_a_property_quantity_the_store_cannot_hold_is_refused(catalog, tmp_path):
    path = write_csv(
        tmp_path / "gb.csv",
        HEADER + ",gb",
        "g1,solo,gb,2026-01-05T10:00:00Z,1,1e13",
    )
    most = "(the store holds quantities up to 9,223,372,036,854.775807)"
    assert refused(path) == [f"{path}: row 2: properties.gb: too large: 1e13 {most}"]
    unchanged(catalog)


def test_json_numbers_python_cannot_read_or_that_are_not_finite_are_refused(catalog, tmp_path):
    digits = "7" * 5000
    path = tmp_path / "numbers.jsonl"
    path.write_text(
        '{"event_id": "n-1", "customer": "solo", "metric": "units", '
        f'"timestamp": "2026-01-05T10:00:00Z", "quantity": {digits}}}\n'
        '{"event_id": "n-2", "customer": "solo", "metric": "units", '
        f'"timestamp": "2026-01-05T10:00:00Z", "properties": {{"serial": {digits}}}}}\n'
        '{"event_id": "n-3", "customer": "solo", "metric": "units", '
        '"timestamp": "2026-01-05T10:00:00Z", "quantity": 1e400}\n'
        '{"event_id": "n-4", "customer": "solo", "metric": "units", '
        '"timestamp": "2026-01-05T10:00:00Z", "quantity": NaN}\n'
        '{"event_id": "n-5", "customer": "solo", "metric": "units", '
        '"timestamp": "2026-01-05T10:00:00Z", "properties": {"ratio": -Infinity}}\n'
        + json.dumps(event(6))
        + "\n"
    )
    most = "(the store holds quantities up to 9,223,372,036,854.775807)"
    assert refused(path) == [
        f"{path}: row 1: quantity: too large: {digits[:20]}… (5,000 characters) {most}",
        f"{path}: row 2: properties.serial: a number of 5,000 digits (at most 4,300 are read)",
        f"{path}: row 3: quantity: too large: 1E+400 {most}",
        f"{path}: row 4: quantity: not a finite number: 'NaN'",
        f"{path}: row 5: properties.ratio: not a finite number: '-Infinity'",
    ]
    unchanged(catalog)


def test_timestamps_outside_the_calendar_are_refused(catalog, tmp_path):
    stamps = [
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "1899-12-31T23:59:59Z",
        "1900-01-01T00:30:00+01:00",
        "2200-01-01T00:00:00Z",
        "2199-12-31T23:30:00-01:00",
        "1900-01-01T00:00:00Z",  # the first instant accepted
        "2199-12-31T23:59:59.999999Z",  # the last
    ]
    path = write_csv(
        tmp_path / "t.csv",
        HEADER,
        *(f"t{i},solo,units,{t},1" for i, t in enumerate(stamps)),
    )
    assert refused(path) == [
        f"{path}: row {i + 2}: timestamp: outside 1900-01-01..2199-12-31 UTC: {t!r}"
        for i, t in enumerate(stamps[:6])
    ]
    unchanged(catalog)
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(json.dumps(event(1, timestamp="0001-01-01T00:00:00+01:00")) + "\n")
    assert refused(jsonl) == [
        f"{jsonl}: row 1: timestamp: outside 1900-01-01..2199-12-31 UTC: "
        "'0001-01-01T00:00:00+01:00'"
    ]


def test_invalid_utf8_in_a_csv_names_the_row_and_field(catalog, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        (HEADER + ",region\n").encode()
        + b"r1,solo,units,2026-01-05T10:00:00Z,1,eu\n"
        + b"r\xe92,solo,units,2026-01-05T10:00:00Z,1,eu\n"
        + b"r3,solo,units,2026-01-05T10:00:00Z,1,Z\xfcrich\n"
        + "r4,solo,units,2026-01-05T10:00:00Z,1,Zürich\n".encode()
    )
    assert refused(path) == [
        f"{path}: row 3: event_id: not UTF-8 text",
        f"{path}: row 4: region: not UTF-8 text",
    ]
    unchanged(catalog)


def test_invalid_utf8_in_a_csv_header_is_refused(catalog, tmp_path):
    path = tmp_path / "header.csv"
    path.write_bytes(
        (HEADER + ",r\xe9gion\n").encode("latin-1") + b"r1,solo,units,2026-01-05T10:00:00Z,1,eu\n"
    )
    assert refused(path) == [f"{path}: row 1: column 6: not UTF-8 text"]
    unchanged(catalog)


def test_invalid_utf8_in_json_lines_names_the_row_and_field(catalog, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        json.dumps(event(1)).encode()
        + b"\n"
        + json.dumps(event(2, region="Z\xfcrich"), ensure_ascii=False).encode("latin-1")
        + b"\n"
        + b'{"event_id": "j-3", \xff}\n'
        + json.dumps(event(4, properties={"city": "Zürich"}), ensure_ascii=False).encode()
        + b"\n"
        + json.dumps(event(5, event_id="j-\ud800")).encode()
        + b"\n"
    )
    assert refused(path) == [
        f"{path}: row 2: region: not UTF-8 text",
        f"{path}: row 3: row: not UTF-8 text",
        f"{path}: row 5: event_id: not UTF-8 text",
    ]
    unchanged(catalog)


def test_a_50_mb_csv_field_is_refused_with_its_row_and_field(catalog, tmp_path):
    path = tmp_path / "huge.csv"
    with path.open("w") as handle:
        handle.write(HEADER + ",note\n")
        handle.write(OK_ROW.format(n=1) + ",short\n")
        handle.write(OK_ROW.format(n=2) + "," + "x" * (50 * 2**20) + "\n")
        handle.write(OK_ROW.format(n=3) + ",short\n")
    assert refused(path) == [f"{path}: row 3: note: longer than 64 KiB (52,428,800 bytes)"]
    unchanged(catalog)


def test_the_field_limit_counts_utf8_bytes(catalog, tmp_path):
    limit = 64 * 1024
    path = write_csv(
        tmp_path / "limit.csv",
        HEADER + ",note",
        OK_ROW.format(n=1) + "," + "x" * limit,  # exactly 64 KiB: accepted
        OK_ROW.format(n=2) + "," + "x" * (limit + 1),
        OK_ROW.format(n=3) + "," + "é" * (limit // 2),  # 64 KiB of UTF-8: accepted
        OK_ROW.format(n=4) + "," + "é" * (limit // 2 + 1),
    )
    assert refused(path) == [
        f"{path}: row 3: note: longer than 64 KiB (65,537 bytes)",
        f"{path}: row 5: note: longer than 64 KiB (65,538 bytes)",
    ]
    unchanged(catalog)


def test_a_long_quoted_field_over_several_lines_hides_no_rows(catalog, tmp_path):
    """The rows inside a long quoted field are part of it, not events (a plain ASCII file
    read on the fast path until the long field)."""
    inside = ("y" * 30_000 + "\n" + OK_ROW.format(n=9) + ",\n") * 3
    path = write_csv(
        tmp_path / "quoted.csv",
        HEADER + ",note",
        OK_ROW.format(n=1) + "," + "x" * 64 * 1024,
        OK_ROW.format(n=2) + ',"' + inside + '"',
        OK_ROW.format(n=3) + ",short",
    )
    rejects = tmp_path / "rejects.csv"
    code, err = ingest(path, "--skip-invalid", rejects)
    assert code == 0, err
    with rejects.open(newline="", encoding="utf-8") as handle:
        reasons = [(r["row"], r["field"], r["reason"]) for r in csv.DictReader(handle)]
    assert reasons == [("9", "note", f"longer than 64 KiB ({len(inside):,} bytes)")]
    loaded = [r[0] for r in catalog.rows("SELECT event_id FROM usage_events ORDER BY event_id")]
    assert loaded == ["ok-1", "ok-3"]


def test_nesting_deeper_than_32_levels_is_refused(catalog, tmp_path):
    def nested(depth: int) -> str:
        """A line whose innermost value sits `depth` containers deep (the line is one)."""
        inner = "[" * (depth - 3) + "1" + "]" * (depth - 3)
        return json.dumps(event(depth, properties={"x": {"y": 0}})).replace("0}}", inner + "}}")

    path = tmp_path / "deep.jsonl"
    path.write_text(
        "\n".join([nested(32), nested(33), nested(100_000), json.dumps(event(4))]) + "\n"
    )
    assert refused(path) == [
        f"{path}: row 2: properties.x: nested deeper than 32 levels",
        f"{path}: row 3: properties.x: nested deeper than 32 levels",
    ]
    unchanged(catalog)


def test_nul_characters_are_refused_in_every_text_field(catalog, tmp_path):
    path = write_csv(
        tmp_path / "nul.csv",
        HEADER + ",region",
        "n\x001,solo,units,2026-01-05T10:00:00Z,1,eu",
        "n2,solo,units,2026-01-05T10:00:00Z,1,e\x00u",
        "n3,solo,units,2026-01-05T10:00:00Z,1,eu",
    )
    assert refused(path) == [
        f"{path}: row 2: event_id: contains a NUL character",
        f"{path}: row 3: region: contains a NUL character",
    ]
    jsonl = tmp_path / "nul.jsonl"
    jsonl.write_text(
        json.dumps(event(1, event_id="j\x001"))
        + "\n"
        + json.dumps(event(2, properties={"k\x00": "v"}))
        + "\n"
        + json.dumps(event(3, properties={"k": ["a", {"b": "\x00"}]}))
        + "\n"
        + json.dumps(event(4))
        + "\n"
    )
    assert refused(jsonl) == [
        f"{jsonl}: row 1: event_id: contains a NUL character",
        f"{jsonl}: row 2: properties.'k\\x00': contains a NUL character",
        f"{jsonl}: row 3: properties.k: contains a NUL character",
    ]
    unchanged(catalog)


def test_an_event_id_longer_than_the_store_holds_is_refused(catalog, tmp_path):
    path = write_csv(
        tmp_path / "long.csv",
        HEADER,
        f"{'a' * 256},solo,units,2026-01-05T10:00:00Z,1",
        f"{'b' * 257},solo,units,2026-01-05T10:00:00Z,1",
    )
    assert refused(path) == [f"{path}: row 3: event_id: longer than 256 characters"]
    unchanged(catalog)


def test_every_problem_of_a_file_is_reported_in_one_run_and_skip_invalid_loads_the_rest(
    catalog, tmp_path
):
    path = tmp_path / "mixed.csv"
    path.write_bytes(
        (HEADER + ",note\n").encode()
        + b"m1,solo,units,2026-01-05T10:00:00Z,1,\n"
        + b"m\x002,solo,units,2026-01-05T10:00:00Z,1,\n"
        + b"m3,solo,units,2026-01-05T10:00:00Z,1,\xff\n"
        + b"m4,solo,units,2026-01-05T10:00:00Z,1e400,\n"
        + b"m5,solo,units,0001-01-01T00:00:00+01:00,1,\n"
        + b"m6,solo,units,2026-01-05T10:00:00Z,1,"
        + b"z" * 100_000
        + b"\n"
        + b"m7,solo,units,2026-01-05T10:00:00Z,2,\n"
    )
    assert [line.split(": ")[1:3] for line in refused(path)] == [
        ["row 3", "event_id"],
        ["row 4", "note"],
        ["row 5", "quantity"],
        ["row 6", "timestamp"],
        ["row 7", "note"],
    ]
    unchanged(catalog)
    rejects = tmp_path / "rejects.csv"
    code, err = ingest(path, "--skip-invalid", rejects)
    assert code == 0, err
    with rejects.open(newline="", encoding="utf-8") as handle:
        assert [r["row"] for r in csv.DictReader(handle)] == ["3", "4", "5", "6", "7"]
    assert catalog.scalar("SELECT sum(value) FROM usage_events") == 3 * 10**6


# --- 3. a store that is not there ------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["usage", "ingest", "usage.csv"],
        ["close", "--through", "2026-02-01"],
        ["invoices", "list"],
        ["import", "catalog.yaml"],
        ["db", "upgrade"],
    ],
)
def test_a_postgresql_url_naming_a_missing_database_is_one_line(command, monkeypatch, tmp_path):
    from tests.conftest import need_postgres, postgres_admin_url

    need_postgres()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "usage.csv").write_text(HEADER + "\n")
    (tmp_path / "catalog.yaml").write_text("customers: []\n")
    server = postgres_admin_url().rsplit("/", 1)[0].replace("postgres@", "postgres:s3cret@")
    monkeypatch.setenv("BILLING_DATABASE_URL", f"{server}/billing_no_such_store")
    result = CliRunner().invoke(app, command)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"traceback: {result.exception!r}"
    )
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(
        "the store at postgresql+psycopg://postgres:***@localhost:5432/billing_no_such_store "
        "does not exist or cannot be reached"
    ), line
    assert 'database "billing_no_such_store" does not exist' in line
    assert "s3cret" not in result.output + result.stderr


def test_an_unreachable_postgresql_server_is_one_line(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(
        "BILLING_DATABASE_URL", "postgresql+psycopg://billing:hunter2@127.0.0.1:1/billing"
    )
    result = CliRunner().invoke(app, ["invoices", "list"])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(
        "the store at postgresql+psycopg://billing:***@127.0.0.1:1/billing does not exist "
        "or cannot be reached"
    ), line
    assert "hunter2" not in result.stderr


def test_a_rejects_file_that_cannot_be_written_is_one_line(catalog, tmp_path):
    path = write_csv(tmp_path / "ok.csv", HEADER, OK_ROW.format(n=1))
    code, err = ingest(path, "--skip-invalid", tmp_path / "missing" / "rejects.csv")
    assert code == 1
    assert err == [
        f"{tmp_path / 'missing' / 'rejects.csv'}: the rejects file cannot be written "
        "(No such file or directory)"
    ]
    unchanged(catalog)


# --- the SQL source shares the door ----------------------------------------------------------


def test_sql_source_rows_the_store_cannot_hold_are_skipped_and_named(
    catalog, tmp_path, monkeypatch
):
    import sqlite3

    from billing_core.steps.collect import collect

    path = tmp_path / "source.db"
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE events (id TEXT, cust TEXT, metric TEXT, ts TEXT, qty TEXT, props TEXT)"
        )
        connection.executemany(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
            [
                ("s\x001", "solo", "units", "2026-01-05T10:00:00Z", "1", None),
                ("s2", "solo", "units", "2026-01-05T11:00:00Z", "1", '{"a": ' + "[" * 5000),
                ("s3", "solo", "units", "2026-01-05T12:00:00Z", "1", '{"r": NaN}'),
                ("s4", "solo", "units", "2026-01-05T13:00:00Z", "1", '{"r": "x\\u0000"}'),
                ("s5", "solo", "units", "2026-01-05T14:00:00Z", "1e13", None),
                ("s6", "solo", "units", "9999-12-31T23:59:59-01:00", "1", None),
                ("s7", "solo", "units", "2026-01-05T15:00:00Z", "2", '{"r": "eu"}'),
            ],
        )
    monkeypatch.setenv("BILLING_USAGE_SQL_URL", f"sqlite:///{path}")
    monkeypatch.setenv(
        "BILLING_USAGE_SQL_QUERY",
        "SELECT id AS event_id, cust AS customer, metric, ts AS timestamp, qty AS quantity, "
        "props AS properties FROM events WHERE ts >= :watermark",
    )
    report = collect()
    assert (report.read, report.written, report.details["sql_rejected"]) == (7, 1, 6)
    assert [w.split(": ")[:3] for w in report.warnings[:6]] == [
        ["sql", "row 1", "event_id"],
        ["sql", "row 2", "properties.a"],
        ["sql", "row 3", "properties.r"],
        ["sql", "row 4", "properties.r"],
        ["sql", "row 5", "quantity"],
        ["sql", "row 6", "timestamp"],
    ]
    assert [r[0] for r in catalog.rows("SELECT event_id FROM usage_events")] == ["s7"]


@pytest.mark.parametrize("url", ["nonsense", "mysql://billing:hunter2@db/billing"])
@pytest.mark.parametrize("command", [["invoices", "list"], ["db", "upgrade"]])
def test_a_url_that_names_no_store_this_product_opens_is_one_line(
    url, command, monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BILLING_DATABASE_URL", url)
    result = CliRunner().invoke(app, command)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("BILLING_DATABASE_URL is not a store URL this product can open ("), line
    assert "hunter2" not in line


# --- what held before the door holds still --------------------------------------------------


def test_an_ingest_killed_mid_load_leaves_nothing_and_a_rerun_counts_each_event_once(
    catalog, tmp_path
):
    import os
    import signal
    import subprocess
    import sys
    import time

    count = 100_000
    path = tmp_path / "many.csv"
    with path.open("w") as handle:
        handle.write(HEADER + ",region\n")
        for i in range(count):
            handle.write(f"k{i:07d},solo,units,2026-01-{1 + i % 28:02d}T10:00:00Z,{i % 7},eu\n")
    billing = str(Path(sys.executable).parent / "billing")
    env = {**os.environ, "BILLING_DATABASE_URL": catalog.url}
    process = subprocess.Popen(
        [billing, "usage", "ingest", str(path)], env=env, stderr=subprocess.PIPE
    )
    wal = Path(catalog.url.removeprefix("sqlite:///") + "-wal")
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        # Mid-load: events already sent to the store, not yet committed.
        if catalog.backend == "postgres":
            writing = catalog.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE 'COPY usage_%'"
            )
        else:
            writing = wal.exists() and wal.stat().st_size > 4 * 2**20
        if writing:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the load ended before it could be killed"
    unchanged(catalog)

    code, err = ingest(path)
    assert code == 0, err
    code, err = ingest(path)
    assert code == 0, err
    assert catalog.scalar("SELECT count(*) FROM usage_events") == count
    assert catalog.scalar("SELECT count(DISTINCT event_id) FROM usage_events") == count
    assert catalog.rows("SELECT events_loaded, duplicates FROM usage_loads ORDER BY loaded_at") == [
        (count, 0),
        (0, count),
    ]


def test_an_unclosed_quote_refuses_its_file_even_with_skip_invalid(catalog, tmp_path, monkeypatch):
    """Past the careful reading's own limit (lowered here) the rest of the file cannot be
    told apart from the quoted field: none of it is loaded, whatever it looks like."""
    import billing_core.inputs.usage_csv

    monkeypatch.setattr(billing_core.inputs.usage_csv, "CAREFUL_FIELD_LIMIT", 200 * 1024)
    path = write_csv(
        tmp_path / "unclosed.csv",
        HEADER + ",note",
        OK_ROW.format(n=1) + ",fine",
        OK_ROW.format(n=2) + ',"never closed',
        *(OK_ROW.format(n=100 + i) + "," + "z" * 1000 for i in range(300)),
    )
    code, err = ingest(path, "--skip-invalid", tmp_path / "rejects.csv")
    assert code == 1
    assert "cannot be read is refused even with --skip-invalid" in err[0]
    [line] = err[1:]
    assert line.startswith(f"{path}: row ") and ": row: not readable as CSV (field larger" in line
    unchanged(catalog)


@pytest.mark.parametrize("batches", [True, False], ids=["blocks", "rows"])
@pytest.mark.parametrize(
    "tail, field",
    [
        # The quote opened in row 3's note runs on over rows 4 and 5 to the file's end:
        # read as written, those two events would vanish into a note.
        (
            [
                'ok-2,solo,units,2026-01-05T10:00:00Z,1,"opened',
                *[OK_ROW.format(n=n) + ",x" for n in (3, 4)],
            ],
            "note",
        ),
        # A file cut off inside its last quoted field.
        (['ok-2,solo,units,2026-01-05T10:00:00Z,"1'], "quantity"),
    ],
    ids=["swallows-rows", "cut-off"],
)
def test_a_quote_left_open_at_the_end_of_the_file_refuses_it(
    catalog, tmp_path, monkeypatch, batches, tail, field
):
    """A quoted field still open when the file ends: where its row was meant to end cannot
    be told, so the file is refused whole, even with --skip-invalid, naming the row where
    the record starts and the field left open (nothing is loaded, no event is lost in a
    note)."""
    from billing_core.inputs import usage

    monkeypatch.setattr(usage, "BATCHES", batches)
    path = write_csv(tmp_path / "open.csv", HEADER + ",note", OK_ROW.format(n=1) + ",fine", *tail)
    for extra in ([], ["--skip-invalid", tmp_path / "rejects.csv"]):
        code, err = ingest(path, *extra)
        assert code == 1, err
        assert "cannot be read is refused even with --skip-invalid" in err[0]
        assert err[1:] == [
            f"{path}: row 3: {field}: a quoted field is still open at the end of the file "
            "(its closing quote is missing); the file is not read"
        ]
        unchanged(catalog)


@pytest.mark.parametrize(
    "encoding, named", [("utf-16", "UTF-16"), ("utf-16-be", "UTF-16"), ("utf-32", "UTF-32")]
)
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_file_in_another_unicode_encoding_is_refused_in_one_line(
    catalog, tmp_path, encoding, named, suffix
):
    """A spreadsheet's "Unicode text" is UTF-16: read as UTF-8 every other byte is a NUL,
    and each cell was refused for it, one line each. The file is refused in one line that
    says what it is, even with --skip-invalid, and nothing is loaded."""
    if suffix == ".csv":
        text = HEADER + "\n" + OK_ROW.format(n=1) + "\n"
    else:
        text = json.dumps(event(1)) + "\n"
    path = tmp_path / f"unicode{suffix}"
    bom = "\ufeff" if encoding == "utf-16-be" else ""  # the others' codec writes its own
    path.write_bytes((bom + text).encode(encoding))
    for extra in ([], ["--skip-invalid", tmp_path / "rejects.csv"]):
        code, err = ingest(path, *extra)
        assert code == 1
        assert err == [
            f"{path}: encoded as {named} (it starts with its byte order mark), not UTF-8; "
            "save it as UTF-8 (in a spreadsheet: CSV UTF-8)"
        ]
    unchanged(catalog)


def test_a_folder_named_as_a_usage_file_is_refused_in_one_line(catalog, tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    code, err = ingest(folder)
    assert code == 1
    assert err == [f"{folder}: is a folder; name the usage files in it"]
    unchanged(catalog)
