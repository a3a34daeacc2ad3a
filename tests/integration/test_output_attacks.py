"""Attacks on what the product writes, on each store: documents on a disk that refuses
them, spreadsheet formulas in CSV cells, ids that try to leave the output folder, and
passwords in database URLs."""

from __future__ import annotations

import csv
import errno
import io
import os
import pathlib
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

import flows.period_close  # noqa: F401 - Prefect's logging set up before CliRunner swaps streams
from billing_core.cli.app import app
from billing_core.invoices import documents
from billing_core.store import files as outputs
from tests.helpers import close, import_yaml, invoices

# Two billed customers, each with an invoice on 1 January and on 1 February (four
# invoices; issued ones get HTML and PDF, drafts an HTML preview).
TWO_CUSTOMERS = """
customers:
  - {id: acme, name: Acme, currency: USD}
  - {id: zenith, name: Zenith, currency: USD}
prices:
  - {code: platform, product: Platform, currency: USD, model: flat, amount: "100.00"}
subscriptions:
  - {id: sub-acme, customer: acme, start: 2026-01-01, billing_day: 1,
     items: [{price: platform, timing: in_advance}]}
  - {id: sub-zenith, customer: zenith, start: 2026-01-01, billing_day: 1,
     items: [{price: platform, timing: in_advance}]}
"""


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def documents_on_record(store) -> list[tuple]:
    return store.rows(
        "SELECT i.number, i.id, d.format, d.path, d.final FROM invoice_documents d "
        "JOIN invoices i ON i.id = d.invoice_id ORDER BY i.id, d.format"
    )


def assert_consistent(store) -> None:
    """Every document row points at a file that is there."""
    for number, invoice_id, fmt, path, _ in documents_on_record(store):
        assert Path(path).is_file(), f"{number or invoice_id} {fmt}: {path} is on record"


def assert_no_stray_files(store, folder: Path) -> None:
    """The files in the documents folder are the documents on record: nothing cut short
    is left behind."""
    on_disk = {str(p.resolve()) for p in folder.rglob("*") if p.is_file()}
    assert on_disk == {path for *_, path, _ in documents_on_record(store)}


def issued_numbers(store) -> list[str]:
    return [
        r[0]
        for r in store.rows("SELECT number FROM invoices WHERE status = 'issued' ORDER BY number")
    ]


def final_documents(store) -> set[tuple[str, str]]:
    return {(number, fmt) for number, _, fmt, path, final in documents_on_record(store) if final}


# --- ways a disk refuses documents ------------------------------------------------------


class Disk:
    """Makes the documents folder refuse writes, as root too (chmod stops nobody there)."""

    def __init__(self, monkeypatch, tmp_path: Path):
        self.monkeypatch = monkeypatch
        self.folder = Path(os.environ["BILLING_OUTPUT_DIR"])
        self.tmp_path = tmp_path
        self.writes = 0

    def not_a_directory(self) -> str:
        """The output folder under a regular file: every mkdir fails (ENOTDIR)."""
        blocker = self.tmp_path / "blocker"
        blocker.write_text("not a folder")
        self.monkeypatch.setenv("BILLING_OUTPUT_DIR", str(blocker / "documents"))
        return "Not a directory"

    def read_only(self) -> str:
        """A read-only file system: no file written, none removed."""
        folder = str(self.folder)

        def refuse(path, content, replace=True):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

        unlink = pathlib.Path.unlink

        def no_unlink(path, missing_ok=False):
            if str(path).startswith(folder):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return unlink(path, missing_ok=missing_ok)

        self.monkeypatch.setattr(outputs, "write_file", refuse)
        self.monkeypatch.setattr(pathlib.Path, "unlink", no_unlink)
        return os.strerror(errno.EROFS)

    def full_after(self, count: int, failures: int = 1) -> str:
        """The disk fills after `count` documents: the next `failures` documents are cut
        short (ENOSPC, part of the file written) and the ones after them are written
        again (space freed by someone else)."""
        folder = str(self.folder)
        write_bytes = pathlib.Path.write_bytes

        def writer(path, content):
            if str(path).startswith(folder):
                self.writes += 1
                if count < self.writes <= count + failures:
                    write_bytes(path, content[:10])
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return write_bytes(path, content)

        self.monkeypatch.setattr(pathlib.Path, "write_bytes", writer)
        return os.strerror(errno.ENOSPC)

    def writable(self) -> None:
        self.monkeypatch.undo()
        os.environ["BILLING_OUTPUT_DIR"] = str(self.folder)


@pytest.fixture
def disk(store, monkeypatch, tmp_path):
    monkeypatch.setenv("BILLING_DOCUMENT_FORMATS", "html,pdf")
    undo = pytest.MonkeyPatch()
    yield Disk(undo, tmp_path)
    undo.undo()


def reasons(line: str, reason: str) -> int:
    return line.count(reason)


@pytest.mark.parametrize("refusal", ["not_a_directory", "read_only", "full_midway"])
def test_a_close_that_cannot_write_documents_issues_names_them_and_the_next_writes_them(
    store, prefect_server, disk, refusal
):
    import_yaml(TWO_CUSTOMERS)
    done = run("close", "--through", "2026-02-01")  # drafts with their previews
    assert done.exit_code == 0, done.output
    previews = documents_on_record(store)
    assert len(previews) == 4 and not any(final for *_, final in previews)

    reason = (
        disk.full_after(1, failures=2) if refusal == "full_midway" else getattr(disk, refusal)()
    )
    done = run("close", "--through", "2026-02-01", "--issue")

    # The database work is done: every draft is issued.
    numbers = issued_numbers(store)
    assert numbers == [f"INV-2026-00000{n}" for n in (1, 2, 3, 4)]
    assert done.exit_code == 1, done.output
    assert "Traceback" not in done.output and "InvalidRequestError" not in done.output
    last = done.stderr.strip().splitlines()[-1]
    # One line: the invoices issued, the documents missing, the reason once, what next.
    assert last.startswith("documents not written:"), last
    for number in numbers:
        assert number in last
    assert reasons(last, reason) == 1, last
    assert "the next close writes them" in last
    missing = sorted(set(re.findall(r"(INV-2026-\d+) \(([a-z, ]+)\)", last)))
    written = final_documents(store)
    expected = {(n, f) for n in numbers for f in ("html", "pdf")}
    if refusal == "full_midway":  # the first written, the next two refused, the others written
        assert len(written) == 6
        assert_no_stray_files(store, disk.folder)
    else:
        assert written == set()
    assert {(n, f) for n, fmts in missing for f in fmts.split(", ")} == expected - written
    assert_consistent(store)
    status = store.scalar("SELECT status FROM close_runs ORDER BY id DESC LIMIT 1")
    assert status == "failed"
    recorded = store.scalar("SELECT steps FROM close_runs ORDER BY id DESC LIMIT 1")
    assert "documents_missing" in str(recorded)

    disk.writable()
    done = run("close", "--through", "2026-02-01")
    assert done.exit_code == 0, done.output
    assert final_documents(store) == expected
    assert_consistent(store)
    assert issued_numbers(store) == numbers  # nothing issued twice, no number skipped


def test_the_render_step_reports_each_missing_document_and_writes_the_others(store, disk):
    import_yaml(TWO_CUSTOMERS)
    close("2026-02-01")
    disk.full_after(2)  # the third document of eight fails, the others are written
    reports = close("2026-02-01", issue=True)
    render = reports[-1]
    missing = render.details["documents_missing"]
    assert len(missing) == 1
    assert set(missing[0]) == {"invoice", "format", "reason"}
    assert missing[0]["invoice"] in issued_numbers(store)
    assert missing[0]["reason"].startswith("No space left on device: " + str(disk.folder))
    assert render.written == 7
    assert len(render.warnings) == 1 and missing[0]["invoice"] in render.warnings[0]
    assert_consistent(store)
    assert_no_stray_files(store, disk.folder)
    disk.writable()
    assert close("2026-02-01")[-1].details.get("documents_missing", []) == []
    assert len(final_documents(store)) == 8


def test_a_failed_rewrite_keeps_the_last_good_preview(store, disk):
    import_yaml(TWO_CUSTOMERS)
    close("2026-02-01")
    before = {path: Path(path).read_bytes() for _, _, _, path, _ in documents_on_record(store)}
    # The same drafts, shown with new names: their previews are written again.
    import_yaml(TWO_CUSTOMERS.replace("name: Acme", "name: Acme Renamed"))
    disk.full_after(0, failures=100)
    render = close("2026-02-01")[-1]
    assert len(render.details["documents_missing"]) == 2
    after = {path: Path(path).read_bytes() for _, _, _, path, _ in documents_on_record(store)}
    assert after == before  # whole files: the old previews, not truncated new ones
    assert not [p for p in disk.folder.rglob("*") if p.name.startswith(".")]
    disk.writable()
    assert close("2026-02-01")[-1].written == 2
    shown = [Path(p).read_text() for _, _, _, p, _ in documents_on_record(store)]
    assert len([text for text in shown if "Acme Renamed" in text]) == 2


def test_an_import_keeps_its_result_when_previews_cannot_be_written(store, disk):
    import_yaml(TWO_CUSTOMERS)
    close("2026-02-01")
    reason = disk.not_a_directory()
    catalog = Path("changed.yaml")
    catalog.write_text(TWO_CUSTOMERS.replace('"100.00"', '"120.00"'))
    done = run("import", str(catalog))
    assert done.exit_code == 0, done.output
    assert "Traceback" not in done.output
    warning = [line for line in done.stderr.splitlines() if "previews" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: ")
    assert reason in warning[0] and "the next close writes them" in warning[0]
    assert {i["total"] for i in invoices()} == {"120.00"}  # the import and the rebuild hold
    assert store.scalar("SELECT count(*) FROM invoice_documents") == 0
    disk.writable()
    close("2026-02-01")
    assert store.scalar("SELECT count(*) FROM invoice_documents") == 4
    assert_consistent(store)


def test_issuing_from_the_invoices_command_names_the_missing_documents(store, disk):
    import_yaml(TWO_CUSTOMERS)
    close("2026-02-01")
    reason = disk.read_only()
    done = run("invoices", "issue", "--through", "2026-01-31")
    assert done.exit_code == 1, done.output
    assert "Traceback" not in done.output
    last = done.stderr.strip().splitlines()[-1]
    assert issued_numbers(store) == ["INV-2026-000001", "INV-2026-000002"]
    assert "INV-2026-000001 (html, pdf)" in last and "INV-2026-000002 (html, pdf)" in last
    assert reasons(last, reason) == 1
    assert_consistent(store)


def test_a_backfill_and_the_render_flow_end_failed_naming_the_missing_documents(
    store, prefect_server, disk
):
    from flows.render_documents import render_documents

    import_yaml(TWO_CUSTOMERS)
    reason = disk.not_a_directory()
    done = run("backfill", "--from", "2026-01-01", "--to", "2026-02-01", "--issue")
    assert done.exit_code == 1, done.output
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("documents not written:") and reasons(last, reason) == 1
    numbers = issued_numbers(store)
    assert len(numbers) == 4 and all(f"{n} (html, pdf)" in last for n in numbers)
    assert store.scalar("SELECT count(*) FROM invoice_documents") == 0
    state = render_documents(through=date(2026, 2, 1), return_state=True)
    assert state.is_failed() and state.message.startswith("documents not written:")
    disk.writable()
    state = render_documents(through=date(2026, 2, 1), return_state=True)
    assert state.is_completed()
    assert len(final_documents(store)) == 8
    assert_consistent(store)


def test_a_copy_or_an_export_that_cannot_be_written_is_one_line(store, disk):
    import_yaml(TWO_CUSTOMERS)
    close("2026-02-01")
    disk.not_a_directory()
    target = Path(os.environ["BILLING_OUTPUT_DIR"])
    for args in (
        ("invoices", "show", "1", "--output", str(target / "copy.pdf")),
        ("invoices", "export", "--format", "csv", "--output", str(target / "out.csv")),
    ):
        done = run(*args)
        assert done.exit_code == 1, done.output
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"{args[-1]}: not written (Not a directory: {target}")


# --- spreadsheet formulas in CSV cells ------------------------------------------------------

# Every prefix a spreadsheet reads as a formula, in ids and free text the export echoes.
FORMULAS = {
    "customer": "=1+1",
    "child": "@SUM(A1:A2)",
    "subscription": "+cmd|' /C calc'!A0",
    "price": "-2+3",
    "tab": "\tTabbed product",
    "return": "\rReturned product",
}

FORMULA_CATALOG = {
    "customers": [
        {"id": FORMULAS["customer"], "name": "Formula Inc", "currency": "USD"},
        {
            "id": FORMULAS["child"],
            "name": "Child",
            "currency": "USD",
            "parent": FORMULAS["customer"],
        },
    ],
    "prices": [
        {
            "code": FORMULAS["price"],
            "product": '=HYPERLINK("http://x.example")',
            "currency": "USD",
            "model": "flat",
            "amount": "100.00",
        },
        {
            "code": "tabbed",
            "product": FORMULAS["tab"],
            "currency": "USD",
            "model": "flat",
            "amount": "20.00",
        },
        {
            "code": "returned",
            "product": FORMULAS["return"],
            "currency": "USD",
            "model": "flat",
            "amount": "30.00",
        },
    ],
    "subscriptions": [
        {
            "id": FORMULAS["subscription"],
            "customer": FORMULAS["customer"],
            "start": "2026-01-01",
            "billing_day": 1,
            "items": [
                {"price": FORMULAS["price"], "timing": "in_advance"},
                {"price": "tabbed", "timing": "in_advance"},
            ],
            "discounts": [{"type": "fixed", "amount": "10.00"}],
        },
        {
            "id": "@child-sub",
            "customer": FORMULAS["child"],
            "start": "2026-01-01",
            "billing_day": 1,
            "items": [{"price": "returned", "timing": "in_advance"}],
        },
    ],
    "credits": [
        {
            "id": "+grant",
            "customer": FORMULAS["customer"],
            "amount": "5.00",
            "currency": "USD",
            "effective": "2026-01-01",
        },
    ],
}

DANGEROUS = ("=", "+", "-", "@", "\t", "\r")


def assert_no_formula(rows: list[list[str]]) -> None:
    """No cell starts like a formula, except plain decimal numbers."""
    for row in rows:
        for cell in row:
            if cell.startswith(DANGEROUS):
                assert re.fullmatch(r"-?\d+(\.\d+)?", cell), (cell, row)


def test_the_csv_export_neutralises_formulas_and_keeps_negative_amounts(store, prefect_server):
    import json

    catalog = Path("formulas.json")
    catalog.write_text(json.dumps(FORMULA_CATALOG))
    assert run("import", str(catalog)).exit_code == 0
    done = run("close", "--through", "2026-01-01", "--issue")
    assert done.exit_code == 0, done.output
    done = run("invoices", "export", "--format", "csv")
    assert done.exit_code == 0, done.output
    rows = list(csv.reader(io.StringIO(done.stdout)))
    header, body = rows[0], rows[1:]
    assert body
    assert_no_formula(rows)
    cells = {cell for row in body for cell in row}
    for value in FORMULAS.values():
        assert "'" + value in cells, value
    assert '\'=HYPERLINK("http://x.example")' in cells
    assert "'+grant" in cells  # the credit line's grant column
    column = {name: [row[i] for row in body] for i, name in enumerate(header)}
    amounts = dict(zip(column["kind"], column["line_amount"], strict=False))
    assert amounts["discount"] == "-10.00" and amounts["credit"] == "-5.00"
    # What the JSON export says is untouched: the mark is for spreadsheets only.
    data = json.loads(run("invoices", "export", "--format", "json").stdout)
    assert {i["billed_customer"] for i in data} == {FORMULAS["customer"]}
    # The same through --output.
    assert run("invoices", "export", "--format", "csv", "--output", "out.csv").exit_code == 0
    with Path("out.csv").open(encoding="utf-8", newline="") as written:
        assert list(csv.reader(written)) == rows


def test_the_rejects_file_neutralises_formulas_from_the_usage_files(store):
    import_yaml(
        TWO_CUSTOMERS.replace(
            "prices:",
            "metrics:\n  - {code: calls, name: Calls, aggregation: sum, field: quantity}\nprices:",
        )
    )
    usage = Path("=evil.csv")
    usage.write_text(
        "event_id,customer,metric,timestamp,quantity,@region\n"
        "ok-1,acme,calls,2026-01-03T10:00:00Z,1,eu\n"
        '-1+2,"=HYPERLINK(""http://x.example"")",calls,2026-01-03T10:00:00Z,1,=cmd\n'
        "+bad,acme,@calls,2026-01-03T10:00:00Z,-5,eu\n"
    )
    done = run("usage", "ingest", str(usage), "--skip-invalid", "rejects.csv")
    assert done.exit_code == 0, done.output
    rows = list(csv.reader(io.StringIO(Path("rejects.csv").read_text(encoding="utf-8"))))
    assert rows[0] == ["file", "row", "field", "reason", "record"]
    assert len(rows) == 3
    assert_no_formula(rows)
    assert {row[0] for row in rows[1:]} == {"'=evil.csv"}


def test_csv_cells_are_marked_by_their_first_character_only():
    cell = outputs.csv_cell
    for prefix in DANGEROUS:
        assert cell(prefix + "x") == "'" + prefix + "x"
    assert [cell(v) for v in ("-50.00", "-0.5", "12", "0.00157")] == [
        "-50.00",
        "-0.5",
        "12",
        "0.00157",
    ]
    assert [cell(v) for v in ("-1e5", "-50.00 ", "+50", "-", "--1")] == [
        "'-1e5",
        "'-50.00 ",
        "'+50",
        "'-",
        "'--1",
    ]
    assert [cell(v) for v in ("a=b", " =1", "'=1", "", None, 5)] == [
        "a=b",
        " =1",
        "'=1",
        "",
        None,
        5,
    ]


# --- ids that try to leave the output folder -----------------------------------------------

HOSTILE_IDS = [
    "../../etc/x",
    "/abs",
    "a/b",
    "a_b",
    "..",
    ".hidden",
    "CON",
    "nul",
    "COM1",
    "LPT9.txt",
    "C:\\evil",
    "..\\..\\win",
    "x" * 128,  # the longest id the stores hold; longer ones are tried on names alone
    "x" * 127 + "y",
    "spaces and ünïcode",
]
LONG_IDS = ["x" * 300, "x" * 299 + "y", "é" * 300]


def test_documents_named_after_hostile_ids_stay_in_the_output_folder(store):
    import json

    catalog = {
        "prices": [
            {"code": "p", "product": "P", "currency": "USD", "model": "flat", "amount": "1.00"}
        ],
        "customers": [
            {"id": i, "name": f"Customer {n}", "currency": "USD"} for n, i in enumerate(HOSTILE_IDS)
        ],
        "subscriptions": [
            {
                "id": f"s{n}",
                "customer": i,
                "start": "2026-01-01",
                "billing_day": 1,
                "items": [{"price": "p", "timing": "in_advance"}],
            }
            for n, i in enumerate(HOSTILE_IDS)
        ],
    }
    Path("hostile.json").write_text(json.dumps(catalog))
    assert run("import", "hostile.json").exit_code == 0
    close("2026-01-01")  # drafts' previews
    close("2026-01-01", issue=True)  # final documents
    root = Path(os.environ["BILLING_OUTPUT_DIR"]).resolve()
    rows = store.rows(
        "SELECT v.billed_customer_id, v.status, d.format, d.path FROM invoice_documents d "
        "JOIN invoices v ON v.id = d.invoice_id"
    )
    assert len(rows) == 2 * len(HOSTILE_IDS)
    paths = [Path(path) for *_, path in rows]
    assert len(set(paths)) == len(paths)
    for customer, _, fmt, path in rows:
        path = Path(path)
        assert path.resolve().is_relative_to(root) and path.parent.parent == root, path
        assert path.is_file() and path.suffix == "." + fmt
        assert len(path.name.encode()) <= 200
        assert path.name.split(".")[0].upper() not in outputs.WINDOWS_RESERVED
        assert not path.name.startswith(".")
        assert re.fullmatch(r"[A-Za-z0-9._~-]+", path.name), path.name
        # Recognisable: the id's own safe characters start the name.
        assert re.sub(r"[^A-Za-z0-9._-]", "_", customer[:80]).strip("._") in path.name
    # Nothing was written anywhere else.
    outside = [
        p
        for p in store.workdir.rglob("*")
        if p.is_file() and not p.resolve().is_relative_to(root) and p.suffix in (".html", ".pdf")
    ]
    assert outside == []
    assert not Path("/abs-INV-2026-000001.html").exists()


def test_name_parts_keep_plain_ids_and_never_collide():
    part = outputs.name_part
    assert [part(i) for i in ("acme", "gi-na", "Acme_Corp.2", "INV-2026-000001")] == [
        "acme",
        "gi-na",
        "Acme_Corp.2",
        "INV-2026-000001",
    ]
    hostile = [*HOSTILE_IDS, *LONG_IDS, "x\x00y", "x_y", "", ".", "a b", "a\tb", "a\nb", "ä", "_"]
    parts = [part(i) for i in hostile]
    assert len(set(parts)) == len(parts)
    for text, made in zip(hostile, parts, strict=True):
        assert "/" not in made and "\\" not in made and "\x00" not in made
        assert made not in ("", ".", "..") and not made.startswith(".")
        assert len(made) <= outputs.NAME_PART_LIMIT + 13
        assert made == part(text)  # the same id, the same name, every time


def test_a_document_path_never_leaves_its_folder(tmp_path):
    from types import SimpleNamespace

    for customer in [*HOSTILE_IDS, *LONG_IDS, "x\x00y"]:
        for number in (None, "INV-2026-000001"):
            invoice = SimpleNamespace(
                id=7, number=number, billed_customer_id=customer, billing_date=date(2026, 1, 1)
            )
            path = documents.document_path(tmp_path, invoice, "pdf")
            assert path.parent == tmp_path / "2026-01-01"
            assert path.resolve().parent == (tmp_path / "2026-01-01").resolve()


# --- passwords in database URLs ------------------------------------------------------------

PASSWORD = "S3cret-Pa55word"


def with_password(url: str) -> str:
    return url.replace(
        "postgresql+psycopg://postgres@", f"postgresql+psycopg://postgres:{PASSWORD}@"
    )


def billing(env: dict, *args: str) -> subprocess.CompletedProcess:
    binary = Path(sys.executable).with_name("billing")
    return subprocess.run(
        [str(binary), *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_a_password_in_a_url_is_never_printed_logged_or_published(store, prefect_server):
    from prefect import get_client

    from billing_core.store.locks import close_lock
    from tests.conftest import postgres_admin_url

    env = dict(os.environ, PREFECT_API_URL=prefect_server, PREFECT_LOGGING_LEVEL="INFO")
    env["BILLING_TASK_RETRIES"] = "0"
    if store.backend == "postgres":
        env["BILLING_DATABASE_URL"] = with_password(store.url)
    # A usage source behind a password, on both stores (PostgreSQL here trusts anyone).
    env["BILLING_USAGE_SQL_URL"] = with_password(postgres_admin_url())
    env["BILLING_USAGE_SQL_QUERY"] = (
        "SELECT * FROM (SELECT 'e1' AS event_id, 'acme' AS customer, 'calls' AS metric, "
        "TIMESTAMPTZ '2026-01-03T10:00:00Z' AS timestamp, 1 AS quantity) AS events "
        "WHERE timestamp >= CAST(:watermark AS timestamptz) AND false"
    )
    Path("catalog.yaml").write_text(TWO_CUSTOMERS)
    seen = []
    for args in (
        ("db", "upgrade"),
        ("import", "catalog.yaml"),
        ("close", "--through", "2026-02-01"),
        ("invoices", "list"),
    ):
        done = billing(env, *args)
        assert done.returncode == 0, done.stderr
        seen.append(done.stdout + done.stderr)
    assert "Flow run" in seen[2]  # Prefect's log lines were there to be read
    # Failing: the usage source refuses the password's user, the store is locked, the
    # database does not exist, the URL does not parse.
    failing = dict(
        env,
        BILLING_USAGE_SQL_URL=with_password(postgres_admin_url()).replace(
            "postgres:", "nobody:", 1
        ),
    )
    done = billing(failing, "close", "--through", "2026-02-01")
    assert done.returncode != 0 and '"nobody"' in done.stderr
    seen.append(done.stdout + done.stderr)
    with close_lock("a test holding the store", url=store.url):
        done = billing(env, "close", "--through", "2026-02-01")
    assert done.returncode == 1 and "another close is running" in done.stderr
    seen.append(done.stdout + done.stderr)
    missing = with_password(postgres_admin_url()).rsplit("/", 1)[0] + "/no_such_database"
    for url in (missing, f"postgresql+psycopg://postgres:{PASSWORD}@localhost:notaport/x"):
        done = billing(dict(env, BILLING_DATABASE_URL=url), "invoices", "list")
        assert done.returncode != 0
        seen.append(done.stdout + done.stderr)
    for text in seen:
        assert PASSWORD not in text, text
    # Nor on the Prefect server: flow runs' parameters, logs and artifacts.
    with get_client(sync_client=True) as client:
        published = [str(r.parameters) for r in client.read_flow_runs(limit=200)]
        published += [log.message for log in client.read_logs(limit=200)]
        published += [str(a.data) + str(a.description) for a in client.read_artifacts(limit=200)]
    assert published and not [p for p in published if PASSWORD in p]
