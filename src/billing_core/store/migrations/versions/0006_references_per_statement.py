"""Invoice lines and charge links: their references checked once per statement on PostgreSQL

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

A close copies in tens of thousands of invoice lines and charge links. PostgreSQL checks
a foreign key row by row: for each row written it queues a trigger event and runs a
lookup of the referenced row (locking it FOR KEY SHARE) through its own executor call.
For 54,000 lines and 34,000 links (three references) that was 1.0–1.9 s of a
consolidation that otherwise takes under 3 s; locking the same referenced rows with one
statement takes under 0.1 s.

So on PostgreSQL the three references of the close's bulk tables are kept by triggers
that do per statement what the constraints did per row, with the same effect:

- a row written into `invoice_lines` (`invoice_id` → `invoices`) or `invoice_charges`
  (`charge_id` → `charges`, `invoice_id` → `invoices`) must reference a row that exists;
  the referenced rows are locked FOR KEY SHARE, as the constraint's check locks them, so
  a concurrent deletion waits for this transaction and then cascades to what it wrote,
  and a row deleted meanwhile is reported as missing. The error is a
  foreign_key_violation (SQLSTATE 23503), as before;
- deleting invoices deletes their lines and links, deleting charges deletes their links
  (ON DELETE CASCADE before): the frozen-invoice guards still see those deletions;
- the id of a referenced invoice or charge cannot change, and `invoices` or `charges`
  cannot be truncated while lines or links exist (what the constraints refused).

0004's frozen-invoice check is rewritten the same way: it looked up the invoice of every
row written (54,000 index lookups for a close's lines), it now looks up each distinct
invoice once (a semi-join); the rule and the message are unchanged.

The models still declare the references, and SQLite keeps them as constraints (its
stores are small). The downgrade puts the constraints back (checking every row).
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# (table, column, referenced table, constraint 0005 and 0001 created)
REFERENCES = [
    ("invoice_lines", "invoice_id", "invoices", "invoice_lines_invoice_id_fkey"),
    ("invoice_charges", "charge_id", "charges", "invoice_charges_charge_id_fkey"),
    ("invoice_charges", "invoice_id", "invoices", "invoice_charges_invoice_id_fkey"),
]
# The same references by the table that holds them, and by the table they point at.
CHILDREN: dict[str, list[tuple[str, str]]] = {}
PARENTS: dict[str, list[tuple[str, str]]] = {}
for _table, _column, _parent, _ in REFERENCES:
    CHILDREN.setdefault(_table, []).append((_column, _parent))
    PARENTS.setdefault(_parent, []).append((_table, _column))


def _missing(table: str, column: str, parent: str) -> str:
    """PL/pgSQL: lock the rows the statement's rows reference; refuse if one is missing.

    Two counts rather than an anti-join: the planner knows nothing of a transition table
    and may loop over it once per row of the other side; a semi-join of the referenced
    table stays linear whatever plan it gets. Only a refused statement looks for the
    missing key, to name it.
    """
    return f"""
    SELECT count(*) INTO locked FROM (
      SELECT p.id FROM {parent} p WHERE p.id IN (SELECT {column} FROM new_rows)
      FOR KEY SHARE OF p
    ) k;
    IF locked < (SELECT count(DISTINCT {column}) FROM new_rows) THEN
      SELECT n.{column} INTO missing FROM new_rows n
        WHERE NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.id = n.{column}) LIMIT 1;
      RAISE EXCEPTION '{table}: {column} % is not in {parent}', missing
        USING ERRCODE = 'foreign_key_violation';
    END IF;"""


MESSAGE = "issued invoices are frozen: its rows cannot be changed"


def _frozen_rows(semi_join: bool) -> str:
    """0004's `billing_frozen_rows`: with a semi-join (one lookup per distinct invoice),
    or as 0004 wrote it (one per row), for the downgrade."""

    def check(rows: str) -> str:
        if semi_join:
            query = f"""SELECT v.id INTO frozen FROM invoices v
      WHERE v.id IN (SELECT invoice_id FROM {rows}) AND v.status <> 'draft' LIMIT 1;"""
        else:
            query = f"""SELECT r.invoice_id INTO frozen FROM {rows} r
      JOIN invoices v ON v.id = r.invoice_id WHERE v.status <> 'draft' LIMIT 1;"""
        return f"""
    {query}
    IF frozen IS NOT NULL THEN
      RAISE EXCEPTION '%: {MESSAGE} (invoice %)', TG_TABLE_NAME, frozen;
    END IF;"""

    return f"""
CREATE OR REPLACE FUNCTION billing_frozen_rows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  frozen bigint;
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN{check("old_rows")}
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') AND TG_ARGV[0] = 'insert' THEN{check("new_rows")}
  END IF;
  RETURN NULL;
END $$"""


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if not _postgres():
        return
    op.execute(_frozen_rows(semi_join=True))
    for table, _column, _parent, constraint in REFERENCES:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {constraint}")
    for table, references in CHILDREN.items():
        checks = "".join(_missing(table, column, parent) for column, parent in references)
        op.execute(f"""
CREATE OR REPLACE FUNCTION billing_{table}_references() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  locked bigint;
  missing bigint;
BEGIN{checks}
  RETURN NULL;
END $$""")
        for operation in ("insert", "update"):
            op.execute(f"""
CREATE TRIGGER {table}_references_{operation} AFTER {operation.upper()} ON {table}
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION billing_{table}_references()""")
    for parent, children in PARENTS.items():
        deletes = "".join(
            f"\n  DELETE FROM {child} WHERE {column} IN (SELECT id FROM old_rows);"
            for child, column in children
        )
        names = " or ".join(child for child, _ in children)
        referenced = " OR ".join(
            f"EXISTS (SELECT 1 FROM {child} WHERE {column} = OLD.id)" for child, column in children
        )
        op.execute(f"""
CREATE OR REPLACE FUNCTION billing_{parent}_cascade() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN{deletes}
  RETURN NULL;
END $$""")
        op.execute(f"""
CREATE TRIGGER {parent}_cascade AFTER DELETE ON {parent}
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION billing_{parent}_cascade()""")
        op.execute(f"""
CREATE OR REPLACE FUNCTION billing_{parent}_key() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    IF {" OR ".join(f"EXISTS (SELECT 1 FROM {child})" for child, _ in children)} THEN
      RAISE EXCEPTION '{parent}: cannot be truncated while {names} has rows'
        USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
  END IF;
  IF {referenced} THEN
    RAISE EXCEPTION '{parent}: id % is referenced by {names}', OLD.id
      USING ERRCODE = 'foreign_key_violation';
  END IF;
  RETURN NEW;
END $$""")
        op.execute(f"""
CREATE TRIGGER {parent}_key_update BEFORE UPDATE OF id ON {parent}
FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
EXECUTE FUNCTION billing_{parent}_key()""")
        op.execute(f"""
CREATE TRIGGER {parent}_key_truncate BEFORE TRUNCATE ON {parent}
FOR EACH STATEMENT EXECUTE FUNCTION billing_{parent}_key()""")


def downgrade() -> None:
    if not _postgres():
        return
    op.execute(_frozen_rows(semi_join=False))
    for parent in PARENTS:
        for trigger in ("cascade", "key_update", "key_truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS {parent}_{trigger} ON {parent}")
        op.execute(f"DROP FUNCTION IF EXISTS billing_{parent}_cascade()")
        op.execute(f"DROP FUNCTION IF EXISTS billing_{parent}_key()")
    for table in CHILDREN:
        for operation in ("insert", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_references_{operation} ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS billing_{table}_references()")
    for table, column, parent, constraint in REFERENCES:
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {constraint} FOREIGN KEY ({column}) "
            f"REFERENCES {parent} (id) ON DELETE CASCADE"
        )
