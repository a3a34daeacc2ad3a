"""Issued invoices keep who they are from and to, and are guarded every way in

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08

`invoices.identity` holds the snapshot taken at issue (the issuer's catalog entry, the
billed customer, the names of the serviced customers and metrics on the invoice, the tax
rates of its jurisdictions: see billing_core.invoices.identity), and is frozen with the rest of the
invoice. Invoices issued before this revision get a snapshot of the catalog as it stands
when the store is upgraded: the best there is, and from then on it no longer moves.

The guards of 0002–0006 caught UPDATE and DELETE. What got past them:

- SQLite's REPLACE conflict resolution (INSERT OR REPLACE, REPLACE, UPDATE OR REPLACE)
  deletes the row it replaces without firing a delete trigger (unless the connection
  turned recursive triggers on). Every table of an issued invoice now refuses an insert
  or an update whose unique key (id, number, billed customer and billing date, charge
  key, invoice and format) lands on a row of an issued invoice.
- PostgreSQL's TRUNCATE fires no row or statement trigger of DELETE. Each table of an
  invoice refuses to be truncated while it holds rows of an issued invoice (BEFORE
  TRUNCATE, once per statement; a CASCADE fires the guard of every table it reaches).
- Documents: an issued invoice takes only its final documents, in the formats the product
  writes (html, pdf), once per format (the unique key); nothing else can be inserted for
  it, and no document can be moved onto it.
- An invoice is born a draft: one inserted with another status is refused (on PostgreSQL
  once per statement, as the close copies its drafts in).

PostgreSQL's new checks are statement-level or on statements the close never runs
(TRUNCATE), so the close's bulk writes cost what they did.
"""

import json
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# 0002's frozen columns of `invoices` (all but status and the paid/void timestamps).
FROZEN_COLUMNS = [
    "id", "issuer_id", "number", "billed_customer_id", "family_id", "billing_date",
    "currency", "subtotal", "discount_total", "tax_total", "credit_total", "total",
    "content_hash", "created_at", "issued_at", "canceled_at",
]  # fmt: skip
MESSAGE = "issued invoices are frozen: {what} cannot be changed"
BORN_MESSAGE = "issued invoices are frozen: an invoice can only be issued from a draft"
FORMATS = ("html", "pdf")

# Rows of each table that belong to an issued invoice: (join from the table `x`, the
# condition on it), and the table's unique keys.
BELONGS = {
    "invoices": ("", "x.status <> 'draft'"),
    "invoice_lines": ("JOIN invoices v ON v.id = x.invoice_id", "v.status <> 'draft'"),
    "charges": (
        "JOIN invoice_charges l ON l.charge_id = x.id JOIN invoices v ON v.id = l.invoice_id",
        "v.status <> 'draft'",
    ),
    "invoice_charges": ("JOIN invoices v ON v.id = x.invoice_id", "v.status <> 'draft'"),
    "invoice_documents": ("JOIN invoices v ON v.id = x.invoice_id", "v.status <> 'draft'"),
    "credit_ledger": ("JOIN invoices v ON v.id = x.invoice_id", "v.status <> 'draft'"),
}
UNIQUE_KEYS = {
    "invoices": [("id",), ("number",), ("billed_customer_id", "billing_date")],
    "invoice_lines": [("id",)],
    "charges": [("id",), ("charge_key",)],
    "invoice_charges": [("charge_id",)],
    "invoice_documents": [("id",), ("invoice_id", "format")],
    "credit_ledger": [("id",)],
}
WHAT = {
    "invoices": "an issued invoice",
    "invoice_lines": "the invoice lines of an issued invoice",
    "charges": "the charges of an issued invoice",
    "invoice_charges": "the charge links of an issued invoice",
    "invoice_documents": "the documents of an issued invoice",
    "credit_ledger": "the credit ledger of an issued invoice",
}


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    op.add_column("invoices", sa.Column("identity", sa.JSON(), nullable=True))
    if _postgres():
        op.execute("DROP TRIGGER IF EXISTS invoices_frozen ON invoices")
        _snapshot_issued()
        _postgres_invoice_guard(FROZEN_COLUMNS + ["identity"])
        _postgres_up()
    else:
        op.execute("DROP TRIGGER IF EXISTS invoices_frozen_update")
        _snapshot_issued()
        _sqlite_invoice_guard(FROZEN_COLUMNS + ["identity"])
        _sqlite_up()


def downgrade() -> None:
    if _postgres():
        _postgres_down()
        op.execute("DROP TRIGGER IF EXISTS invoices_frozen ON invoices")
        _postgres_invoice_guard(FROZEN_COLUMNS)
        op.drop_column("invoices", "identity")
    else:
        _sqlite_down()
        op.execute("DROP TRIGGER IF EXISTS invoices_frozen_update")
        _sqlite_invoice_guard(FROZEN_COLUMNS)
        # Not a batch operation: SQLite would rebuild the table and lose its triggers.
        op.execute("ALTER TABLE invoices DROP COLUMN identity")


# --- the snapshot of invoices issued before this revision -------------------------------


def _json(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _plain(value):
    """A value as JSON holds it (what billing_core.invoices.identity.json_safe writes)."""
    if value is None or isinstance(value, bool | int | float | list | dict):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, Decimal):
        return f"{value:f}"
    return str(value)


def _snapshot_issued() -> None:
    """The catalog as it stands, as the snapshot billing_core.invoices.identity takes at issue."""
    bind = op.get_bind()
    issued = bind.execute(
        sa.text("SELECT id, issuer_id, billed_customer_id FROM invoices WHERE status <> 'draft'")
    ).all()
    if not issued:
        return
    url = bind.engine.url
    if url.drivername.startswith("sqlite"):
        store_name = Path(url.database or "billing").stem or "billing"
    else:
        store_name = url.database or "billing"
    issuers = {}
    for row in bind.execute(sa.text("SELECT * FROM issuers")).mappings():
        entry = {k: _plain(_json(v)) if k == "address" else _plain(v) for k, v in row.items()}
        entry["address"] = list(entry.get("address") or [])
        issuers[row["id"]] = entry
    customers = dict(bind.execute(sa.text("SELECT id, name FROM customers")).all())
    metrics = dict(bind.execute(sa.text("SELECT code, name FROM metrics")).all())
    rates = {
        row["jurisdiction"]: {k: _plain(v) for k, v in row.items() if k != "jurisdiction"}
        for row in bind.execute(sa.text("SELECT * FROM tax_rates")).mappings()
    }
    named: dict[int, tuple[set, set, set]] = {row.id: (set(), set(), set()) for row in issued}
    frozen = "SELECT id FROM invoices WHERE status <> 'draft'"
    for invoice_id, customer, jurisdiction in bind.execute(
        sa.text(
            "SELECT DISTINCT invoice_id, serviced_customer_id, jurisdiction FROM invoice_lines "
            f"WHERE invoice_id IN ({frozen})"
        )
    ):
        named[invoice_id][0].add(customer)
        if jurisdiction:
            named[invoice_id][2].add(jurisdiction)
    for invoice_id, customer, metric in bind.execute(
        sa.text(
            "SELECT DISTINCT l.invoice_id, c.serviced_customer_id, c.metric_code "
            "FROM invoice_charges l JOIN charges c ON c.id = l.charge_id "
            f"WHERE l.invoice_id IN ({frozen})"
        )
    ):
        named[invoice_id][0].add(customer)
        if metric:
            named[invoice_id][1].add(metric)
    default = {"id": "default", "name": store_name, "invoice_prefix": "INV", "address": []}
    invoices = sa.table("invoices", sa.column("id"), sa.column("identity", sa.JSON()))
    updates = []
    for row in issued:
        served, used, jurisdictions = named[row.id]
        billed = row.billed_customer_id
        updates.append(
            {
                "_id": row.id,
                "identity": {
                    "issuer": issuers.get(row.issuer_id, {**default, "id": row.issuer_id}),
                    "billed": {"id": billed, "name": customers.get(billed, billed)},
                    "customers": {c: customers.get(c, c) for c in sorted(served | {billed})},
                    "metrics": {m: metrics.get(m, m) for m in sorted(used)},
                    "tax_rates": {j: rates[j] for j in sorted(jurisdictions) if j in rates},
                },
            }
        )
    bind.execute(
        invoices.update().where(invoices.c.id == sa.bindparam("_id")),
        updates,
    )


# --- the invoice's own guard, with or without the snapshot ------------------------------


def _sqlite_invoice_guard(columns: list[str]) -> None:
    """0002's guard on updates of `invoices` over `columns`."""
    same = " AND ".join(f"NEW.{c} IS OLD.{c}" for c in columns)
    op.execute(f"""
CREATE TRIGGER invoices_frozen_update BEFORE UPDATE ON invoices
FOR EACH ROW WHEN OLD.status <> 'draft' AND NOT (
  OLD.status = 'issued' AND NEW.status IN ('paid', 'void') AND {same})
BEGIN SELECT RAISE(ABORT, '{MESSAGE.format(what="an issued invoice")}'); END""")


def _postgres_invoice_guard(columns: list[str]) -> None:
    """0002's guard on updates and deletions of `invoices` over `columns` (json has no
    equality: the snapshot is compared as its text)."""
    text = [f"{c}::text" if c == "identity" else c for c in columns]
    new = ", ".join(f"NEW.{c}" for c in text)
    old = ", ".join(f"OLD.{c}" for c in text)
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


# --- SQLite: replacing, documents, invoices born drafts ---------------------------------


def _lands_on_frozen(table: str, key: tuple[str, ...], update: bool) -> str:
    """SQL: the row's new `key` is that of a row of an issued invoice (another row, for
    an update): the row a REPLACE would delete."""
    join, belongs = BELONGS[table]
    match = " AND ".join(f"x.{c} = NEW.{c}" for c in key)
    exists = f"EXISTS (SELECT 1 FROM {table} x {join} WHERE {match} AND {belongs})"
    if not update:
        return exists
    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in key)
    return f"(({changed}) AND {exists})"


def _sqlite_triggers() -> list[tuple[str, str]]:
    """(name, CREATE TRIGGER) of every trigger this revision adds on SQLite."""
    out = []
    for table, keys in UNIQUE_KEYS.items():
        what = WHAT[table]
        for operation in ("INSERT", "UPDATE"):
            update = operation == "UPDATE"
            condition = " OR ".join(_lands_on_frozen(table, key, update) for key in keys)
            name = f"{table}_frozen_replace_{operation.lower()}"
            out.append(
                (
                    name,
                    f"""
CREATE TRIGGER {name} BEFORE {operation} ON {table}
FOR EACH ROW WHEN {condition}
BEGIN SELECT RAISE(ABORT, '{MESSAGE.format(what=what)} (nor replaced)'); END""",
                )
            )
    out.append(
        (
            "invoices_frozen_born_draft",
            f"""
CREATE TRIGGER invoices_frozen_born_draft BEFORE INSERT ON invoices
FOR EACH ROW WHEN NEW.status <> 'draft'
BEGIN SELECT RAISE(ABORT, '{BORN_MESSAGE}'); END""",
        )
    )
    formats = ", ".join(f"'{f}'" for f in FORMATS)
    frozen_new = "(SELECT status FROM invoices WHERE id = NEW.invoice_id) <> 'draft'"
    out.append(
        (
            "invoice_documents_frozen_insert",
            f"""
CREATE TRIGGER invoice_documents_frozen_insert BEFORE INSERT ON invoice_documents
FOR EACH ROW WHEN {frozen_new} AND (NOT NEW.final OR NEW.format NOT IN ({formats}))
BEGIN SELECT RAISE(ABORT, '{_documents_message()}'); END""",
        )
    )
    out.append(
        (
            "invoice_documents_frozen_move",
            f"""
CREATE TRIGGER invoice_documents_frozen_move BEFORE UPDATE ON invoice_documents
FOR EACH ROW WHEN {frozen_new}
BEGIN SELECT RAISE(ABORT, '{MESSAGE.format(what=WHAT["invoice_documents"])}'); END""",
        )
    )
    return out


def _documents_message() -> str:
    return (
        MESSAGE.format(what="the documents of an issued invoice")
        + f" (it takes its final {' and '.join(FORMATS)} documents once)"
    )


def _sqlite_up() -> None:
    for _, create in _sqlite_triggers():
        op.execute(create)


def _sqlite_down() -> None:
    for name, _ in _sqlite_triggers():
        op.execute(f"DROP TRIGGER IF EXISTS {name}")


# --- PostgreSQL: truncation, documents, invoices born drafts ----------------------------


def _holds_frozen(table: str) -> str:
    """SQL: `table` holds a row of an issued invoice (one lookup per issued invoice at
    most, through the index on its invoice column)."""
    if table == "invoices":
        return "EXISTS (SELECT 1 FROM invoices WHERE status <> 'draft')"
    if table == "charges":
        table, column = "invoice_charges", "invoice_id"
    else:
        column = "invoice_id"
    return (
        f"EXISTS (SELECT 1 FROM invoices v WHERE v.status <> 'draft' "
        f"AND EXISTS (SELECT 1 FROM {table} x WHERE x.{column} = v.id))"
    )


def _postgres_up() -> None:
    branches = "\n  ELS".join(
        f"IF TG_TABLE_NAME = '{table}' THEN\n    frozen := {_holds_frozen(table)};"
        for table in BELONGS
    )
    op.execute(f"""
CREATE OR REPLACE FUNCTION billing_frozen_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  frozen boolean := false;
BEGIN
  {branches}
  END IF;
  IF frozen THEN
    RAISE EXCEPTION '%: {MESSAGE.format(what="its rows")} (it cannot be truncated)',
      TG_TABLE_NAME;
  END IF;
  RETURN NULL;
END $$""")
    for table in BELONGS:
        op.execute(f"""
CREATE TRIGGER {table}_frozen_truncate BEFORE TRUNCATE ON {table}
FOR EACH STATEMENT EXECUTE FUNCTION billing_frozen_truncate()""")
    op.execute(f"""
CREATE OR REPLACE FUNCTION billing_frozen_new_invoices() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  found text;
BEGIN
  SELECT coalesce(number, id::text) INTO found FROM new_rows WHERE status <> 'draft' LIMIT 1;
  IF found IS NOT NULL THEN
    RAISE EXCEPTION 'invoice %: {BORN_MESSAGE}', found;
  END IF;
  RETURN NULL;
END $$""")
    op.execute("""
CREATE TRIGGER invoices_frozen_born_draft AFTER INSERT ON invoices
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION billing_frozen_new_invoices()""")
    formats = ", ".join(f"'{f}'" for f in FORMATS)
    op.execute(f"""
CREATE OR REPLACE FUNCTION billing_frozen_new_documents() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  frozen bigint;
BEGIN
  SELECT r.invoice_id INTO frozen FROM new_rows r JOIN invoices v ON v.id = r.invoice_id
    WHERE v.status <> 'draft' AND (NOT r.final OR r.format NOT IN ({formats})) LIMIT 1;
  IF frozen IS NOT NULL THEN
    RAISE EXCEPTION 'invoice_documents: {_documents_message()} (invoice %)', frozen;
  END IF;
  RETURN NULL;
END $$""")
    op.execute("""
CREATE TRIGGER invoice_documents_frozen_insert AFTER INSERT ON invoice_documents
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION billing_frozen_new_documents()""")
    # 0004 checked only the rows an update of documents left; the rows it writes too.
    _documents_update_guard("insert")


def _documents_update_guard(argument: str) -> None:
    op.execute("DROP TRIGGER IF EXISTS invoice_documents_frozen_update ON invoice_documents")
    op.execute(f"""
CREATE TRIGGER invoice_documents_frozen_update AFTER UPDATE ON invoice_documents
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION billing_frozen_rows('{argument}')""")


def _postgres_down() -> None:
    _documents_update_guard("no-insert")
    op.execute("DROP TRIGGER IF EXISTS invoice_documents_frozen_insert ON invoice_documents")
    op.execute("DROP FUNCTION IF EXISTS billing_frozen_new_documents()")
    op.execute("DROP TRIGGER IF EXISTS invoices_frozen_born_draft ON invoices")
    op.execute("DROP FUNCTION IF EXISTS billing_frozen_new_invoices()")
    for table in BELONGS:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_frozen_truncate ON {table}")
    op.execute("DROP FUNCTION IF EXISTS billing_frozen_truncate()")
