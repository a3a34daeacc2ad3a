"""Every way into an issued invoice is closed in the store itself (SPEC §10): not only
UPDATE and DELETE, but SQLite's REPLACE conflict resolution (which deletes the row it
replaces without firing a delete trigger), PostgreSQL's TRUNCATE, and inserts that attach
rows to a frozen invoice. Each attack runs on its own and is rolled back if it got
through; the test asserts that each one is refused and that the issued invoice's rows are
exactly as they were.

On SQLite the attacks run on a plain `sqlite3` connection, as any tool would open the
file: foreign keys off and recursive triggers off (the defaults), so nothing but the
store's own triggers stands in the way."""

from __future__ import annotations

import json
import sqlite3
from datetime import date

import pytest
import sqlalchemy as sa
from alembic import command

from billing_core.steps import close as steps
from billing_core.store.engine import (
    alembic_config,
    dispose_engines,
    get_engine,
    head_revision,
    upgrade,
)
from tests.helpers import close, import_yaml, one

CATALOG = """
issuer: {name: Northwind Billing, invoice_prefix: NWB, address: [1 Pier Road]}
customers:
  - {id: c01, name: Customer One, currency: USD}
prices:
  - {code: fee, product: Fee, currency: USD, model: flat, amount: "10.00"}
subscriptions:
  - {id: s-c01, customer: c01, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: fee, timing: in_advance}]}
credits:
  - {id: promo, customer: c01, amount: "15.00", currency: USD, effective: 2026-01-01}
"""

# The rows of what is frozen, in an order that does not depend on the store.
FROZEN_ROWS = {
    "invoices": "SELECT * FROM invoices WHERE status <> 'draft' ORDER BY id",
    "invoice_lines": "SELECT l.* FROM invoice_lines l JOIN invoices v ON v.id = l.invoice_id "
    "WHERE v.status <> 'draft' ORDER BY l.id",
    "charges": "SELECT c.* FROM charges c JOIN invoice_charges l ON l.charge_id = c.id "
    "JOIN invoices v ON v.id = l.invoice_id WHERE v.status <> 'draft' ORDER BY c.id",
    "invoice_charges": "SELECT l.* FROM invoice_charges l JOIN invoices v "
    "ON v.id = l.invoice_id WHERE v.status <> 'draft' ORDER BY l.charge_id",
    "invoice_documents": "SELECT d.* FROM invoice_documents d JOIN invoices v "
    "ON v.id = d.invoice_id WHERE v.status <> 'draft' ORDER BY d.id",
    "credit_ledger": "SELECT e.* FROM credit_ledger e JOIN invoices v ON v.id = e.invoice_id "
    "WHERE v.status <> 'draft' ORDER BY e.id",
}


def frozen_rows(store) -> dict[str, list]:
    return {table: [tuple(r) for r in store.rows(sql)] for table, sql in FROZEN_ROWS.items()}


class Ids(dict):
    """The ids an attack aims at, for str.format."""


def ids_of(store) -> Ids:
    issued = one(status="issued")
    draft = one(status="draft")
    i, d = issued["id"], draft["id"]

    def first(sql: str, **params):
        value = store.scalar(sql, **params)
        assert value is not None, sql
        return value

    return Ids(
        I=i,
        D=d,
        number=issued["number"],
        billing_date=issued["billing_date"],
        L=first("SELECT min(id) FROM invoice_lines WHERE invoice_id = :i", i=i),
        DL=first("SELECT min(id) FROM invoice_lines WHERE invoice_id = :i", i=d),
        C=first("SELECT min(charge_id) FROM invoice_charges WHERE invoice_id = :i", i=i),
        DC=first("SELECT min(charge_id) FROM invoice_charges WHERE invoice_id = :i", i=d),
        K=first(
            "SELECT charge_key FROM charges WHERE id = "
            "(SELECT min(charge_id) FROM invoice_charges WHERE invoice_id = :i)",
            i=i,
        ),
        DOC=first("SELECT min(id) FROM invoice_documents WHERE invoice_id = :i", i=i),
        DDOC=first("SELECT min(id) FROM invoice_documents WHERE invoice_id = :i", i=d),
        E=first("SELECT min(id) FROM credit_ledger WHERE invoice_id = :i", i=i),
        DE=first("SELECT min(id) FROM credit_ledger WHERE invoice_id = :i", i=d),
    )


@pytest.fixture
def issued(store):
    """An issued invoice (lines, a charge and its link, documents, a ledger entry) and
    the next billing date's draft with the same kinds of rows."""
    import_yaml(CATALOG)
    close("2026-01-01", issue=True)
    close("2026-02-01")
    return ids_of(store)


def columns(store, table: str) -> list[str]:
    with get_engine(store.url).connect() as connection:
        return [c["name"] for c in sa.inspect(connection).get_columns(table)]


def copy_of(store, table: str, where: str, verb: str = "INSERT OR REPLACE", **values) -> str:
    """`verb INTO table` a copy of the rows `where` selects, some columns replaced."""
    names = columns(store, table)
    chosen = ", ".join(values.get(name, name) for name in names)
    return f"{verb} INTO {table} ({', '.join(names)}) SELECT {chosen} FROM {table} WHERE {where}"


def attempt(store, statement: str) -> str | None:
    """Run one statement in a transaction of its own and roll it back; the error it
    raised, or None when it went through."""
    if store.backend == "sqlite":
        connection = sqlite3.connect(store.url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            assert connection.execute("PRAGMA foreign_keys").fetchone() == (0,)
            assert connection.execute("PRAGMA recursive_triggers").fetchone() == (0,)
            connection.execute("BEGIN")
            connection.execute(statement)
            return None
        except sqlite3.DatabaseError as error:
            return str(error)
        finally:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            connection.close()
    with get_engine(store.url).connect() as connection:
        try:
            connection.execute(sa.text(statement))
            return None
        except sa.exc.DBAPIError as error:
            return str(error.orig)
        finally:
            connection.rollback()


# PostgreSQL refuses to truncate a table others reference without CASCADE before any
# trigger runs; that refusal is as good as the guard's.
REFUSED = ("frozen", "cannot truncate a table referenced in a foreign key constraint")


def assert_all_refused(store, statements: list[str]) -> None:
    before = frozen_rows(store)
    through = []
    for statement in statements:
        error = attempt(store, statement)
        if error is None or not any(reason in error for reason in REFUSED):
            through.append((statement, error))
    assert not through, "\n".join(f"{s}\n  -> {e or 'went through'}" for s, e in through)
    assert frozen_rows(store) == before


def test_sqlite_replace_cannot_touch_an_issued_invoice(store, issued):
    if store.backend != "sqlite":
        pytest.skip("REPLACE is SQLite's")
    ids = issued
    invoice = f"id = {ids['I']}"
    attacks = [
        # The reported one: a copy of the issued invoice with a total of 0.
        copy_of(store, "invoices", invoice, total="0"),
        copy_of(store, "invoices", invoice, verb="REPLACE", total="0"),
        # A draft in its place, by its id, its number, or its customer and billing date.
        copy_of(store, "invoices", invoice, status="'draft'", number="NULL", issued_at="NULL"),
        copy_of(store, "invoices", invoice, id="NULL", status="'draft'", total="0"),
        copy_of(store, "invoices", invoice, id="NULL", number="NULL", status="'draft'", total="0"),
        f"UPDATE OR REPLACE invoices SET number = '{ids['number']}' WHERE id = {ids['D']}",
        f"UPDATE OR REPLACE invoices SET id = {ids['I']} WHERE id = {ids['D']}",
        f"UPDATE OR REPLACE invoices SET billing_date = '{ids['billing_date']}' "
        f"WHERE id = {ids['D']}",
        # Lines: a copy, a copy moved to the draft, a draft line renumbered onto it.
        copy_of(store, "invoice_lines", f"id = {ids['L']}", amount="0"),
        copy_of(store, "invoice_lines", f"id = {ids['L']}", invoice_id=str(ids["D"])),
        f"UPDATE OR REPLACE invoice_lines SET id = {ids['L']} WHERE id = {ids['DL']}",
        # Charges: by id, by charge key; a draft's charge renumbered or re-keyed onto it.
        copy_of(store, "charges", f"id = {ids['C']}", amount="0"),
        copy_of(store, "charges", f"id = {ids['C']}", id="NULL", amount="0"),
        f"UPDATE OR REPLACE charges SET charge_key = '{ids['K']}' WHERE id = {ids['DC']}",
        f"UPDATE OR REPLACE charges SET id = {ids['C']} WHERE id = {ids['DC']}",
        # Links: the charge moved to the draft by a replace.
        f"INSERT OR REPLACE INTO invoice_charges (charge_id, invoice_id) "
        f"VALUES ({ids['C']}, {ids['D']})",
        f"UPDATE OR REPLACE invoice_charges SET charge_id = {ids['C']} "
        f"WHERE charge_id = {ids['DC']}",
        # Documents: a copy, a new row on the same invoice and format, the draft's moved.
        copy_of(store, "invoice_documents", f"id = {ids['DOC']}", sha256="'forged'"),
        copy_of(store, "invoice_documents", f"id = {ids['DOC']}", id="NULL", sha256="'forged'"),
        f"UPDATE OR REPLACE invoice_documents SET invoice_id = {ids['I']}, "
        f"format = (SELECT format FROM invoice_documents WHERE id = {ids['DOC']}) "
        f"WHERE id = {ids['DDOC']}",
        # Ledger: a copy with nothing consumed, a copy unlinked, a draft's entry renumbered.
        copy_of(store, "credit_ledger", f"id = {ids['E']}", amount="0"),
        copy_of(store, "credit_ledger", f"id = {ids['E']}", invoice_id="NULL"),
        f"UPDATE OR REPLACE credit_ledger SET id = {ids['E']} WHERE id = {ids['DE']}",
    ]
    assert_all_refused(store, attacks + _on_both(store, ids))


def test_postgres_truncate_cannot_touch_an_issued_invoice(store, issued):
    if store.backend != "postgres":
        pytest.skip("TRUNCATE is PostgreSQL's")
    tables = [
        "invoices",
        "invoice_lines",
        "charges",
        "invoice_charges",
        "invoice_documents",
        "credit_ledger",
    ]
    attacks = [f"TRUNCATE {t}" for t in tables] + [f"TRUNCATE {t} CASCADE" for t in tables]
    attacks += [
        f"TRUNCATE {', '.join(tables)}",
        f"TRUNCATE {', '.join(tables)} CASCADE",
        # Through the references: grants cascade to the ledger.
        "TRUNCATE credit_grants CASCADE",
        "TRUNCATE customers CASCADE",
        # An upsert is an update.
        f"INSERT INTO invoices SELECT * FROM invoices WHERE id = {issued['I']} "
        "ON CONFLICT (id) DO UPDATE SET total = 0",
    ]
    assert_all_refused(store, attacks + _on_both(store, issued))


def _on_both(store, ids: Ids) -> list[str]:
    """Attacks that are plain SQL on either store."""
    document = (
        "INSERT INTO invoice_documents (invoice_id, format, path, sha256, source_hash, final, "
        "created_at) VALUES ({i}, '{fmt}', '/tmp/forged', 'x', 'x', {final}, "
        "CURRENT_TIMESTAMP)"
    )
    true, false = ("1", "0") if store.backend == "sqlite" else ("true", "false")
    return [
        # A document that is not a final one, or of a format the product does not write.
        document.format(i=ids["I"], fmt="copy", final=false),
        document.format(i=ids["I"], fmt="xml", final=true),
        # A draft's document moved onto the issued invoice.
        f"UPDATE invoice_documents SET invoice_id = {ids['I']}, format = 'xml' "
        f"WHERE id = {ids['DDOC']}",
        # An issued invoice that was never issued: invoices are born drafts.
        copy_of(
            store,
            "invoices",
            f"id = {ids['I']}",
            verb="INSERT",
            id=str(ids["I"] + 1000),
            number="'NWB-2026-999999'",
            billing_date="'2027-01-01'",
        ),
    ]


def test_a_missing_final_document_is_written_once_per_format(store, monkeypatch):
    """What the guards leave open is what the product needs: an issued invoice whose PDF
    was never written (the formats changed) gets it from a later close, once."""
    import_yaml(CATALOG)
    with monkeypatch.context() as patched:
        patched.setenv("BILLING_DOCUMENT_FORMATS", "html")
        close("2026-01-01", issue=True)
    iid = one(status="issued")["id"]
    formats = "SELECT format FROM invoice_documents WHERE invoice_id = :i ORDER BY format"
    assert [r.format for r in store.rows(formats, i=iid)] == ["html"]
    steps.render(date(2026, 1, 1))
    assert [r.format for r in store.rows(formats, i=iid)] == ["html", "pdf"]
    pdf = "SELECT id, sha256 FROM invoice_documents WHERE invoice_id = :i AND format = 'pdf'"
    written = store.rows(pdf, i=iid)
    steps.render(date(2026, 1, 1))
    assert store.rows(pdf, i=iid) == written
    # Once written, it is as frozen as the rest.
    error = attempt(
        store,
        f"UPDATE invoice_documents SET sha256 = 'x' WHERE invoice_id = {iid} AND format = 'pdf'",
    )
    assert error is not None and "frozen" in error


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request, tmp_path, monkeypatch):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        from tests.conftest import need_postgres

        need_postgres()
        url = request.getfixturevalue("pg_databases").create()
    monkeypatch.setenv("BILLING_DATABASE_URL", url)
    monkeypatch.setenv("BILLING_OUTPUT_DIR", str(tmp_path / "documents"))
    monkeypatch.chdir(tmp_path)
    yield url
    dispose_engines()


def test_the_guards_and_the_snapshot_come_and_go_with_their_migration(empty_url):
    """A downgrade takes the snapshot and the new guards away and leaves the guards the
    earlier revisions had; upgrading a store with issued invoices gives them a snapshot of
    the catalog as it stands then (the best there is) and the guards again."""
    from tests.conftest import Store

    head = head_revision()
    upgrade(empty_url)
    import_yaml(CATALOG)
    close("2026-01-01", issue=True)
    close("2026-02-01")
    backend = "sqlite" if empty_url.startswith("sqlite") else "postgres"
    store = Store(backend, empty_url, None)  # type: ignore[arg-type]
    ids = ids_of(store)

    def reported() -> str:
        if backend == "sqlite":
            return copy_of(store, "invoices", f"id = {ids['I']}", total="0")
        return "TRUNCATE invoice_lines"

    assert "frozen" in (attempt(store, reported()) or "")
    before = {k: v for k, v in frozen_rows(store).items() if k != "invoices"}
    command.downgrade(alembic_config(empty_url), "0007")
    dispose_engines()
    assert "identity" not in columns(store, "invoices")
    assert {k: v for k, v in frozen_rows(store).items() if k != "invoices"} == before
    # The earlier guards still hold; the reported attack is open again.
    assert "frozen" in (
        attempt(store, f"UPDATE invoices SET total = 0 WHERE id = {ids['I']}") or ""
    )
    assert attempt(store, reported()) is None
    # The catalog changes while the store is at 0007; the upgrade snapshots it as it is.
    # (Written in SQL: the catalog import writes the tables of the head revision.)
    with get_engine(empty_url).begin() as connection:
        connection.execute(sa.text("UPDATE issuers SET name = 'Northwind Upgraded'"))
    assert upgrade(empty_url) == head
    snapshot = store.scalar("SELECT identity FROM invoices WHERE status = 'issued'")
    snapshot = json.loads(snapshot) if isinstance(snapshot, str) else snapshot
    assert snapshot["issuer"]["name"] == "Northwind Upgraded"
    assert snapshot["billed"] == {"id": "c01", "name": "Customer One"}
    assert store.scalar("SELECT identity FROM invoices WHERE status = 'draft'") is None
    assert "frozen" in (attempt(store, reported()) or "")
    assert {k: v for k, v in frozen_rows(store).items() if k != "invoices"} == before
