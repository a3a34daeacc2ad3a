"""Issued invoices are frozen in the store itself

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Triggers refuse any change to an invoice that is no longer a draft (other than issued ->
paid or void), and any write to the lines, charges, documents or credit-ledger entries
of such an invoice: the code paths are not the only guard.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Every column of `invoices` except status and the paid/void timestamps.
FROZEN_COLUMNS = [
    "id", "issuer_id", "number", "billed_customer_id", "family_id", "billing_date",
    "currency", "subtotal", "discount_total", "tax_total", "credit_total", "total",
    "content_hash", "created_at", "issued_at", "canceled_at",
]  # fmt: skip

# Children of an invoice: (table, column that links to invoices.id, operations guarded).
CHILDREN = [
    ("invoice_lines", "invoice_id", ("INSERT", "UPDATE", "DELETE")),
    ("charges", "invoice_id", ("INSERT", "UPDATE", "DELETE")),
    ("invoice_documents", "invoice_id", ("UPDATE", "DELETE")),
    ("credit_ledger", "invoice_id", ("INSERT", "UPDATE", "DELETE")),
]

MESSAGE = "issued invoices are frozen: {what} cannot be changed"


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        _postgres_up()
    else:
        _sqlite_up()


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS invoices_frozen ON invoices")
        for table, _, _ in CHILDREN:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_frozen ON {table}")
        op.execute("DROP FUNCTION IF EXISTS billing_frozen_invoice()")
        op.execute("DROP FUNCTION IF EXISTS billing_frozen_child()")
    else:
        op.execute("DROP TRIGGER IF EXISTS invoices_frozen_update")
        op.execute("DROP TRIGGER IF EXISTS invoices_frozen_delete")
        for table, _, operations in CHILDREN:
            for operation in operations:
                op.execute(f"DROP TRIGGER IF EXISTS {table}_frozen_{operation.lower()}")


def _postgres_up() -> None:
    new = ", ".join(f"NEW.{c}" for c in FROZEN_COLUMNS)
    old = ", ".join(f"OLD.{c}" for c in FROZEN_COLUMNS)
    op.execute(f"""
CREATE OR REPLACE FUNCTION billing_frozen_invoice() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    IF OLD.status <> 'draft' THEN
      RAISE EXCEPTION 'invoice % is %: {MESSAGE.format(what="it")}',
        coalesce(OLD.number, OLD.id::text), OLD.status;
    END IF;
    RETURN OLD;
  END IF;
  IF OLD.status = 'draft' THEN
    RETURN NEW;
  END IF;
  IF OLD.status = 'issued' AND NEW.status IN ('paid', 'void')
     AND ROW({new}) IS NOT DISTINCT FROM ROW({old}) THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'invoice % is %: {MESSAGE.format(what="it")}',
    coalesce(OLD.number, OLD.id::text), OLD.status;
END $$""")
    op.execute("""
CREATE TRIGGER invoices_frozen BEFORE UPDATE OR DELETE ON invoices
FOR EACH ROW EXECUTE FUNCTION billing_frozen_invoice()""")
    op.execute(f"""
CREATE OR REPLACE FUNCTION billing_frozen_child() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  frozen text;
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.invoice_id IS NOT NULL THEN
    SELECT status INTO frozen FROM invoices WHERE id = OLD.invoice_id AND status <> 'draft';
    IF frozen IS NOT NULL THEN
      RAISE EXCEPTION '%: {MESSAGE.format(what="its rows")} (invoice %)',
        TG_TABLE_NAME, OLD.invoice_id;
    END IF;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.invoice_id IS NOT NULL
     AND TG_ARGV[0] = 'insert' THEN
    SELECT status INTO frozen FROM invoices WHERE id = NEW.invoice_id AND status <> 'draft';
    IF frozen IS NOT NULL THEN
      RAISE EXCEPTION '%: {MESSAGE.format(what="its rows")} (invoice %)',
        TG_TABLE_NAME, NEW.invoice_id;
    END IF;
  END IF;
  IF TG_OP = 'DELETE' THEN
    RETURN OLD;
  END IF;
  RETURN NEW;
END $$""")
    for table, _, operations in CHILDREN:
        guard_insert = "insert" if "INSERT" in operations else "no-insert"
        ops = " OR ".join(operations)
        op.execute(f"""
CREATE TRIGGER {table}_frozen BEFORE {ops} ON {table}
FOR EACH ROW EXECUTE FUNCTION billing_frozen_child('{guard_insert}')""")


def _sqlite_up() -> None:
    same = " AND ".join(f"NEW.{c} IS OLD.{c}" for c in FROZEN_COLUMNS)
    op.execute(f"""
CREATE TRIGGER invoices_frozen_update BEFORE UPDATE ON invoices
FOR EACH ROW WHEN OLD.status <> 'draft' AND NOT (
  OLD.status = 'issued' AND NEW.status IN ('paid', 'void') AND {same})
BEGIN SELECT RAISE(ABORT, '{MESSAGE.format(what="an issued invoice")}'); END""")
    op.execute(f"""
CREATE TRIGGER invoices_frozen_delete BEFORE DELETE ON invoices
FOR EACH ROW WHEN OLD.status <> 'draft'
BEGIN SELECT RAISE(ABORT, '{MESSAGE.format(what="an issued invoice")}'); END""")
    for table, column, operations in CHILDREN:
        for operation in operations:
            row = "NEW" if operation == "INSERT" else "OLD"
            condition = f"(SELECT status FROM invoices WHERE id = {row}.{column}) <> 'draft'"
            if operation == "UPDATE" and "INSERT" in operations:
                condition = (
                    f"{condition} OR "
                    f"(SELECT status FROM invoices WHERE id = NEW.{column}) <> 'draft'"
                )
            what = f"the {table.replace('_', ' ')} of an issued invoice"
            op.execute(f"""
CREATE TRIGGER {table}_frozen_{operation.lower()} BEFORE {operation} ON {table}
FOR EACH ROW WHEN {condition}
BEGIN SELECT RAISE(ABORT, '{MESSAGE.format(what=what)}'); END""")
