"""Least privilege (SPEC §10): `billing db grant ROLE` gives an application role row
privileges and nothing else; the whole close runs as that role, and as that role nothing
changes an issued invoice: not UPDATE, DELETE or TRUNCATE, not disabling, dropping or
replacing the triggers that freeze it, not switching them off for the session."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from billing_core.cli.app import app
from billing_core.store.engine import dispose_engines, get_engine
from tests.helpers import one
from tests.integration.test_documents import FAMILY, USAGE
from tests.integration.test_immutability_attacks import frozen_rows

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def run(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def app_role(store):
    """A login role of the test's own (roles are the cluster's: its name is unique), and
    the store's URL as that role; dropped at the end."""
    if store.backend != "postgres":
        pytest.skip("roles are PostgreSQL's")
    role = "billing_app_" + uuid.uuid4().hex[:10]
    admin = get_engine(store.url)
    with admin.begin() as connection:
        connection.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
    url = sa.engine.make_url(store.url).set(username=role).render_as_string(hide_password=False)
    yield role, url
    dispose_engines()
    with get_engine(store.url).begin() as connection:
        connection.execute(sa.text(f"DROP OWNED BY {role}"))
        connection.execute(sa.text(f"DROP ROLE {role}"))
    dispose_engines()


def privileges(store, role: str) -> dict[str, set[str]]:
    """What `role` may do on each table of the store."""
    out = {}
    tables = [
        r.tablename
        for r in store.rows("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    ]
    for table in tables:
        out[table] = {
            p
            for p in TABLE_PRIVILEGES
            if store.scalar("SELECT has_table_privilege(:r, :t, :p)", r=role, t=table, p=p)
        }
    return out


def test_grant_prints_then_applies_row_privileges_only(store, app_role):
    role, _ = app_role
    printed = run("db", "grant", role)
    assert printed.exit_code == 0, printed.output
    statements = printed.stdout.strip().splitlines()
    assert all(s.endswith(";") for s in statements)
    text = printed.stdout
    assert f"GRANT USAGE ON SCHEMA public TO {role};" in statements
    for word in ("TRUNCATE", "TRIGGER", "REFERENCES", "OWNER", "SUPERUSER", "ALL PRIVILEGES"):
        assert word not in text.replace("REVOKE ALL ON", ""), word
    # Printing applies nothing.
    assert not any(privileges(store, role).values())

    applied = run("db", "grant", role, "--apply")
    assert applied.exit_code == 0, applied.output
    granted = privileges(store, role)
    rows = {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert granted.pop("alembic_version") == {"SELECT"}
    assert granted and all(p == rows for p in granted.values()), granted
    sequences = [r.relname for r in store.rows("SELECT relname FROM pg_class WHERE relkind = 'S'")]
    assert "invoices_id_seq" in sequences
    for sequence in sequences:
        assert store.scalar("SELECT has_sequence_privilege(:r, :s, 'USAGE')", r=role, s=sequence)
        assert not store.scalar(
            "SELECT has_sequence_privilege(:r, :s, 'UPDATE')", r=role, s=sequence
        )
    # A table a later migration creates is the role's to read and write as well.
    with get_engine(store.url).begin() as connection:
        connection.execute(sa.text("CREATE TABLE later_table (id integer)"))
    assert privileges(store, role)["later_table"] == rows
    # Applying again changes nothing.
    assert run("db", "grant", role, "--apply").exit_code == 0
    assert privileges(store, role) == {
        **granted,
        "alembic_version": {"SELECT"},
        "later_table": rows,
    }


def test_grant_refuses_roles_that_would_keep_the_owners_powers(store, app_role):
    role, _ = app_role
    for name, reason in (
        ("postgres", "is a superuser"),
        ("public", "PUBLIC is every role"),
        ("pg_read_all_data", "PostgreSQL's own roles"),
    ):
        done = run("db", "grant", name, "--apply")
        assert done.exit_code == 1, done.output
        assert reason in done.stderr and len(done.stderr.strip().splitlines()) == 1
    missing = run("db", "grant", role + "_missing", "--apply")
    assert missing.exit_code == 1
    assert missing.stderr.strip() == (
        f"role {role}_missing does not exist: create it first "
        f"(CREATE ROLE {role}_missing LOGIN PASSWORD '…')"
    )
    assert not any(privileges(store, role).values())


def test_on_sqlite_there_are_no_roles(store):
    if store.backend != "sqlite":
        pytest.skip("the SQLite answer")
    for args in (["db", "grant", "billing_app"], ["db", "grant", "billing_app", "--apply"]):
        done = run(*args)
        assert done.exit_code == 0, done.output
        assert done.stdout.strip() == (
            f"{store.url}: a SQLite store has no roles: the file's permissions are its guard "
            "(readable and writable by the account that runs the product, and no one else)"
        )


def test_the_close_runs_as_the_application_role_and_cannot_touch_what_it_issued(
    store, app_role, monkeypatch, prefect_server
):
    role, url = app_role
    assert run("db", "grant", role, "--apply").exit_code == 0
    monkeypatch.setenv("BILLING_DATABASE_URL", url)
    Path("catalog.yaml").write_text(FAMILY)
    Path("usage.csv").write_text(USAGE.lstrip())
    for args in (
        ["import", "catalog.yaml"],
        ["usage", "ingest", "usage.csv"],
        ["close", "--through", "2026-02-01", "--issue"],
        ["close", "--through", "2026-03-01"],
    ):
        done = run(*args)
        assert done.exit_code == 0, (args, done.output, done.exception)
    assert store.scalar("SELECT current_user") == "postgres"
    engine = get_engine(url)
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT current_user")).scalar() == role
    issued = one(status="issued", billed_customer="gi")
    documents = store.rows(
        "SELECT format, path FROM invoice_documents WHERE invoice_id = :i", i=issued["id"]
    )
    assert sorted(d.format for d in documents) == ["html", "pdf"]
    assert all(Path(d.path).exists() for d in documents)

    i = issued["id"]
    frozen = f"(SELECT charge_id FROM invoice_charges WHERE invoice_id = {i})"
    tables = [
        r.tablename
        for r in store.rows("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    ]
    attacks = [
        f"UPDATE invoices SET total = 0 WHERE id = {i}",
        f"DELETE FROM invoices WHERE id = {i}",
        f"UPDATE invoice_lines SET amount = 0 WHERE invoice_id = {i}",
        f"DELETE FROM invoice_lines WHERE invoice_id = {i}",
        f"UPDATE charges SET amount = 0 WHERE id IN {frozen}",
        f"DELETE FROM charges WHERE id IN {frozen}",
        f"UPDATE invoice_charges SET invoice_id = invoice_id WHERE invoice_id = {i}",
        f"DELETE FROM invoice_charges WHERE invoice_id = {i}",
        f"UPDATE invoice_documents SET sha256 = 'x' WHERE invoice_id = {i}",
        f"DELETE FROM invoice_documents WHERE invoice_id = {i}",
        "INSERT INTO invoice_documents (invoice_id, format, path, sha256, source_hash, final, "
        f"created_at) VALUES ({i}, 'copy', '/tmp/x', 'x', 'x', false, now())",
        f"UPDATE credit_ledger SET amount = 0 WHERE invoice_id = {i}",
        f"DELETE FROM credit_ledger WHERE invoice_id = {i}",
        *(f"TRUNCATE {t}" for t in tables),
        *(f"TRUNCATE {t} CASCADE" for t in tables),
        "ALTER TABLE invoices DISABLE TRIGGER invoices_frozen",
        "ALTER TABLE invoices DISABLE TRIGGER ALL",
        "ALTER TABLE invoice_lines DISABLE TRIGGER USER",
        "DROP TRIGGER invoices_frozen ON invoices",
        "DROP TRIGGER invoice_lines_frozen_update ON invoice_lines",
        "CREATE OR REPLACE FUNCTION billing_frozen_invoice() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        "CREATE TRIGGER sneaky BEFORE UPDATE ON invoices FOR EACH ROW "
        "EXECUTE FUNCTION billing_frozen_invoice()",
        "SET session_replication_role = replica",
        "SET ROLE postgres",
        "ALTER TABLE invoices OWNER TO CURRENT_USER",
        "DROP TABLE invoice_lines",
        "UPDATE alembic_version SET version_num = '0001'",
    ]
    before = frozen_rows(store)
    through = []
    for statement in attacks:
        with engine.connect() as connection:
            try:
                connection.execute(sa.text(statement))
                through.append(statement)
            except sa.exc.DBAPIError as error:
                message = str(error.orig)
                refused = ("permission denied", "must be owner", "frozen")
                if not any(reason in message for reason in refused):
                    through.append(f"{statement}: {message}")
            finally:
                connection.rollback()
    assert not through, "\n".join(through)
    assert frozen_rows(store) == before
