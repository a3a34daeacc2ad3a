"""Charges point at their invoice through a table of their own

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

`charges.invoice_id` moves to `invoice_charges (charge_id, invoice_id)`. The roll-up
used to point every charge at its draft with an UPDATE of `charges`: a new version of
each wide row and an entry in each of its five indexes (about 0.9 s of a 34,000-charge
close on PostgreSQL). Now it writes two narrow columns per charge (a COPY). Discarding a
draft deletes its links (ON DELETE CASCADE, as SET NULL did before); deleting a charge
deletes its link.

The frozen-invoice guards follow: a link to an issued invoice cannot be written, changed
or deleted, and a charge linked to one cannot be changed or deleted (on PostgreSQL the
deletion is refused through the link it cascades to).
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MESSAGE = "issued invoices are frozen: its rows cannot be changed"
SQLITE_MESSAGE = "issued invoices are frozen: the {what} of an issued invoice cannot be changed"
LINK_OPERATIONS = ("INSERT", "UPDATE", "DELETE")
REFERENCING = {
    "INSERT": "REFERENCING NEW TABLE AS new_rows",
    "UPDATE": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "DELETE": "REFERENCING OLD TABLE AS old_rows",
}


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    postgres = _postgres()
    # Keep the links aside while `charges` loses its column (SQLite rebuilds the table).
    op.execute(
        "CREATE TABLE invoice_charges_upgrade AS SELECT id AS charge_id, invoice_id "
        "FROM charges WHERE invoice_id IS NOT NULL"
    )
    if postgres:
        for operation in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS charges_frozen_{operation} ON charges")
    else:
        for operation in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS charges_frozen_{operation}")
    with op.batch_alter_table("charges") as batch:
        batch.drop_index("ix_charges_invoice_id")
        batch.drop_column("invoice_id")
    op.create_table(
        "invoice_charges",
        sa.Column("charge_id", BigId, nullable=False, autoincrement=False),
        sa.Column("invoice_id", BigId, nullable=False),
        sa.ForeignKeyConstraint(["charge_id"], ["charges.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("charge_id"),
    )
    op.create_index("ix_invoice_charges_invoice_id", "invoice_charges", ["invoice_id"])
    op.execute(
        "INSERT INTO invoice_charges (charge_id, invoice_id) "
        "SELECT charge_id, invoice_id FROM invoice_charges_upgrade"
    )
    op.drop_table("invoice_charges_upgrade")
    if postgres:
        _postgres_guards()
    else:
        _sqlite_guards()


def _postgres_guards() -> None:
    op.execute(f"""
CREATE OR REPLACE FUNCTION billing_frozen_charges() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  frozen bigint;
BEGIN
  SELECT l.invoice_id INTO frozen FROM old_rows r
    JOIN invoice_charges l ON l.charge_id = r.id
    JOIN invoices v ON v.id = l.invoice_id
    WHERE v.status <> 'draft' LIMIT 1;
  IF frozen IS NOT NULL THEN
    RAISE EXCEPTION 'charges: {MESSAGE} (invoice %)', frozen;
  END IF;
  RETURN NULL;
END $$""")
    op.execute("""
CREATE TRIGGER charges_frozen_update AFTER UPDATE ON charges
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION billing_frozen_charges()""")
    # 0004's check of a child's invoice_id serves the links as it is.
    for operation in LINK_OPERATIONS:
        op.execute(f"""
CREATE TRIGGER invoice_charges_frozen_{operation.lower()} AFTER {operation} ON invoice_charges
{REFERENCING[operation]}
FOR EACH STATEMENT EXECUTE FUNCTION billing_frozen_rows('insert')""")


def _sqlite_guards() -> None:
    linked = (
        "EXISTS (SELECT 1 FROM invoice_charges l JOIN invoices v ON v.id = l.invoice_id "
        "WHERE l.charge_id = OLD.id AND v.status <> 'draft')"
    )
    for operation in ("UPDATE", "DELETE"):
        op.execute(f"""
CREATE TRIGGER charges_frozen_{operation.lower()} BEFORE {operation} ON charges
FOR EACH ROW WHEN {linked}
BEGIN SELECT RAISE(ABORT, '{SQLITE_MESSAGE.format(what="charges")}'); END""")
    for operation in LINK_OPERATIONS:
        row = "NEW" if operation == "INSERT" else "OLD"
        condition = f"(SELECT status FROM invoices WHERE id = {row}.invoice_id) <> 'draft'"
        if operation == "UPDATE":
            condition += " OR (SELECT status FROM invoices WHERE id = NEW.invoice_id) <> 'draft'"
        op.execute(f"""
CREATE TRIGGER invoice_charges_frozen_{operation.lower()} BEFORE {operation} ON invoice_charges
FOR EACH ROW WHEN {condition}
BEGIN SELECT RAISE(ABORT, '{SQLITE_MESSAGE.format(what="charge links")}'); END""")


def downgrade() -> None:
    postgres = _postgres()
    if postgres:
        op.execute("DROP TRIGGER IF EXISTS charges_frozen_update ON charges")
        for operation in LINK_OPERATIONS:
            op.execute(
                f"DROP TRIGGER IF EXISTS invoice_charges_frozen_{operation.lower()} "
                "ON invoice_charges"
            )
        op.execute("DROP FUNCTION IF EXISTS billing_frozen_charges()")
    else:
        for name in ("charges_frozen_update", "charges_frozen_delete") + tuple(
            f"invoice_charges_frozen_{o.lower()}" for o in LINK_OPERATIONS
        ):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    # The links wait aside: SQLite rebuilds `charges`, which would cascade to them.
    op.execute(
        "CREATE TABLE invoice_charges_downgrade AS SELECT charge_id, invoice_id "
        "FROM invoice_charges"
    )
    op.drop_index("ix_invoice_charges_invoice_id", table_name="invoice_charges")
    op.drop_table("invoice_charges")
    with op.batch_alter_table("charges") as batch:
        batch.add_column(sa.Column("invoice_id", BigId, nullable=True))
        batch.create_foreign_key(
            "charges_invoice_id_fkey", "invoices", ["invoice_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index("ix_charges_invoice_id", ["invoice_id"])
    op.execute(
        "UPDATE charges SET invoice_id = l.invoice_id FROM invoice_charges_downgrade l "
        "WHERE l.charge_id = charges.id"
    )
    op.drop_table("invoice_charges_downgrade")
    if postgres:
        # 0004's guards on charges.
        for operation, referencing in REFERENCING.items():
            op.execute(f"""
CREATE TRIGGER charges_frozen_{operation.lower()} AFTER {operation} ON charges
{referencing}
FOR EACH STATEMENT EXECUTE FUNCTION billing_frozen_rows('insert')""")
    else:
        # 0002's guards on charges.
        what = SQLITE_MESSAGE.format(what="charges")
        for operation in ("INSERT", "UPDATE", "DELETE"):
            row = "NEW" if operation == "INSERT" else "OLD"
            condition = f"(SELECT status FROM invoices WHERE id = {row}.invoice_id) <> 'draft'"
            if operation == "UPDATE":
                condition += (
                    " OR (SELECT status FROM invoices WHERE id = NEW.invoice_id) <> 'draft'"
                )
            op.execute(f"""
CREATE TRIGGER charges_frozen_{operation.lower()} BEFORE {operation} ON charges
FOR EACH ROW WHEN {condition}
BEGIN SELECT RAISE(ABORT, '{what}'); END""")
