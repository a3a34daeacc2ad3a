"""Frozen-invoice checks once per statement on PostgreSQL

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

0002's guards on the children of an invoice (lines, charges, documents, credit-ledger
entries) ran a PL/pgSQL function and a lookup of the invoice for every row written, which
is most of the cost of a close's bulk writes (34,000 charges pointed at their drafts,
54,000 lines copied in). Here each becomes an AFTER … FOR EACH STATEMENT trigger that
joins the statement's transition tables (the rows it wrote, the rows it replaced) to
`invoices` once and refuses the whole statement if any touched an invoice that is no
longer a draft: the same rule with the same message, checked per statement. SQLite keeps
its row triggers (its stores are small).
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CHILDREN = [
    ("invoice_lines", ("INSERT", "UPDATE", "DELETE")),
    ("charges", ("INSERT", "UPDATE", "DELETE")),
    ("invoice_documents", ("UPDATE", "DELETE")),
    ("credit_ledger", ("INSERT", "UPDATE", "DELETE")),
]

MESSAGE = "issued invoices are frozen: its rows cannot be changed"

REFERENCING = {
    "INSERT": "REFERENCING NEW TABLE AS new_rows",
    "UPDATE": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "DELETE": "REFERENCING OLD TABLE AS old_rows",
}


def _check(rows: str) -> str:
    """PL/pgSQL refusing the statement if one of `rows` belongs to a frozen invoice."""
    return f"""
    SELECT r.invoice_id INTO frozen FROM {rows} r JOIN invoices v ON v.id = r.invoice_id
      WHERE v.status <> 'draft' LIMIT 1;
    IF frozen IS NOT NULL THEN
      RAISE EXCEPTION '%: {MESSAGE} (invoice %)', TG_TABLE_NAME, frozen;
    END IF;"""


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(f"""
CREATE OR REPLACE FUNCTION billing_frozen_rows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  frozen bigint;
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN{_check("old_rows")}
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') AND TG_ARGV[0] = 'insert' THEN{_check("new_rows")}
  END IF;
  RETURN NULL;
END $$""")
    for table, operations in CHILDREN:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_frozen ON {table}")
        guard_insert = "insert" if "INSERT" in operations else "no-insert"
        for operation in operations:
            op.execute(f"""
CREATE TRIGGER {table}_frozen_{operation.lower()} AFTER {operation} ON {table}
{REFERENCING[operation]}
FOR EACH STATEMENT EXECUTE FUNCTION billing_frozen_rows('{guard_insert}')""")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for table, operations in CHILDREN:
        for operation in operations:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_frozen_{operation.lower()} ON {table}")
        guard_insert = "insert" if "INSERT" in operations else "no-insert"
        ops = " OR ".join(operations)
        op.execute(f"""
CREATE TRIGGER {table}_frozen BEFORE {ops} ON {table}
FOR EACH ROW EXECUTE FUNCTION billing_frozen_child('{guard_insert}')""")
    op.execute("DROP FUNCTION IF EXISTS billing_frozen_rows()")
