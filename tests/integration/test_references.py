"""Invoice lines and charge links reference their invoice and charge on either store: a
constraint on SQLite, per-statement triggers on PostgreSQL (migration 0006). The same
writes are refused, the same deletions cascade, and on PostgreSQL the referenced rows are
locked as a constraint would lock them."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from billing_core.store.engine import get_engine, upgrade
from tests.integration.test_migrations import INVOICES, _charge, empty_url  # noqa: F401

LINE = (
    "INSERT INTO invoice_lines (invoice_id, position, serviced_customer_id, product, kind, "
    "amount) VALUES (:invoice, 1, 'solo', 'Platform', 'fixed', 10)"
)
LINK = "INSERT INTO invoice_charges (charge_id, invoice_id) VALUES (:charge, :invoice)"


@pytest.fixture
def store_url(empty_url):  # noqa: F811
    """A store at the head revision with invoices 1 (issued) and 2 (draft), two charges
    and a line and a link on the draft."""
    upgrade(empty_url)
    with get_engine(empty_url).begin() as connection:
        # Invoices are born drafts: invoice 1 is issued once inserted.
        connection.execute(sa.text(INVOICES.replace("'INV-1', 'issued'", "NULL, 'draft'")))
        connection.execute(
            sa.text("UPDATE invoices SET status = 'issued', number = 'INV-1' WHERE id = 1")
        )
        connection.execute(sa.text(_charge("on-draft", "2026-03-01")))
        connection.execute(sa.text(_charge("free", "2026-03-01")))
        connection.execute(sa.text(LINE), {"invoice": 2})
        connection.execute(sa.text(LINK), {"charge": _id(connection, "on-draft"), "invoice": 2})
    return empty_url


def _id(connection, key: str) -> int:
    return connection.execute(
        sa.text("SELECT id FROM charges WHERE charge_key = :key"), {"key": key}
    ).scalar_one()


def _count(url: str, sql: str) -> int:
    with get_engine(url).connect() as connection:
        return connection.execute(sa.text(sql)).scalar_one()


def _refused(url: str, sql: str, **params) -> None:
    with (
        pytest.raises(sa.exc.IntegrityError),
        get_engine(url).begin() as connection,
    ):
        connection.execute(sa.text(sql), params)


def test_rows_must_reference_an_existing_invoice_and_charge(store_url):
    with get_engine(store_url).connect() as connection:
        free = _id(connection, "free")
    _refused(store_url, LINE, invoice=99)
    _refused(store_url, LINK, charge=free, invoice=99)
    _refused(store_url, LINK, charge=12345, invoice=2)
    _refused(store_url, "UPDATE invoice_lines SET invoice_id = 99")
    _refused(store_url, "UPDATE invoice_charges SET charge_id = 12345")
    # A statement of many rows is refused whole if one of them references nothing.
    _refused(
        store_url,
        "INSERT INTO invoice_charges (charge_id, invoice_id) VALUES (:free, 2), (12345, 2)",
        free=free,
    )
    assert _count(store_url, "SELECT count(*) FROM invoice_charges") == 1
    with get_engine(store_url).begin() as connection:
        connection.execute(sa.text(LINK), {"charge": free, "invoice": 2})
    assert _count(store_url, "SELECT count(*) FROM invoice_charges") == 2


def test_deleting_an_invoice_or_a_charge_deletes_what_references_it(store_url):
    with get_engine(store_url).begin() as connection:
        connection.execute(sa.text("DELETE FROM charges WHERE charge_key = 'on-draft'"))
    assert _count(store_url, "SELECT count(*) FROM invoice_charges") == 0
    assert _count(store_url, "SELECT count(*) FROM invoice_lines") == 1
    with get_engine(store_url).begin() as connection:
        connection.execute(sa.text(LINK), {"charge": _id(connection, "free"), "invoice": 2})
        connection.execute(sa.text("DELETE FROM invoices WHERE id = 2"))
    assert _count(store_url, "SELECT count(*) FROM invoice_charges") == 0
    assert _count(store_url, "SELECT count(*) FROM invoice_lines") == 0
    assert _count(store_url, "SELECT count(*) FROM charges") == 1


def test_a_referenced_key_cannot_change(store_url):
    _refused(store_url, "UPDATE invoices SET id = 7 WHERE id = 2")
    _refused(store_url, "UPDATE charges SET id = 777 WHERE charge_key = 'on-draft'")
    if store_url.startswith("postgresql"):
        _refused(store_url, "TRUNCATE charges")
        with get_engine(store_url).begin() as connection:  # unreferenced: no objection
            connection.execute(sa.text("UPDATE charges SET id = 778 WHERE charge_key = 'free'"))


def test_a_reference_locks_its_charge_until_commit(store_url):
    """On PostgreSQL as with a constraint: a charge being linked cannot be deleted until
    the link's transaction ends (then the deletion takes the link with it); a link to a
    charge deleted meanwhile is refused."""
    if not store_url.startswith("postgresql"):
        pytest.skip("the row locks are PostgreSQL's: SQLite has one writer at a time")
    engine = get_engine(store_url)
    with engine.connect() as connection:
        free = _id(connection, "free")
    delete = sa.text("DELETE FROM charges WHERE id = :id")
    with engine.connect() as linker, engine.connect() as deleter:
        linker.execute(sa.text(LINK), {"charge": free, "invoice": 2})
        deleter.execute(sa.text("SET lock_timeout = '300ms'"))
        with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
            deleter.execute(delete, {"id": free})
        deleter.rollback()
        linker.commit()
        deleter.execute(delete, {"id": free})
        deleter.commit()
    assert _count(store_url, "SELECT count(*) FROM invoice_charges") == 1  # the draft's own

    with engine.begin() as connection:
        connection.execute(sa.text(_charge("late", "2026-03-01")))
        target = _id(connection, "late")
    outcome: list[BaseException | None] = []
    with engine.connect() as deleter:
        deleter.execute(delete, {"id": target})

        def link() -> None:
            try:
                with engine.begin() as linker:
                    linker.execute(sa.text(LINK), {"charge": target, "invoice": 2})
                outcome.append(None)
            except BaseException as error:  # noqa: BLE001 - inspected below
                outcome.append(error)

        thread = threading.Thread(target=link)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waiting for the deletion's transaction
        deleter.commit()
        thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], sa.exc.IntegrityError)
    assert _count(store_url, "SELECT count(*) FROM invoice_charges") == 1
